"""Bad input, generated: request dicts, plugins.toml texts, JSONL lines through ``genroute plan`` and ``batch``.

What must hold for any input: only genroute's own errors come out (never a raw exception, so never a
traceback or exit code 70), each names the field, key or line at fault, exit codes come from the documented
set, and a rejected input writes nothing to the ledger or the store.

Most examples run in-process (``Router.parse``/``run``, ``load_settings``, ``genroute.cli.main``) over a
plugin manager holding only the built-in mock; a few run the installed ``genroute`` script as a subprocess.

Inputs that once hit a bug have a dedicated regression test at the end of this file, one per bug.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reliability_support import (
    DOCUMENTED_EXIT_CODES,
    REPO_ROOT,
    books,
    cli_env,
    fast_image_line,
    genroute_command,
    mock_only_pm,
    read_jsonl,
    write_jsonl,
)

import genroute.cli
import genroute.errors
import genroute.router
import genroute_mock.plugin
from conftest import mock_section, tiny_png
from genroute.config import ConfigError, Settings, load_settings
from genroute.errors import GenrouteError, InvalidRequest
from genroute.router import RoutePlan, Router
from genroute.types import REQUEST_TYPES, TASKS, TIERS, parse_request
from genroute_mock import media as mock_media

_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
IN_PROCESS = settings(max_examples=100, deadline=None, suppress_health_check=_QUIET)
FIELDS = sorted({name for model in REQUEST_TYPES.values() for name in model.model_fields})


# -- strategies ---------------------------------------------------------------------------------------------


def _safe_string(text: str) -> bool:
    # "http(s)://" would make the router fetch from the network; URL inputs have their own tests.
    return not text.startswith(("http://", "https://"))


SPECIAL_STRINGS = [
    *TASKS, *TIERS, "", " ", "\t", "1:1", "16:9", "3:2", "use", "refresh", "bypass", "mock", "nope",
    "data:,", "data:;base64,@@@", "data:image/png;base64,iVBORw0KGgo=", "data:text/plain,hello",
    "/nonexistent/in.png", "/etc", ".", "http://", "x" * 10_001, "\u202e", "NaN", "-1", "1e309",
]  # fmt: skip


def junk(json_only: bool = False) -> st.SearchStrategy[Any]:
    """Any value a request field might be given (JSON-compatible with ``json_only``)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12).filter(_safe_string),
        st.sampled_from(SPECIAL_STRINGS),
    )
    containers = st.one_of(
        st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=4).filter(_safe_string), scalars, max_size=2)
    )
    values = st.one_of(scalars, containers)
    return values if json_only else st.one_of(values, st.binary(max_size=8))


@st.composite
def request_dicts(draw: st.DrawFn, assets: dict[str, str], json_only: bool = False) -> dict[str, Any]:
    """A valid request for some task with 1–3 fields changed, removed or added; or a dict of junk fields."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.dictionaries(st.sampled_from([*FIELDS, "bogus", "", "Task"]), junk(json_only), max_size=6))
    task = draw(st.sampled_from(TASKS))
    data = valid_request(task, assets)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
        if op == "delete" and data:
            data.pop(draw(st.sampled_from(sorted(data))))
        elif op == "add":
            data[draw(st.sampled_from([*FIELDS, "bogus", "Prompt", "num-outputs"]))] = draw(junk(json_only))
        else:
            data[draw(st.sampled_from(sorted(set(data) | set(REQUEST_TYPES[task].model_fields))))] = draw(
                junk(json_only)
            )
    return data


def valid_request(task: str, assets: dict[str, str]) -> dict[str, Any]:
    media = {"image": assets["png"], "mask": assets["png"], "audio": assets["wav"]}
    data: dict[str, Any] = {"task": task, "tier": "fast"}
    for name, field in REQUEST_TYPES[task].model_fields.items():  # type: ignore[index]
        if field.is_required() and name != "task":
            data[name] = media.get(name, "a lighthouse at dusk")
    return data


def rejected_by_validation(data: Any) -> bool:
    try:
        parse_request(data)
    except Exception:
        return True
    return False


@st.composite
def rejected_lines(draw: st.DrawFn, assets: dict[str, str]) -> str:
    """One JSONL line that ``plan``/``batch`` must reject: not JSON, not an object, or not a valid request."""
    kind = draw(st.sampled_from(["text", "non-object", "request", "request", "request"]))
    if kind == "text":
        text = draw(st.text(min_size=1, max_size=30).filter(lambda t: "\n" not in t and "\r" not in t))
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict) or not text.strip() or text.strip().startswith("#"):
            text = "{" + text  # still one line, now certainly not a JSON object
        return text
    if kind == "non-object":
        return json.dumps(draw(st.one_of(junk(json_only=True), st.lists(st.integers(), min_size=1))))
    data = draw(request_dicts(assets, json_only=True).filter(rejected_by_validation))
    return json.dumps(data, ensure_ascii=draw(st.booleans()))


@st.composite
def jsonl_files(draw: st.DrawFn, assets: dict[str, str]) -> list[str]:
    lines = draw(st.lists(rejected_lines(assets), min_size=1, max_size=6))
    filler = st.sampled_from(["", "   ", "# a comment", "\t"])
    out: list[str] = []
    for line in lines:
        if draw(st.integers(0, 3)) == 0:
            out.append(draw(filler))
        out.append(line)
    return out


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture
def assets(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "assets"
    folder.mkdir()
    png = folder / "in.png"
    png.write_bytes(tiny_png())
    wav = folder / "in.wav"
    wav.write_bytes(mock_media.wav_audio(1.0, seed=1))
    return {"png": str(png), "wav": str(wav)}


@pytest.fixture
def mock_settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory({"mock": mock_section()}, limits=[{"scope": "simulated", "period": "total", "usd": "100"}])


CLI_CONFIG = """\
default_profile = "offline"
[profiles.offline]
providers = ["mock"]
[budget]
limits = [{ scope = "simulated", period = "total", usd = "100" }]
[ledger]
path = "state/ledger"
[store]
path = "state/store"
[providers.mock]
billing = "simulated"
[providers.mock.models.text-to-image]
fast = { model = "mock/flux-schnell", unit = "output", price = "0.003" }
balanced = { model = "mock/flux-dev", unit = "output", price = "0.025" }
[providers.mock.models.upscale]
fast = { model = "mock/real-esrgan", unit = "output", price = "0.002" }
"""


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Settings]]:
    """A home for in-process ``genroute.cli.main`` runs: config, env, and only the mock as plugin."""
    home = tmp_path / "home"
    home.mkdir()
    config = home / "plugins.toml"
    config.write_text(CLI_CONFIG, encoding="utf-8")
    for name, value in cli_env(home, config).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(home)
    pm = mock_only_pm()
    monkeypatch.setattr(genroute.router, "default_plugin_manager", lambda: pm)
    monkeypatch.setattr(genroute.cli, "default_plugin_manager", lambda: pm)
    settings = load_settings(config)
    books(settings)  # create the ledger and store, so "before" and "after" compare like with like
    yield home, settings


# -- 1. request dicts ---------------------------------------------------------------------------------------


def check_invalid_request(exc: InvalidRequest, data: Any) -> None:
    assert exc.field, f"no field named: {exc.message}"
    assert exc.message.startswith(f"{exc.field}: "), exc.message
    top = exc.field.split(".")[0]
    task = data.get("task") if isinstance(data, dict) else None
    declared = REQUEST_TYPES[task].model_fields if isinstance(task, str) and task in REQUEST_TYPES else {}
    assert top == "task" or top in data or top in declared, (exc.field, data)


@IN_PROCESS
@given(data=st.data())
def test_generated_request_dicts(data: st.DataObject, mock_settings: Settings, assets: dict[str, str]) -> None:
    request = data.draw(request_dicts(assets))
    before = books(mock_settings)
    with Router(mock_settings, plugin_manager=mock_only_pm()) as router:
        route_one(router, request)
    assert books(mock_settings) == before


def route_one(router: Router, request: Any) -> None:
    try:
        model = router.parse(request)
    except InvalidRequest as exc:
        event(f"invalid: {exc.field}")
        check_invalid_request(exc, request)
        with pytest.raises(InvalidRequest) as again:
            router.run(request)
        assert again.value.message == exc.message
    else:
        # A request that validates may still be refused (a bad URL, a media file the model rejects),
        # but only with a genroute error; planning it spends nothing either way.
        try:
            plan = router.plan(model)
        except GenrouteError as exc:
            assert isinstance(exc, InvalidRequest), exc
            check_invalid_request(exc, request)
        else:
            event("valid, planned")
            assert isinstance(plan, RoutePlan)


@pytest.mark.parametrize("value", [None, 3, "text-to-image", ["task"], b"{}", object()])
def test_a_request_that_is_not_a_mapping_is_an_invalid_request(value: Any) -> None:
    with pytest.raises(InvalidRequest, match="expected a request object or a mapping"):
        Router.parse(value)


# -- 2. plugins.toml ----------------------------------------------------------------------------------------

BASE_CONFIG: dict[str, Any] = {
    "default_profile": "p",
    "profiles": {"p": {"description": "d", "providers": ["mock"], "limits": []}, "q": {"providers": ["mock"]}},
    "budget": {"warn_share": 0.8, "limits": [{"scope": "simulated", "period": "daily", "usd": "5"}]},
    "ledger": {"path": "state/ledger", "reservation_ttl_seconds": 900},
    "store": {"enabled": True, "path": "state/store", "max_bytes": 2**31},
    "jobs": {"path": "state/jobs"},
    "routing": {
        "max_attempts": 3, "backoff_initial_seconds": 0.5, "backoff_max_seconds": 20, "deadline_seconds": 600,
        "cooldown_after_failures": 3, "cooldown_seconds": 60, "max_input_bytes": 2**20, "max_output_bytes": 2**24,
    },
    "providers": {
        "mock": {
            "enabled": True, "priority": 10, "billing": "simulated",
            "options": {"latency_seconds": 0.0, "failure_rate": 0.0, "failure_kinds": ["unavailable"]},
            "models": {
                "text-to-image": {"fast": {"model": "mock/flux-schnell", "unit": "output", "price": "0.003"}},
                "upscale": {"fast": {"model": "mock/esrgan", "unit": "compute_second", "price": "0.0002",
                                     "est_seconds": "4", "hardware": "T4"}},
            },
        }
    },
}  # fmt: skip
PATH_KEYS = {"path"}
INT64 = 2**63 - 1  # bigger ints are bug 3 below (store.max_bytes) and not TOML anyway


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def toml_document(config: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in config.items())


def paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in tree.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from paths(value, (*prefix, key))


CONFIG_WORDS = ["global", "simulated", "provider:mock", "free:x", "daily", "monthly", "total", "output", "paid",
                "free", "fast", "quality", "mock", "", "-1", "1e400", "NaN", "text-to-image", "p", "q"]  # fmt: skip


def toml_junk(for_path: bool) -> st.SearchStrategy[Any]:
    """Any TOML value (paths stay relative, so nothing is written outside GENROUTE_HOME)."""
    relative = st.text(alphabet="abcxyz_-.", min_size=1, max_size=8).filter(lambda s: s not in {".", ".."})
    strings = (
        relative if for_path else st.one_of(st.text(max_size=10).filter(_safe_string), st.sampled_from(CONFIG_WORDS))
    )
    scalars = st.one_of(st.booleans(), st.integers(min_value=-INT64 - 1, max_value=INT64), st.floats(), strings)
    return st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(strings, scalars, max_size=2))


def plausible(original: Any, for_path: bool) -> st.SearchStrategy[Any]:
    """A value of the original's type, at its edges: zero, negative, huge, tiny, nan, inf, empty."""
    if isinstance(original, bool):
        return st.booleans()
    if isinstance(original, int):
        return st.one_of(st.sampled_from([0, -1, 1, 2**31, INT64]), st.integers(min_value=-INT64 - 1, max_value=INT64))
    if isinstance(original, float):
        return st.one_of(st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e300]), st.floats())
    if isinstance(original, str):
        if for_path:
            return st.text(alphabet="abcxyz_-./", min_size=1, max_size=12).filter(
                lambda s: not s.startswith("/") and ".." not in s
            )
        decimals = st.decimals(allow_nan=True, allow_infinity=True).map(str)
        return st.one_of(decimals, st.sampled_from(CONFIG_WORDS), st.text(max_size=10).filter(_safe_string))
    if isinstance(original, list):
        return st.lists(st.sampled_from([*original, *CONFIG_WORDS]) if original else toml_junk(False), max_size=3)
    return toml_junk(for_path)


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    """The base config with 1–3 mutations (set a value, delete or add a key), or its text with junk spliced in."""
    config = json.loads(json.dumps(BASE_CONFIG))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        path = draw(st.sampled_from(list(paths(config)) or [("x",)]))
        parent: Any = config
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["edge", "edge", "edge", "edge", "set", "delete", "add", "secret"]))
        for_path = path[-1] in PATH_KEYS
        if op == "delete":
            parent.pop(path[-1], None)
        elif op == "add":
            parent[draw(st.sampled_from(["extra", "Path", "limit", "providers", "p"]))] = draw(toml_junk(False))
        elif op == "secret":
            parent[draw(st.sampled_from(["token", "api_key", "hf_token", "password"]))] = "not-a-real-secret"
        elif op == "edge" and path[-1] in parent:
            parent[path[-1]] = draw(plausible(parent[path[-1]], for_path))
        else:
            parent[path[-1]] = draw(toml_junk(for_path))
    text = toml_document(config)
    if draw(st.integers(0, 5)) == 0:  # raw corruption: any text spliced in anywhere
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=8)) + text[at:]
    return text


_counter = itertools.count()


@settings(max_examples=400, deadline=None, suppress_health_check=_QUIET)  # cheap: most fail at validation
@given(text=config_texts())
def test_generated_plugins_toml(text: str, tmp_path: Path) -> None:
    home = tmp_path / f"home{next(_counter)}"
    home.mkdir()
    file = home / "plugins.toml"
    file.write_text(text, encoding="utf-8", errors="surrogatepass")
    env = {"GENROUTE_HOME": str(home)}
    try:
        loaded = load_settings(file, env=env)
    except ConfigError as exc:
        event(f"config error: {(exc.key or exc.message[len(str(file)) + 2 :]).split('.')[0][:20]}")
        assert str(file) in exc.message, exc.message
        if "not valid TOML" in exc.message:
            assert re.search(r"line \d+|at end of document", exc.message), exc.message  # where tomllib says
        elif "cannot read" not in exc.message:
            # A validation error names its key; a profile that does not resolve names the profile.
            assert exc.key or "profile" in exc.message, exc.message
        return
    for path in (loaded.ledger.path, loaded.store.path, loaded.jobs.path):
        # relative paths resolve under GENROUTE_HOME (".": GENROUTE_HOME itself)
        assert path.is_absolute() and (path == home or home in path.parents), path
    try:
        with Router(loaded, plugin_manager=mock_only_pm()) as router:
            router.plan(fast_image_line("x"))
        event("loaded and planned")
    except GenrouteError as exc:
        event(f"router refused: {type(exc).__name__}")  # a plugin option it refuses, a disabled store...: named, typed
        assert isinstance(exc, ConfigError | InvalidRequest | genroute.errors.StoreError), exc
        if isinstance(exc, ConfigError):
            assert exc.key, exc.message


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    file = tmp_path / "plugins.toml"
    file.write_bytes(b'default_profile = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read") as exc:
        load_settings(file, env={})
    assert str(file) in exc.value.message


# -- 3. JSONL through plan and batch, in-process ------------------------------------------------------------


def request_line_numbers(lines: list[str]) -> list[int]:
    return [n for n, line in enumerate(lines, start=1) if line.strip() and not line.strip().startswith("#")]


def check_plan_output(rc: int, stdout: str, stderr: str, file: Path, numbers: list[int]) -> None:
    assert rc in DOCUMENTED_EXIT_CODES - {70, 130}
    assert rc == (10 if numbers else 0), (rc, stderr)
    assert "Traceback" not in stdout + stderr and "internal error" not in stderr
    rows = json.loads(stdout)["requests"]
    assert [row["line"] for row in rows] == numbers
    for row in rows:
        assert f"{file}:{row['line']}: " in row["error"], row


def check_batch_output(rc: int, stderr: str, results: list[dict[str, Any]], file: Path, numbers: list[int]) -> None:
    assert rc in DOCUMENTED_EXIT_CODES - {70, 130}
    assert rc == (10 if numbers else 0), (rc, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert sorted(r["line"] for r in results) == numbers
    for record in results:
        assert record["status"] == "error" and record["kind"] == "InvalidRequest", record
        assert f"{file}:{record['line']}: " in record["error"], record
    assert f"0/{len(numbers)} done" in stderr


@settings(max_examples=60, deadline=None, suppress_health_check=_QUIET)  # two commands per example
@given(data=st.data())
def test_generated_jsonl_in_process(
    data: st.DataObject,
    cli_home: tuple[Path, Settings],
    assets: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    home, settings_ = cli_home
    lines = data.draw(jsonl_files(assets))
    n = next(_counter)
    file = write_jsonl(home / f"requests{n}.jsonl", lines)
    numbers = request_line_numbers(lines)
    before = books(settings_)
    capsys.readouterr()

    rc = genroute.cli.main(["plan", str(file), "--json"])
    out = capsys.readouterr()
    check_plan_output(rc, out.out, out.err, file, numbers)

    results = home / f"results{n}.jsonl"
    rc = genroute.cli.main(["batch", str(file), "--results", str(results), "--no-progress"])
    out = capsys.readouterr()
    check_batch_output(rc, out.err, read_jsonl(results), file, numbers)
    assert books(settings_) == before


def test_valid_lines_beside_rejected_ones_are_the_only_spend(
    cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    home, settings_ = cli_home
    lines = [
        json.dumps(fast_image_line("good one")),
        "{not json",
        json.dumps({"task": "text-to-image", "prompt": "x", "tier": "fast", "width": 63, "height": 64}),
        "[1, 2]",
        json.dumps(fast_image_line("good two")),
        json.dumps({"task": "upscale"}),
        json.dumps({"task": "text-to-image", "prompt": "\ud800"}),
    ]
    file = write_jsonl(home / "mixed.jsonl", lines)
    results = home / "mixed.out.jsonl"
    rc = genroute.cli.main(["batch", str(file), "--results", str(results), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 10 and "2/7 done" in err, err
    records = {r["line"]: r for r in read_jsonl(results)}
    assert {n for n, r in records.items() if r["status"] == "ok"} == {1, 5}
    for n in (2, 3, 4, 6, 7):
        assert f"{file}:{n}: " in records[n]["error"], records[n]
    after = books(settings_)
    assert len([e for e in after.entries if '"settled"' in e]) == 2
    assert after.open_reservations == 0 and after.store[0] == 2


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["batch", "missing.jsonl"], 4),
        (["plan", "missing.jsonl"], 4),
        (["batch", "."], 4),
        (["batch", "requests.jsonl", "--concurrency", "0"], 2),
        (["run", "x", "--task", "upscale"], 4),
        (["run", "x", "--param", "novalue"], 4),
        (["run", "x", "--param", "width=63", "--param", "height=64"], 4),
        (["run", "x", "--profile", "nope"], 3),
        (["run", "x", "--tier", "best"], 2),
        (["frobnicate"], 2),
    ],
)
def test_bad_command_lines_exit_with_documented_codes(
    argv: list[str], code: int, cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    home, settings_ = cli_home
    write_jsonl(home / "requests.jsonl", [fast_image_line("x")])
    before = books(settings_)
    try:
        rc = genroute.cli.main(argv)
    except SystemExit as exit_:  # argparse
        rc = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err and "internal error" not in err
    assert books(settings_) == before


# -- 4. JSONL through the installed script, a few examples --------------------------------------------------


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_jsonl_through_the_genroute_script(
    data: st.DataObject, tmp_path: Path, assets: dict[str, str]
) -> None:
    home = Path(tempfile.mkdtemp(dir=tmp_path))
    config = home / "plugins.toml"
    config.write_text(CLI_CONFIG, encoding="utf-8")
    env = cli_env(home, config)
    settings_ = load_settings(config, env=env)
    books(settings_)
    lines = data.draw(jsonl_files(assets))
    file = write_jsonl(home / "requests.jsonl", lines)
    numbers = request_line_numbers(lines)
    before = books(settings_)

    def genroute(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*genroute_command(), *args], cwd=home, env=env, capture_output=True, text=True, timeout=120
        )

    plan = genroute("plan", str(file), "--json")
    check_plan_output(plan.returncode, plan.stdout, plan.stderr, file, numbers)
    batch = genroute("batch", str(file), "--no-progress")
    records = [json.loads(line) for line in batch.stdout.splitlines() if line.strip()]
    check_batch_output(batch.returncode, batch.stderr, records, file, numbers)
    assert books(settings_) == before


# -- once bugs, now fixed: each keeps its regression test -----------------------------------------------------


@pytest.mark.parametrize("path", ["a" * 300 + ".png", "~no-such-user-here/in.png"], ids=["long-name", "tilde-user"])
def test_media_path_the_os_refuses_is_an_invalid_request(path: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^image: "):
        Router.parse({"task": "upscale", "image": path})


def test_one_unreadable_media_path_fails_its_line_only(
    cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    home, _settings = cli_home
    file = write_jsonl(home / "r.jsonl", [{"task": "upscale", "image": "a" * 300 + ".png"}, fast_image_line("ok")])
    results = home / "out.jsonl"
    rc = genroute.cli.main(["batch", str(file), "--results", str(results), "--no-progress"])
    capsys.readouterr()
    assert rc == 10
    records = {r["line"]: r for r in read_jsonl(results)}
    assert records[2]["status"] == "ok" and f"{file}:1: image: " in records[1]["error"]


@pytest.mark.parametrize("url", ["https://[::1", "https://\x00/x.png"])
def test_malformed_url_input_is_an_invalid_request(
    url: str, mock_settings: Settings, router_factory: Callable[..., Router]
) -> None:
    router = router_factory(mock_settings, genroute_mock.plugin)
    before = books(mock_settings)
    with pytest.raises(InvalidRequest, match=r"^image: "):
        router.run({"task": "upscale", "image": url})
    assert books(mock_settings) == before


def test_store_max_bytes_beyond_sqlite_is_a_config_error(tmp_path: Path) -> None:
    config = dict(BASE_CONFIG, store={"path": "state/store", "max_bytes": 2**63})
    file = tmp_path / "plugins.toml"
    file.write_text(toml_document(config), encoding="utf-8")
    with (
        pytest.raises(ConfigError, match=r"store\.max_bytes"),
        Router(load_settings(file, env={"GENROUTE_HOME": str(tmp_path)}), plugin_manager=mock_only_pm()),
    ):
        pass


def test_unknown_home_in_a_config_path_is_a_config_error(tmp_path: Path) -> None:
    config = dict(BASE_CONFIG, ledger={"path": "~no-such-user-here/ledger"})
    file = tmp_path / "plugins.toml"
    file.write_text(toml_document(config), encoding="utf-8")
    with pytest.raises(ConfigError, match="ledger"):
        load_settings(file, env={"GENROUTE_HOME": str(tmp_path)})


@pytest.mark.parametrize("command", ["plan", "batch"])
def test_jsonl_that_is_not_utf8_names_the_line(
    command: str, cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    home, settings_ = cli_home
    file = home / "latin1.jsonl"
    file.write_bytes(
        json.dumps(fast_image_line("fine")).encode() + b'\n{"task": "text-to-image", "prompt": "caf\xe9"}\n'
    )
    before = books(settings_)
    rc = genroute.cli.main([command, str(file), "--no-progress"] if command == "batch" else [command, str(file)])
    out = capsys.readouterr()
    assert rc in {4, 10}, out.err
    assert f"{file}:2" in out.out + out.err
    if command == "plan":
        assert books(settings_) == before


def test_results_path_that_cannot_be_opened_is_named(
    cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    home, _settings = cli_home
    file = write_jsonl(home / "r.jsonl", [fast_image_line("x")])
    rc = genroute.cli.main(["batch", str(file), "--results", str(home), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 4 and "--results" in err, err


def documented_codes() -> set[int]:
    text = (REPO_ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    table = text.split("## Exit codes", 1)[1]
    return {int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)}


def test_documented_exit_codes_are_what_this_suite_assumes() -> None:
    assert documented_codes() == DOCUMENTED_EXIT_CODES


def test_every_error_exit_code_is_documented() -> None:
    classes = [c for c in vars(genroute.errors).values() if isinstance(c, type) and issubclass(c, GenrouteError)]
    undocumented = {c.__name__: c.exit_code for c in classes if c.exit_code not in documented_codes()}
    assert undocumented == {}


@pytest.fixture
def notes(cli_home: tuple[Path, Settings]) -> Path:
    """A text file where an image or audio file belongs."""
    path = cli_home[0] / "notes.txt"
    path.write_text("shopping list: eggs, flour\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "at night", "--task", "image-to-image", "--input", "notes.txt"], "image: notes.txt is not an image"),
        (["run", "--task", "upscale", "--input", "notes.txt"], "image: notes.txt is not an image"),
        (["run", "--task", "speech-to-text", "--input", "notes.txt"], "audio: notes.txt is not audio"),
        (["run", "--task", "speech-to-text", "--input", "in.png"], "audio: in.png is image/png, not audio"),
        (["run", "a hat", "--task", "inpaint", "--input", "in.png", "--mask", "notes.txt"], "mask: notes.txt is not"),
    ],
)
def test_file_that_is_not_the_media_its_field_needs_is_refused_before_any_money_moves(
    argv: list[str], message: str, notes: Path, cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    home, settings_ = cli_home
    (home / "in.png").write_bytes(tiny_png())
    before = books(settings_)
    rc = genroute.cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 4, err
    assert f"genroute: error: {message}" in err and "change the tier" not in err, err
    assert books(settings_) == before


def test_an_image_cut_short_is_refused_by_the_provider_as_bad_input_at_no_cost(
    cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    # Its first bytes say PNG, so validation lets it through; the provider that tries it refuses it.
    home, settings_ = cli_home
    (home / "cut.png").write_bytes(tiny_png()[:40])
    rc = genroute.cli.main(["run", "--task", "upscale", "--input", "cut.png", "--tier", "fast"])
    err = capsys.readouterr().err
    assert rc == 4, err
    assert "not a readable image" in err and "change the tier" not in err, err
    after = books(settings_)
    assert all(spent == 0 for _scope, _period, _key, spent, _reserved in after.usage)
    assert after.open_reservations == 0 and after.store[0] == 0  # released, and nothing stored


def test_jsonl_line_with_a_text_file_as_image_fails_that_line_only(
    notes: Path, cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    home, settings_ = cli_home
    file = write_jsonl(home / "r.jsonl", [{"task": "upscale", "image": "notes.txt", "tier": "fast"}])
    before = books(settings_)
    results = home / "out.jsonl"
    rc = genroute.cli.main(["batch", str(file), "--results", str(results), "--no-progress"])
    capsys.readouterr()
    assert rc == 10
    [record] = read_jsonl(results)
    assert record["kind"] == "InvalidRequest" and f"{file}:1: image: notes.txt is not an image" in record["error"]
    assert books(settings_) == before


@pytest.mark.parametrize(
    ("argv", "option", "takers"),
    [
        (["run", "--task", "upscale", "--input", "in.png", "--mask", "in.png"], "--mask", ["inpaint"]),
        (["run", "hello", "--task", "speech-to-text", "--input", "in.wav"], "PROMPT", ["text-to-speech"]),
        (["run", "--task", "upscale", "--input", "in.png", "--num-outputs", "2"], "--num-outputs", ["text-to-image"]),
        (["run", "hi", "--task", "text-to-speech", "--aspect-ratio", "16:9"], "--aspect-ratio", ["text-to-video"]),
        (["run", "a fox", "--param", "strength=0.5"], "strength", ["image-to-image"]),
        (["run", "--task", "upscale", "--input", "in.png", "--param", "prompt=x"], "prompt", ["text-generation"]),
    ],
)
def test_option_of_another_task_says_it_does_not_apply(
    argv: list[str],
    option: str,
    takers: list[str],
    cli_home: tuple[Path, Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    home, settings_ = cli_home
    (home / "in.png").write_bytes(tiny_png())
    (home / "in.wav").write_bytes(mock_media.wav_audio(1.0, seed=1))
    before = books(settings_)
    rc = genroute.cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 4, err
    assert f"genroute: error: {option}: " in err, err
    assert "check the spelling" not in err and all(task in err for task in takers), err
    assert books(settings_) == before


def test_jsonl_lines_with_wrong_json_types_or_fields_of_other_tasks_name_line_and_field(
    cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    home, settings_ = cli_home
    lines = [
        {**fast_image_line("one"), "seed": True},
        {**fast_image_line("two"), "num_outputs": "2"},
        {**fast_image_line("three"), "strength": 0.5},
        {**fast_image_line("four"), "deadline_seconds": "60"},
        fast_image_line("five"),
    ]
    file = write_jsonl(home / "typed.jsonl", lines)
    expected = {
        1: "seed: must be a whole number, not true",
        2: 'num_outputs: must be a whole number, not the string "2"',
        3: "strength: does not apply to text-to-image, only to image-to-image",
        4: 'deadline_seconds: must be a number, not the string "60"',
    }

    rc = genroute.cli.main(["plan", str(file), "--json"])
    rows = {row["line"]: row for row in json.loads(capsys.readouterr().out)["requests"]}
    assert rc == 10
    for number, words in expected.items():
        assert f"{file}:{number}: {words}" in rows[number]["error"], rows[number]
    assert "error" not in rows[5]

    results = home / "typed.out.jsonl"
    rc = genroute.cli.main(["batch", str(file), "--results", str(results), "--no-progress"])
    capsys.readouterr()
    records = {r["line"]: r for r in read_jsonl(results)}
    assert rc == 10 and records[5]["status"] == "ok"
    for number, words in expected.items():
        assert f"{file}:{number}: {words}" in records[number]["error"], records[number]
    assert len([e for e in books(settings_).entries if '"settled"' in e]) == 1  # line 5 alone spent


def test_run_reads_param_values_as_the_field_needs(
    cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    _home, settings_ = cli_home
    params = ["--param", "num_outputs=2", "--param", "deadline_seconds=60.", "--param", "negative_prompt=42"]
    rc = genroute.cli.main(["run", "a fox", "--tier", "fast", "--seed", "3", *params, "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert len(json.loads(out.out)["saved"]) == 2

    before = books(settings_)
    for value, words in (("seed=true", "seed: must be a whole number, not true"), ("num_outputs=two", "num_outputs: ")):
        rc = genroute.cli.main(["run", "a fox", "--tier", "fast", "--param", value])
        err = capsys.readouterr().err
        assert rc == 4 and f"genroute: error: {words}" in err, err
    assert books(settings_) == before


@pytest.mark.parametrize("how", ["same-path", "dot-slash", "symlink", "hard-link"])
def test_results_file_that_is_the_input_file_is_refused_before_any_request_runs(
    how: str, cli_home: tuple[Path, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    home, settings_ = cli_home
    file = write_jsonl(home / "r.jsonl", [fast_image_line("x")])
    original = file.read_bytes()
    results: str | Path = {"same-path": file, "dot-slash": "./r.jsonl"}.get(how, home / f"{how}.jsonl")
    if how == "symlink":
        (home / "symlink.jsonl").symlink_to(file)
    elif how == "hard-link":
        (home / "hard-link.jsonl").hardlink_to(file)
    before = books(settings_)
    rc = genroute.cli.main(["batch", "r.jsonl", "--results", str(results), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 4 and "genroute: error: --results: " in err, err
    assert file.read_bytes() == original
    assert books(settings_) == before
