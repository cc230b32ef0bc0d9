"""The ``genroute`` command end to end, through a subprocess per invocation.

Every test runs the CLI as ``python -m genroute.cli`` in its own ``tmp_path`` (the working directory and
``GENROUTE_HOME``) against the repository's ``plugins.toml`` (offline profile: the built-in mock), so the
ledger, the store and ``out/`` are fresh for each test and nothing outside ``tmp_path`` is touched.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import genroute.cli
from conftest import FakePlugin, section
from genroute.config import Settings
from genroute.errors import PluginError
from genroute.keys import request_key
from genroute.provider import Provider, RunContext
from genroute.types import Artifact, Offer, ProviderOutput, RequestModel, parse_request

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "plugins.toml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKEN_VARIABLES = ("REPLICATE_API_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
SIMULATED_DAILY = '{ scope = "simulated", period = "daily", usd = "5.00" }'

Cli = Callable[..., subprocess.CompletedProcess[str]]


def cli_environ(home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the CLI runs in: no tokens, no profile, no colour, ``home`` as GENROUTE_HOME."""
    environ = dict(os.environ)
    for name in ("GENROUTE_PROFILE", "FORCE_COLOR", *TOKEN_VARIABLES):
        environ.pop(name, None)
    environ.update({"GENROUTE_CONFIG": str(CONFIG), "GENROUTE_HOME": str(home), "NO_COLOR": "1"})
    environ.update(env or {})
    return environ


def run_cli(
    home: Path,
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    rc: int | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run genroute in ``home`` (also its GENROUTE_HOME, see :func:`cli_environ`); ``rc`` asserts the exit code.

    ``stdin`` is text sent through a pipe to the command's standard input (none when not given).
    """
    proc = subprocess.run(
        [sys.executable, "-m", "genroute.cli", *map(str, args)],
        cwd=home,
        env=cli_environ(home, env),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if rc is not None:
        assert proc.returncode == rc, f"exit {proc.returncode}, expected {rc}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """``cli(*args, env=None, rc=None, stdin=None)``: :func:`run_cli` in ``tmp_path``."""

    def run(*args: str | Path, env: Mapping[str, str] | None = None, rc: int | None = None, stdin: str | None = None):
        return run_cli(tmp_path, *args, env=env, rc=rc, stdin=stdin)

    return run


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("genroute: error:")]


def budget_state(cli: Cli) -> dict[str, Any]:
    """``budget --json`` without its timestamp: what a command must leave unchanged to have spent nothing."""
    report = json.loads(cli("budget", "--json", rc=0).stdout)
    report.pop("generated_at")
    return report


def usage_spent(report: Mapping[str, Any], scope: str, period: str = "total") -> Decimal:
    for row in report["usage"]:
        if row["scope"] == scope and row["period"] == period:
            return Decimal(row["spent"])
    return Decimal(0)


def config_copy(directory: Path, old: str, new: str, name: str = "plugins.toml") -> Path:
    """The repository's plugins.toml with one exact text replaced, written to ``directory/name``."""
    text = CONFIG.read_text(encoding="utf-8")
    assert old in text, f"plugins.toml no longer contains {old!r}; update the test"
    target = directory / name
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    return target


def write_jsonl(path: Path, lines: list[str | dict[str, Any]]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def write_wav(path: Path, seconds: float = 2.0, rate: int = 16_000) -> Path:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        frames = bytearray()
        for i in range(int(seconds * rate)):
            frames += (8000 if (i // 40) % 2 else -8000).to_bytes(2, "little", signed=True)
        handle.writeframes(bytes(frames))
    return path


# Line numbers as a reader counts them: 2 is a comment, 3 is blank.
MIXED = [
    {"task": "text-to-image", "prompt": "a lighthouse", "tier": "fast"},
    "# a comment",
    "",
    '{"task": "text-to-image", "prompt": ',
    {"task": "text-to-video", "prompt": "waves", "duration_seconds": 99},
    {"task": "text-generation", "prompt": "Once upon a time", "tier": "fast", "max_tokens": 64},
    {"task": "upscale", "image": "in.png", "provider": "replicate"},
]
GOOD = [
    {"task": "text-to-image", "prompt": "a red kite", "tier": "fast"},
    {"task": "text-to-speech", "text": "Your order has shipped.", "tier": "fast"},
    {"task": "text-generation", "prompt": "Summarise this", "tier": "fast", "max_tokens": 32},
]


def png_input(tmp_path: Path) -> Path:
    Image.new("RGB", (64, 64), (10, 120, 200)).save(tmp_path / "in.png")
    return tmp_path / "in.png"


# --------------------------------------------------------------------------------------------------- run


def test_run_writes_a_png_and_a_repeat_is_served_from_the_store(cli, tmp_path):
    first = cli("run", "a lighthouse", "--task", "text-to-image", "--tier", "fast", "--output-dir", "pics", rc=0)

    files = sorted((tmp_path / "pics").iterdir())
    assert len(files) == 1 and files[0].suffix == ".png"
    data = files[0].read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    assert "mock · mock/flux-schnell · fast" in first.stderr
    assert "cost $0.003" in first.stderr
    assert f"wrote {Path('pics') / files[0].name}" in first.stderr
    assert first.stdout.strip() == ""  # an image result prints nothing on stdout
    spent = usage_spent(budget_state(cli), "provider:mock")
    assert spent == Decimal("0.003")

    second = cli("run", "a lighthouse", "--task", "text-to-image", "--tier", "fast", "--output-dir", "pics", rc=0)

    assert "cached" in second.stderr
    assert "cost $0.00" in second.stderr and "attempts 0" in second.stderr
    assert files[0].read_bytes() == data
    report = budget_state(cli)
    assert usage_spent(report, "provider:mock") == spent  # no new spend
    assert Decimal(report["savings"]) == Decimal("0.003")
    assert report["saved_requests"] == 1


def test_run_json_prints_the_result_and_the_saved_paths(cli, tmp_path):
    proc = cli("run", "a red kite", "--tier", "fast", "--json", rc=0)

    payload = json.loads(proc.stdout)
    assert payload["provider"] == "mock"
    assert payload["model"] == "mock/flux-schnell"
    assert Decimal(payload["actual_cost"]) == Decimal("0.003")
    assert payload["cached"] is False
    assert len(payload["saved"]) == 1
    saved = tmp_path / payload["saved"][0]
    assert saved.is_file() and saved.read_bytes().startswith(PNG_MAGIC)
    assert Path(payload["artifacts"][0]["path"]).is_file()  # the store's copy


def test_text_generation_streams_text_to_stdout(cli):
    proc = cli("run", "Once upon a time", "--task", "text-generation", "--tier", "fast", rc=0)

    text = proc.stdout.strip()
    assert len(text.split()) >= 3
    assert "genroute:" not in proc.stdout
    assert "mock · mock/llama-8b · fast" in proc.stderr
    assert text not in proc.stderr  # the text goes to stdout, the summary to stderr


def test_speech_to_text_writes_srt_and_vtt_subtitles(cli, tmp_path):
    write_wav(tmp_path / "call.wav")

    proc = cli("run", "--task", "speech-to-text", "--input", "call.wav", rc=0)

    out = tmp_path / "out"
    (srt,) = out.glob("*.srt")
    (vtt,) = out.glob("*.vtt")
    assert srt.stem == vtt.stem and srt.stem.startswith("speech-to-text-")
    assert "-->" in srt.read_text(encoding="utf-8")
    assert vtt.read_text(encoding="utf-8").startswith("WEBVTT")
    assert proc.stdout.strip()  # the transcript
    assert f"wrote {Path('out') / srt.name}" in proc.stderr


# --------------------------------------------------------------------------------------------------- errors


def test_a_bad_field_exits_4_with_a_one_line_message_and_no_traceback(cli, tmp_path):
    proc = cli("run", "a fox", "--param", "num_outputs=9", rc=4)

    (line,) = error_lines(proc.stderr)
    assert "num_outputs" in line
    assert "correct the named field" in line  # what happened and what to do, on that one line
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["upscale", "speech-to-text"])
def test_a_task_that_needs_an_input_file_without_one_exits_4(cli, task):
    proc = cli("run", "--task", task, rc=4)

    (line,) = error_lines(proc.stderr)
    assert "--input" in line and task in line
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("where", ["before the command", "after the command"])
def test_an_unknown_profile_exits_3_and_names_the_known_ones(cli, where):
    args = ["--profile", "nope", "run", "x"] if where == "before the command" else ["run", "x", "--profile", "nope"]

    proc = cli(*args, rc=3)

    (line,) = error_lines(proc.stderr)
    assert "'nope'" in line
    for known in ("offline", "dev", "prod"):
        assert known in line


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('default_profile = "offline"', 'default_profile = "offline"\ncolour = "blue"', "colour"),
        ("[store]\n", "[store]\nmax_size = 1\n", "store.max_size"),
    ],
)
def test_an_invalid_config_file_exits_3_naming_file_and_key(cli, tmp_path, old, new, key):
    bad = config_copy(tmp_path, old, new, name="bad.toml")

    proc = cli("providers", "--config", bad, rc=3)

    (line,) = error_lines(proc.stderr)
    assert str(bad) in line
    assert key in line and "unknown key" in line


def test_a_config_file_holding_a_token_is_refused(cli, tmp_path):
    bad = config_copy(tmp_path, "[providers.replicate]\n", '[providers.replicate]\napi_token = "r8_not_real"\n')

    proc = cli("run", "x", env={"GENROUTE_CONFIG": str(bad)}, rc=3)

    (line,) = error_lines(proc.stderr)
    assert "providers.replicate.api_token" in line and str(bad) in line
    assert "r8_not_real" not in proc.stderr + proc.stdout


def test_a_budget_stop_exits_5_and_says_over_budget(cli, tmp_path):
    tiny = config_copy(tmp_path, SIMULATED_DAILY, SIMULATED_DAILY.replace("5.00", "0.001"), name="tiny.toml")

    proc = cli("run", "a lighthouse", "--tier", "fast", "--config", tiny, rc=5)

    (line,) = error_lines(proc.stderr)
    assert "no provider could serve" in line
    assert "over budget" in proc.stderr
    assert not (tmp_path / "out").exists()
    report = json.loads(cli("budget", "--json", "--config", tiny, rc=0).stdout)
    assert usage_spent(report, "simulated") == 0
    assert all(Decimal(row["reserved"]) == 0 for row in report["usage"])


def test_debug_shows_a_traceback_only_when_asked(cli):
    quiet = cli("run", "x", "--param", "num_outputs=9", rc=4)
    loud = cli("run", "x", "--param", "num_outputs=9", "--debug", rc=4)

    assert "Traceback" not in quiet.stderr
    assert "Traceback (most recent call last)" in loud.stderr
    assert "InvalidRequest" in loud.stderr
    assert error_lines(quiet.stderr) == error_lines(loud.stderr)


# --------------------------------------------------------------------------------------------------- plan


def test_plan_reports_each_line_and_spends_nothing(cli, tmp_path):
    png_input(tmp_path)
    write_jsonl(tmp_path / "reqs.jsonl", MIXED)
    before = budget_state(cli)

    proc = cli("plan", "reqs.jsonl", "--json", rc=10)
    table = cli("plan", "reqs.jsonl", rc=10)

    assert budget_state(cli) == before
    assert not (tmp_path / "out").exists()
    rows = {row["line"]: row for row in json.loads(proc.stdout)["requests"]}
    assert sorted(rows) == [1, 4, 5, 6, 7]
    assert rows[1]["route"] == "mock · mock/flux-schnell" and Decimal(rows[1]["estimate"]) == Decimal("0.003")
    assert rows[6]["route"] == "mock · mock/llama-8b"
    assert "reqs.jsonl:4" in rows[4]["error"] and "not valid JSON" in rows[4]["error"]
    assert "reqs.jsonl:5" in rows[5]["error"] and "duration_seconds" in rows[5]["error"]
    assert "replicate" in rows[7]["error"]
    summary = json.loads(proc.stdout)["summary"]
    assert (summary["requests"], summary["unroutable"]) == (5, 3)
    assert "reqs.jsonl:4" in table.stdout and "reqs.jsonl:5" in table.stdout


# --------------------------------------------------------------------------------------------------- batch


def test_batch_reports_every_line_with_its_status_and_exits_10_when_some_fail(cli, tmp_path):
    png_input(tmp_path)
    write_jsonl(tmp_path / "mixed.jsonl", MIXED)

    proc = cli("batch", "mixed.jsonl", "--results", "out.jsonl", "--no-progress", rc=10)

    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    by_line = {r["line"]: r for r in records}
    assert len(records) == len(by_line) == 5
    assert sorted(by_line) == [1, 4, 5, 6, 7]
    assert {n for n, r in by_line.items() if r["status"] == "ok"} == {1, 6}
    assert by_line[1]["provider"] == "mock" and Path(by_line[1]["files"][0]).is_file()
    assert by_line[6]["text"]
    assert (by_line[4]["kind"], by_line[5]["kind"], by_line[7]["kind"]) == (
        "InvalidRequest",
        "InvalidRequest",
        "NoRouteAvailable",
    )
    assert "mixed.jsonl:4" in by_line[4]["error"] and "mixed.jsonl:5" in by_line[5]["error"]
    assert proc.stdout.strip() == ""  # results went to the file
    assert "3 failed" in proc.stderr


def test_batch_of_good_lines_exits_0_and_a_rerun_is_all_cached_with_no_new_spend(cli, tmp_path):
    write_jsonl(tmp_path / "good.jsonl", GOOD)

    cli("batch", "good.jsonl", "--results", "first.jsonl", "--no-progress", rc=0)
    first = [json.loads(line) for line in (tmp_path / "first.jsonl").read_text().splitlines()]
    spent = budget_state(cli)
    second_proc = cli("batch", "good.jsonl", "--results", "second.jsonl", "--no-progress", rc=0)
    second = [json.loads(line) for line in (tmp_path / "second.jsonl").read_text().splitlines()]
    after = budget_state(cli)

    assert sorted(r["line"] for r in first) == sorted(r["line"] for r in second) == [1, 2, 3]
    assert all(r["status"] == "ok" and r["cached"] is False for r in first)
    assert all(r["status"] == "ok" and r["cached"] is True and Decimal(r["cost"]) == 0 for r in second)
    assert after["usage"] == spent["usage"]
    assert after["by_provider"] == spent["by_provider"]
    assert after["saved_requests"] == spent["saved_requests"] + 3
    assert "3 from the store" in second_proc.stderr


def test_batch_results_file_is_appended_to(cli, tmp_path):
    write_jsonl(tmp_path / "one.jsonl", GOOD[:1])

    cli("batch", "one.jsonl", "--results", "res.jsonl", "--no-progress", rc=0)
    cli("batch", "one.jsonl", "--results", "res.jsonl", "--no-progress", rc=0)

    records = [json.loads(line) for line in (tmp_path / "res.jsonl").read_text().splitlines()]
    assert [r["cached"] for r in records] == [False, True]


FIVE = [{"task": "text-to-image", "prompt": f"a kite, take {i}", "tier": "fast"} for i in range(1, 6)]


def jsonl_text(lines: list[str | dict[str, Any]]) -> str:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


@pytest.mark.parametrize(("path", "label"), [("-", "<stdin>"), ("/dev/stdin", "/dev/stdin")])
def test_batch_reading_a_pipe_runs_every_line_once_and_counts_what_ran(cli, path, label):
    proc = cli("batch", path, "--no-progress", stdin=jsonl_text([*FIVE, '{"task": ']), rc=10)

    records = {r["line"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert sorted(records) == [1, 2, 3, 4, 5, 6]
    assert all(records[n]["status"] == "ok" and records[n]["cached"] is False for n in range(1, 6))
    assert f"{label}:6: not valid JSON" in records[6]["error"]
    assert "5/6 done (0 from the store), 1 failed, spent $0.015" in proc.stderr
    assert usage_spent(budget_state(cli), "provider:mock") == Decimal("0.015")


def test_batch_reads_a_fifo_and_a_summary_never_counts_lines_that_did_not_run(cli, tmp_path):
    fifo = tmp_path / "requests.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(jsonl_text(FIVE[:3]), encoding="utf-8"))
    writer.start()
    try:
        proc = cli("batch", fifo.name, "--results", "res.jsonl", "--no-progress", rc=0)
    finally:
        writer.join(timeout=30)

    records = [json.loads(line) for line in (tmp_path / "res.jsonl").read_text().splitlines()]
    assert sorted(r["line"] for r in records) == [1, 2, 3] and all(r["status"] == "ok" for r in records)
    assert "3/3 done (0 from the store), 0 failed, spent $0.009" in proc.stderr


def test_plan_reads_standard_input_given_as_a_dash(cli):
    proc = cli("plan", "-", "--json", stdin=jsonl_text([FIVE[0], "[1]"]), rc=10)

    rows = {row["line"]: row for row in json.loads(proc.stdout)["requests"]}
    assert rows[1]["route"] == "mock · mock/flux-schnell"
    assert rows[2]["error"].startswith("<stdin>:2: expected a JSON object")


ODD_LINES = [
    FIVE[0],
    '{"task": "text-to-image", "prompt": "a", "seed": ' + "9" * 5000 + "}",
    "[" * 100_000,
    '{"task": "text-to-image", "prompt": "a kite", "prompt": "a kite at dusk", "tier": "fast"}',
    FIVE[1],
]
ODD_ERRORS = {
    2: "big.jsonl:2: a number has more than 4300 digits",
    3: "big.jsonl:3: nested too deeply to read",
    4: 'big.jsonl:4: the key "prompt" appears twice in one object',
}


def test_an_odd_jsonl_line_fails_that_line_only_in_batch(cli, tmp_path):
    write_jsonl(tmp_path / "big.jsonl", ODD_LINES)

    proc = cli("batch", "big.jsonl", "--no-progress", rc=10)

    records = {r["line"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert {n for n, r in records.items() if r["status"] == "ok"} == {1, 5}
    for number, words in ODD_ERRORS.items():
        assert records[number]["kind"] == "InvalidRequest" and records[number]["error"].startswith(words)
    assert "internal error" not in proc.stderr and "2/5 done" in proc.stderr


def test_an_odd_jsonl_line_fails_that_line_only_in_plan(cli, tmp_path):
    write_jsonl(tmp_path / "big.jsonl", ODD_LINES)

    proc = cli("plan", "big.jsonl", "--json", rc=10)

    rows = {row["line"]: row for row in json.loads(proc.stdout)["requests"]}
    assert rows[1]["route"] == rows[5]["route"] == "mock · mock/flux-schnell"
    for number, words in ODD_ERRORS.items():
        assert rows[number]["error"].startswith(words)
    assert "internal error" not in proc.stderr


def test_a_byte_order_mark_before_the_first_line_is_not_part_of_the_request(cli, tmp_path):
    (tmp_path / "notepad.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl_text(FIVE[:2]).encode())

    proc = cli("plan", "notepad.jsonl", "--json", rc=0)

    rows = json.loads(proc.stdout)["requests"]
    assert [(row["line"], row["route"]) for row in rows] == [(n, "mock · mock/flux-schnell") for n in (1, 2)]


@pytest.mark.parametrize(
    ("param", "words"),
    [
        ("seed=" + "9" * 5000, "--param seed: a number has more than 4300 digits"),
        ("seed=" + "[" * 20_000, "--param seed: nested too deeply to read"),
        ('seed={"a": 1, "a": 2}', '--param seed: the key "a" appears twice in one object'),
    ],
)
def test_a_param_value_that_cannot_be_read_names_the_parameter(cli, param, words):
    proc = cli("run", "a fox", "--param", param, rc=4)

    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"genroute: error: {words}")
    assert "internal error" not in proc.stderr


def test_a_text_param_keeps_a_value_json_cannot_read_as_typed(cli):
    brackets = "[" * 2000  # too deep for JSON, yet a text field takes it as it was typed
    proc = cli("run", "a fox", "--tier", "fast", "--param", f"negative_prompt={brackets}", "--json", rc=0)

    assert json.loads(proc.stdout)["provider"] == "mock"


MOCK_TOTAL_LIMIT = '{ scope = "provider:mock", period = "total", usd = "0.005" }'


def test_plan_totals_every_budget_scope_an_offer_spends_in(cli, tmp_path):
    limited = config_copy(tmp_path, SIMULATED_DAILY, f"{SIMULATED_DAILY},\n  {MOCK_TOTAL_LIMIT}", name="limited.toml")
    write_jsonl(tmp_path / "five.jsonl", FIVE)

    table = cli("plan", "five.jsonl", "--config", limited, rc=10)
    summary = json.loads(cli("plan", "five.jsonl", "--config", limited, "--json", rc=10).stdout)["summary"]

    assert "provider:mock: estimated $0.015 · left $0.005 · DOES NOT FIT" in table.stdout
    assert "simulated: estimated $0.015 · left $5.00 · fits" in table.stdout
    budgets = {b["scope"]: b for b in summary["budgets"]}
    assert budgets["provider:mock"]["fits"] is False and budgets["simulated"]["fits"] is True
    assert summary["fits_budget"] is False
    batch = cli("batch", "five.jsonl", "--config", limited, "--no-progress", rc=10)  # as plan said: it does not fit
    assert "1/5 done" in batch.stderr


def test_plan_counts_a_repeated_request_once_and_batch_pays_it_once(cli, tmp_path):
    # The mock answers after 0.3 s, so the repeats of line 1 are read while it is still running.
    slow = config_copy(tmp_path, "latency_seconds = 0.0", "latency_seconds = 0.3", name="slow.toml")
    write_jsonl(tmp_path / "repeats.jsonl", [FIVE[0], FIVE[0], FIVE[1], FIVE[0]])

    plan = json.loads(cli("plan", "repeats.jsonl", "--config", slow, "--json", rc=0).stdout)
    table = cli("plan", "repeats.jsonl", "--config", slow, rc=0).stdout
    batch = cli("batch", "repeats.jsonl", "--config", slow, "--no-progress", rc=0)

    rows = {row["line"]: row for row in plan["requests"]}
    assert (rows[2]["same_as"], rows[4]["same_as"], "same_as" in rows[3]) == (1, 1, False)
    assert plan["summary"]["repeats"] == 2
    assert [(b["scope"], b["estimated"]) for b in plan["summary"]["budgets"]] == [("simulated", "0.006")]
    assert "(same as line 1: paid once)" in table and "2 line(s) repeat an earlier line's request" in table
    records = {r["line"]: r for r in map(json.loads, batch.stdout.splitlines())}
    assert all(r["status"] == "ok" for r in records.values()) and len(records) == 4
    assert (records[2]["cached"], records[4]["cached"]) == (True, True)
    assert "4/4 done (2 from the store)" in batch.stderr
    assert usage_spent(budget_state(cli), "simulated") == Decimal("0.006")


def test_a_resumed_batch_starts_after_a_half_written_last_line(cli, tmp_path):
    write_jsonl(tmp_path / "two.jsonl", FIVE[:2])
    cut = '{"line": 1, "status": "ok", "provider": "mo'  # what a run killed mid-write leaves
    (tmp_path / "res.jsonl").write_text(cut, encoding="utf-8")

    proc = cli("batch", "two.jsonl", "--results", "res.jsonl", "--no-progress", rc=0)

    first, *rest = (tmp_path / "res.jsonl").read_text(encoding="utf-8").split("\n")
    assert first == cut  # left as it was, an invalid line of its own
    assert rest[-1] == "" and sorted(json.loads(line)["line"] for line in rest[:-1]) == [1, 2]
    assert "res.jsonl ended in the middle of a line" in proc.stderr


def test_a_results_file_ending_with_a_newline_gets_no_blank_line(cli, tmp_path):
    write_jsonl(tmp_path / "one.jsonl", FIVE[:1])

    cli("batch", "one.jsonl", "--results", "res.jsonl", "--no-progress", rc=0)
    proc = cli("batch", "one.jsonl", "--results", "res.jsonl", "--no-progress", rc=0)

    lines = (tmp_path / "res.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and all(json.loads(line)["line"] == 1 for line in lines)
    assert "middle of a line" not in proc.stderr


def read_then_close(tmp_path: Path, *args: str | Path, size: int) -> tuple[int, bytes, str]:
    """Run genroute with its standard output read by one that takes ``size`` bytes and goes (``| head -c``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "genroute.cli", *map(str, args)],
        cwd=tmp_path,
        env=cli_environ(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(size) if size else b""  # 0: gone before the command writes anything
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    return proc.wait(timeout=120), head, stderr


def test_a_stream_whose_reader_goes_away_ends_quietly_with_141_and_settles(cli, tmp_path):
    slow = config_copy(tmp_path, "failure_rate = 0.0", "failure_rate = 0.0\ntoken_latency_seconds = 0.02")
    args = ["run", "Tell a long story", "--task", "text-generation", "--param", "max_tokens=400", "--config", slow]

    rc, head, stderr = read_then_close(tmp_path, *args, size=10)

    assert (rc, len(head), stderr) == (141, 10, "")  # no "internal error", no "Exception ignored"
    report = budget_state(cli)
    assert all(Decimal(row["reserved"]) == 0 for row in report["usage"])
    assert usage_spent(report, "provider:mock") > 0  # the words produced were paid for: settled, not left open


def test_a_batch_whose_reader_goes_away_ends_quietly_with_141_and_releases(cli, tmp_path):
    slow = config_copy(tmp_path, "latency_seconds = 0.0", "latency_seconds = 0.05")
    many = [{"task": "text-to-image", "prompt": f"a kite, take {i}", "tier": "fast"} for i in range(40)]
    write_jsonl(tmp_path / "many.jsonl", many)

    rc, head, stderr = read_then_close(
        tmp_path, "batch", "many.jsonl", "--no-progress", "--concurrency", "2", "--config", slow, size=20
    )

    assert (rc, stderr) == (141, "") and head.startswith(b'{"line": ')
    report = budget_state(cli)
    assert all(Decimal(row["reserved"]) == 0 for row in report["usage"])
    assert usage_spent(report, "provider:mock") < Decimal("0.003") * 40  # it stopped: the rest never ran


def test_a_table_whose_reader_goes_away_ends_with_141_too(tmp_path):
    rc, _head, stderr = read_then_close(tmp_path, "providers", size=0)

    assert (rc, stderr) == (141, "")


def test_run_that_cannot_write_its_file_after_paying_names_it_and_a_rerun_costs_nothing(cli, tmp_path):
    key = request_key(parse_request({"task": "text-to-image", "prompt": "a lighthouse at dusk"}))
    in_the_way = tmp_path / "out" / f"text-to-image-{key[:12]}.png"
    in_the_way.mkdir(parents=True)

    failed = cli("run", "a lighthouse at dusk", rc=4)

    (line,) = error_lines(failed.stderr)
    assert f"--output-dir: cannot write {Path('out') / in_the_way.name}: Is a directory" in line
    assert "the result is kept in the store" in line and "costs nothing" in line
    assert "internal error" not in failed.stderr
    assert usage_spent(budget_state(cli), "simulated") == Decimal("0.025")  # it ran, and was paid for
    in_the_way.rmdir()
    again = cli("run", "a lighthouse at dusk", rc=0)
    assert "store (cached, no charge)" in again.stderr and in_the_way.read_bytes().startswith(PNG_MAGIC)
    assert usage_spent(budget_state(cli), "simulated") == Decimal("0.025")


class FullDisk:
    """A results file on a disk that fills up after ``room`` writes."""

    def __init__(self, real: Any, room: int) -> None:
        self.real, self.room = real, room

    def write(self, text: str) -> int:
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= 1
        return self.real.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For ``genroute.cli.main`` run in this process: ``tmp_path`` as working directory and GENROUTE_HOME."""
    for name in ("GENROUTE_PROFILE", *TOKEN_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GENROUTE_CONFIG", str(CONFIG))
    monkeypatch.setenv("GENROUTE_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_batch_whose_results_disk_fills_up_stops_with_an_error_and_a_rerun_pays_nothing_twice(
    in_process, tmp_path, monkeypatch, capsys
):
    write_jsonl(tmp_path / "five.jsonl", FIVE)
    real_open = Path.open

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, mode, *args, **kwargs)
        return FullDisk(handle, room=1) if self.name == "res.jsonl" and "a" in mode else handle

    monkeypatch.setattr(Path, "open", open_)
    rc = genroute.cli.main(["batch", "five.jsonl", "--results", "res.jsonl", "--no-progress"])
    err = capsys.readouterr().err
    monkeypatch.setattr(Path, "open", real_open)

    assert rc == 4, err
    assert "genroute: error: --results: cannot write res.jsonl: No space left on device; the batch stopped" in err
    assert "kept in the store, so their lines then cost nothing" in err and "internal error" not in err
    assert len((tmp_path / "res.jsonl").read_text().splitlines()) == 1
    assert genroute.cli.main(["batch", "five.jsonl", "--results", "res.jsonl", "--no-progress"]) == 0
    assert genroute.cli.main(["budget", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(Decimal(row["reserved"]) == 0 for row in report["usage"])
    assert usage_spent(report, "provider:mock") == Decimal("0.015")  # each of the five paid once, in all


@pytest.mark.parametrize("json_output", [False, True], ids=["streamed", "json"])
def test_a_text_result_creates_no_output_directory(cli, tmp_path, json_output):
    args = ["run", "hi", "--task", "text-generation", "--tier", "fast", "--output-dir", "made/by/textgen"]

    proc = cli(*args, *(["--json"] if json_output else []), rc=0)

    assert not (tmp_path / "made").exists()
    assert proc.stdout.strip()


def test_a_file_result_creates_its_nested_output_directory(cli, tmp_path):
    cli("run", "a fox", "--tier", "fast", "--output-dir", "made/by/image", rc=0)

    (saved,) = (tmp_path / "made" / "by" / "image").iterdir()
    assert saved.read_bytes().startswith(PNG_MAGIC)


def test_an_output_dir_under_a_file_is_refused_and_nothing_is_created(cli, tmp_path):
    (tmp_path / "afile").write_text("not a directory")

    proc = cli("run", "a fox", "--output-dir", "afile/deep/er", rc=4)

    (line,) = error_lines(proc.stderr)
    assert "--output-dir: cannot create afile/deep/er: afile is not a directory" in line
    assert usage_spent(budget_state(cli), "simulated") == 0


def test_ctrl_c_while_saving_leaves_no_output_directory_behind(in_process, monkeypatch, capsys):
    def interrupted(self: Artifact, directory: Path, stem: str, **kwargs: Any) -> Path:
        Path(directory).mkdir(parents=True, exist_ok=True)  # as far as the copy got
        raise KeyboardInterrupt

    monkeypatch.setattr(Artifact, "save", interrupted)

    rc = genroute.cli.main(["run", "a fox", "--tier", "fast", "--output-dir", "new/deep"])

    assert rc == 130 and "genroute: interrupted" in capsys.readouterr().err
    assert not (in_process / "new").exists()


# --------------------------------------------------------------------------------------------------- inspection


def test_providers_json_lists_the_mock_available_and_real_providers_not_installed(cli):
    payload = json.loads(cli("providers", "--json", rc=0).stdout)

    assert payload["profile"] == "offline"
    status = {p["provider"]: p for p in payload["providers"]}
    assert status["mock"]["status"] == "available" and status["mock"]["in_profile"] is True
    assert {m["task"] for m in status["mock"]["models"]} >= {"text-to-image", "speech-to-text", "text-generation"}
    assert status["replicate"]["status"] == "unavailable: REPLICATE_API_TOKEN is not set"
    assert status["replicate"]["in_profile"] is False
    # Hugging Face is installed (built-in plugin) but this environment has no token.
    assert status["huggingface"]["status"] == "unavailable: HF_TOKEN is not set"
    assert status["huggingface"]["in_profile"] is False


def test_providers_reset_ends_a_cooldown_for_every_process_sharing_the_ledger(cli, tmp_path):
    text = CONFIG.read_text(encoding="utf-8")
    edits = {
        "cooldown_after_failures = 3\n": "cooldown_after_failures = 1\n",
        "max_attempts = 3\n": "max_attempts = 1\n",
    }
    for old, new in edits.items():
        assert old in text, f"plugins.toml no longer contains {old!r}; update the test"
        text = text.replace(old, new, 1)
    healthy = tmp_path / "healthy.toml"
    healthy.write_text(text, encoding="utf-8")
    assert "failure_rate = 0.0\n" in text
    failing = tmp_path / "failing.toml"
    failing.write_text(text.replace("failure_rate = 0.0\n", "failure_rate = 1.0\n", 1), encoding="utf-8")

    cli("run", "a fox", "--config", failing, rc=6)  # the mock fails once: out of rotation for 60 s
    cooled = cli("run", "a fox", "--config", healthy, rc=6)  # another process honours that cooldown
    assert "cooling down" in cooled.stderr

    reset = cli("providers", "reset", "mock", "--config", healthy, rc=0)
    assert re.fullmatch(
        r"mock: forgot the cooldown after repeated failures, until "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC — now available\n",
        reset.stdout,
    ), reset.stdout
    result = json.loads(cli("run", "a fox", "--tier", "fast", "--config", healthy, "--json", rc=0).stdout)
    assert result["provider"] == "mock" and Decimal(result["actual_cost"]) == Decimal("0.003")
    again = cli("providers", "reset", "mock", "--config", healthy, rc=0)
    assert again.stdout == "mock: nothing to forget — available\n"


def test_providers_reset_without_a_name_prints_a_clean_usage_line(cli):
    proc = cli("providers", "reset", rc=2)

    assert proc.stderr.startswith("usage: genroute providers reset [-h]"), proc.stderr
    assert proc.stderr.count("reset") == 2, proc.stderr  # in the usage line and in the error line, once each
    assert "genroute providers reset: error: the following arguments are required: PROVIDER" in proc.stderr


class _Stubborn(Provider):
    """A third-party provider whose forget_withdrawal has a bug."""

    name = "stubborn"

    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        raise AssertionError("not run here")

    def forget_withdrawal(self, settings: Settings) -> str | None:
        raise RuntimeError("state file locked")


def test_a_provider_whose_forget_withdrawal_raises_is_named_and_nothing_is_reset(settings_factory, router_factory):
    router = router_factory(settings_factory({"stubborn": section("stubborn")}), FakePlugin(_Stubborn()))
    until = time.time() + 60
    router.ledger.post_cooldown("stubborn", until)
    with pytest.raises(PluginError) as info:
        genroute.cli._reset_provider(router, "stubborn")
    assert info.value.message.startswith("provider stubborn: forget_withdrawal raised RuntimeError: state file locked")
    assert "its cooldown was left as it was" in info.value.message and "fix or uninstall" in info.value.hint
    assert router.ledger.cooldown_until("stubborn") == until


def test_budget_refuses_one_file_for_both_exports(cli, tmp_path):
    (tmp_path / "rep").mkdir()
    proc = cli("budget", "--export-csv", "rep/both.out", "--export-json", "./rep/../rep/both.out", rc=4)

    assert "--export-json: is the same file as --export-csv (rep/both.out)" in proc.stderr
    assert "give the two exports different file names" in proc.stderr
    assert not (tmp_path / "rep" / "both.out").exists()  # refused before writing either


def test_budget_json_and_exports_are_parseable(cli, tmp_path):
    cli("run", "a lighthouse", "--tier", "fast", rc=0)

    proc = cli("budget", "--json", "--export-csv", "rep/report.csv", "--export-json", "rep/report.json", rc=0)

    report = json.loads(proc.stdout)
    assert usage_spent(report, "simulated") == Decimal("0.003")
    assert usage_spent(report, "global") == 0  # the mock's money is simulated
    rows = list(csv.DictReader((tmp_path / "rep" / "report.csv").read_text(encoding="utf-8").splitlines()))
    assert list(rows[0]) == [
        "group", "provider", "model", "day", "scope", "period", "period_key",
        "limit_usd", "spent_usd", "reserved_usd", "left_usd", "count", "exhausted",
    ]  # fmt: skip
    (mock_row,) = [r for r in rows if r["group"] == "provider"]
    assert mock_row["provider"] == "mock" and Decimal(mock_row["spent_usd"]) == Decimal("0.003")
    exported = json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))
    assert exported["usage"] == report["usage"]
    assert "wrote rep/report.csv" in proc.stderr and "wrote rep/report.json" in proc.stderr


def test_cache_stats_and_clear(cli, tmp_path):
    empty = json.loads(cli("cache", "stats", "--json", rc=0).stdout)
    assert (empty["entries"], empty["hits"], empty["misses"]) == (0, 0, 0)
    cli("run", "a lighthouse", "--tier", "fast", rc=0)
    cli("run", "a lighthouse", "--tier", "fast", rc=0)

    stats = json.loads(cli("cache", "stats", "--json", rc=0).stdout)
    cleared = cli("cache", "clear", rc=0)

    assert stats["entries"] == 1 and stats["bytes"] > 0 and stats["hits"] == 1
    assert Decimal(stats["saved_usd"]) == Decimal("0.003")
    assert "removed 1 result(s) and 0 scratch file(s)" in cleared.stdout
    assert json.loads(cli("cache", "clear", "--json", rc=0).stdout) == {
        "removed": 0,
        "scratch_files": 0,
        "bytes_freed": 0,
    }
    after = json.loads(cli("cache", "stats", "--json", rc=0).stdout)
    assert (after["entries"], after["hits"], after["misses"], Decimal(after["saved_usd"])) == (0, 0, 0, 0)
    assert after["bytes"] < stats["bytes"]  # what is left is the databases' own pages
    assert not [p for p in (tmp_path / ".genroute" / "store").rglob("*.png")]
    rerun = cli("run", "a lighthouse", "--tier", "fast", rc=0)
    assert "cached" not in rerun.stderr


def test_cache_clear_counts_the_scratch_files_it_removes(cli, tmp_path):
    # A bypassed result is not kept by the store: its file goes to the store's scratch folder, which clear empties.
    cli("run", "a lighthouse", "--tier", "fast", "--cache", "bypass", rc=0)
    cli("run", "a harbour", "--tier", "fast", "--cache", "bypass", rc=0)
    scratch = tmp_path / ".genroute" / "store" / "scratch"
    sizes = [p.stat().st_size for p in scratch.iterdir()]
    assert len(sizes) == 2

    cleared = cli("cache", "clear", "--json", rc=0)

    assert json.loads(cleared.stdout) == {"removed": 0, "scratch_files": 2, "bytes_freed": sum(sizes)}
    assert not list(scratch.iterdir())
    cli("run", "a lighthouse", "--tier", "fast", "--cache", "bypass", rc=0)
    (left,) = scratch.iterdir()
    size = left.stat().st_size
    said = cli("cache", "clear", rc=0).stdout
    assert said == f"removed 0 result(s) and 1 scratch file(s); {size / 1000:.1f} kB freed\n"


# --------------------------------------------------------------------------------------------------- secrets

CANARIES = {"REPLICATE_API_TOKEN": "r8_CanaryReplicate7f3a9c", "HF_TOKEN": "hf_CanaryHugging2b8d41"}


def test_token_values_never_appear_in_output_or_in_files(cli, tmp_path, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    token_config = config_copy(
        elsewhere,
        "[providers.replicate]\n",
        f'[providers.replicate]\napi_token = "{CANARIES["REPLICATE_API_TOKEN"]}"\n',
    )
    write_wav(tmp_path / "call.wav", seconds=1)
    write_jsonl(tmp_path / "reqs.jsonl", [*GOOD, '{"task": ', {"task": "upscale", "image": "missing.png"}])
    missing_config = elsewhere / f"{CANARIES['HF_TOKEN']}.toml"  # an error message naming this path must mask it
    commands: list[tuple[list[str | Path], int]] = [
        (["run", "a lighthouse", "--tier", "fast", "--debug"], 0),
        (["run", "a lighthouse", "--tier", "fast", "--json", "--debug"], 0),
        (["run", "Once upon a time", "--task", "text-generation", "--debug"], 0),
        (["run", "--task", "speech-to-text", "--input", "call.wav", "--debug"], 0),
        (["plan", "reqs.jsonl", "--json", "--debug"], 10),
        (["batch", "reqs.jsonl", "--no-progress", "--debug"], 10),
        (["providers", "--json", "--profile", "prod", "--debug"], 0),
        (["budget", "--export-csv", "b.csv", "--export-json", "b.json", "--debug"], 0),
        (["cache", "stats", "--debug"], 0),
        (["run", "x", "--profile", "prod", "--debug"], 6),
        (["run", "x", "--param", "num_outputs=9", "--debug"], 4),
        (["run", "x", "--profile", "nope", "--debug"], 3),
        (["run", "x", "--config", token_config, "--debug"], 3),
        (["run", "x", "--config", missing_config, "--debug"], 3),
    ]
    printed = []
    for args, rc in commands:
        proc = cli(*args, env=CANARIES, rc=rc)
        printed.append(proc.stdout + proc.stderr)

    everything = "\n".join(printed)
    assert "Traceback" in everything  # the error paths did run with --debug
    assert "***" in everything  # the missing config's path was masked, not dropped
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 5  # ledger, store, outputs, exports
    for canary in CANARIES.values():
        assert canary not in everything
        leaks = [p for p in written if canary.encode() in p.read_bytes()]
        assert not leaks, f"{canary} written to {leaks}"


def test_plan_masks_tokens_in_its_per_line_errors(cli, tmp_path):
    canary = CANARIES["HF_TOKEN"]
    write_jsonl(tmp_path / "reqs.jsonl", [{"task": "upscale", "image": f"/nonexistent/{canary}.png"}])

    plan = cli("plan", "reqs.jsonl", "--json", env=CANARIES, rc=10)
    batch = cli("batch", "reqs.jsonl", "--no-progress", env=CANARIES, rc=10)

    assert canary not in batch.stdout + batch.stderr and "***" in batch.stdout  # batch masks it
    assert canary not in plan.stdout + plan.stderr


def test_an_input_url_reaches_the_router_whole(cli):
    result = cli("run", "--task", "upscale", "--input", "http://127.0.0.1:9/x.png", rc=4)
    assert "cannot fetch http://127.0.0.1:9/x.png" in result.stderr  # not "file not found: http:/127…"


def test_an_output_dir_that_cannot_be_used_is_refused_before_anything_is_spent(cli, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    before = usage_spent(budget_state(cli), "simulated")
    result = cli("run", "a fox in the snow", "--output-dir", "afile/out", rc=4)
    (line,) = error_lines(result.stderr)
    assert "--output-dir" in line and "Traceback" not in result.stderr
    assert usage_spent(budget_state(cli), "simulated") == before


def test_the_named_task_option_wins_over_param(cli):
    result = cli("run", "a fox", "--task", "text-to-image", "--param", "task=text-to-speech", "--json", rc=0)
    assert json.loads(result.stdout)["task"] == "text-to-image"


def test_a_budget_export_to_a_directory_is_refused_naming_the_option(cli, tmp_path):
    (tmp_path / "reports").mkdir()
    result = cli("budget", "--export-json", "reports", rc=4)
    assert "--export-json" in result.stderr and ".tmp" not in result.stderr


@pytest.mark.parametrize("command", [["run", "a slow lighthouse", "--tier", "fast"], ["batch", "slow.jsonl"]])
def test_sigterm_stops_a_command_like_ctrl_c_and_leaves_nothing_reserved(tmp_path, command):
    # `timeout`, `docker stop` and systemd send SIGTERM: the work in flight is cancelled and its reservations
    # closed, as for Ctrl-C, instead of the process vanishing with money set aside (or a remote call running).
    slow = config_copy(tmp_path, "latency_seconds = 0.0", "latency_seconds = 30.0", name="slow.toml")
    write_jsonl(
        tmp_path / "slow.jsonl", [{"task": "text-to-image", "prompt": f"slow {i}", "tier": "fast"} for i in range(3)]
    )
    environ = cli_environ(tmp_path, {"GENROUTE_CONFIG": str(slow)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "genroute.cli", *command, "--debug"],
        cwd=tmp_path, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        reserved = _wait_for_open_reservation(tmp_path / ".genroute" / "ledger")
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert reserved, "the command never reserved anything"
    assert proc.returncode == 143, err
    assert err.rstrip().endswith("genroute: terminated")
    from genroute.ledger import Ledger

    with Ledger(tmp_path / ".genroute" / "ledger") as ledger:
        assert ledger.open_reservations() == []
        assert {e.status for e in ledger.entries()} == {"released"}


def _wait_for_open_reservation(path: Path, timeout: float = 30.0) -> bool:
    from genroute.ledger import Ledger

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_dir():
            with Ledger(path) as ledger:
                if ledger.open_reservations():
                    return True
        time.sleep(0.05)
    return False
