"""``genroute`` end to end with the Replicate plugin: subprocesses against a fake started by the test.

The CLI reads a temporary copy of the repository's ``plugins.toml`` (``GENROUTE_CONFIG``) whose
``[providers.replicate.options]`` point at the fake; the token comes from ``REPLICATE_API_TOKEN``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fakes import FakeReplicate, sign_webhook
from test_replicate_helpers import REPO_ROOT, TOKEN

TOKEN_VARIABLES = ("REPLICATE_API_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "REPLICATE_WEBHOOK_SECRET")
Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def server() -> Iterator[FakeReplicate]:
    with FakeReplicate(prediction_seconds=0.02, token=TOKEN, catalogue=True) as fake:
        yield fake
    assert fake.errors == []


def _config(tmp_path: Path, server: FakeReplicate) -> Path:
    text = (REPO_ROOT / "plugins.toml").read_text(encoding="utf-8")
    header = "[providers.replicate.options]\n"
    before, found, rest = text.partition(header)
    assert found, "plugins.toml has no [providers.replicate.options] section"
    section, next_table, after = rest.partition("\n[")
    options = {"base_url": f'"{server.base_url}"', "poll_initial_seconds": "0.01", "poll_max_seconds": "0.05"}
    kept = [line for line in section.splitlines() if line.split("=", 1)[0].strip() not in options]
    lines = [f"{key} = {value}" for key, value in options.items()] + kept
    text = before + header + "\n".join(lines) + "\n" + next_table + after
    path = tmp_path / "plugins.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _environ(tmp_path: Path, config: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in (*TOKEN_VARIABLES, "GENROUTE_PROFILE")}
    environ.update({"GENROUTE_CONFIG": str(config), "GENROUTE_HOME": str(tmp_path), "NO_COLOR": "1"})
    environ.update(extra or {})
    return environ


@pytest.fixture
def cli(tmp_path: Path, server: FakeReplicate) -> Cli:
    config = _config(tmp_path, server)

    def run(*args: str, token: bool = True, rc: int | None = None) -> subprocess.CompletedProcess[str]:
        environ = _environ(tmp_path, config, {"REPLICATE_API_TOKEN": TOKEN} if token else None)
        proc = subprocess.run([sys.executable, "-m", "genroute.cli", *args], cwd=tmp_path, env=environ,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if rc is not None:
            assert proc.returncode == rc, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert TOKEN not in proc.stdout + proc.stderr
        return proc

    return run


def test_prod_profile_run_end_to_end(cli: Cli, server: FakeReplicate, tmp_path: Path) -> None:
    proc = cli("run", "a red fox", "--task", "text-to-image", "--tier", "fast", "--num-outputs", "2",
               "--profile", "prod", "--json", rc=0)  # fmt: skip
    result = json.loads(proc.stdout)
    assert result["provider"] == "replicate" and result["model"] == "black-forest-labs/flux-schnell"
    assert result["actual_cost"] == "0.006000" and result["job_id"] == server.predictions[0].id
    assert len(result["saved"]) == 2
    for saved in result["saved"]:
        with Image.open(tmp_path / saved) as image:
            assert saved.endswith(".webp") and image.size == (1024, 1024)
    budget = json.loads(cli("budget", "--json", "--profile", "prod", rc=0).stdout)
    spent = {(row["scope"], row["period"]): row["spent"] for row in budget["usage"]}
    assert spent[("provider:replicate", "total")] == "0.006000"
    streamed = cli("run", "Say hello", "--task", "text-generation", "--tier", "fast", "--profile", "prod", rc=0)
    assert streamed.stdout.startswith("Here is a reply about Say hello") and "replicate" in streamed.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_without_a_token_providers_say_why_and_a_pinned_run_fails_naming_it(cli: Cli, server: FakeReplicate) -> None:
    listing = json.loads(cli("providers", "--profile", "prod", "--json", token=False, rc=0).stdout)
    replicate = next(row for row in listing["providers"] if row["provider"] == "replicate")
    assert replicate["status"] == "unavailable: REPLICATE_API_TOKEN is not set" and replicate["in_profile"]
    assert len(replicate["models"]) == 30
    text = cli("providers", "--profile", "prod", token=False, rc=0).stdout
    assert "replicate — unavailable: REPLICATE_API_TOKEN is not set" in text
    failed = cli("run", "a fox", "--tier", "fast", "--profile", "prod", "--provider", "replicate", token=False, rc=6)
    assert "replicate" in failed.stderr and "unavailable: REPLICATE_API_TOKEN is not set" in failed.stderr
    unpinned = cli("run", "a fox", "--tier", "fast", "--profile", "prod", token=False, rc=6)
    assert "unavailable: REPLICATE_API_TOKEN is not set" in unpinned.stderr
    assert server.count() == 0


def test_after_a_402_providers_reset_brings_replicate_back_once_credit_is_added(
    cli: Cli, server: FakeReplicate, tmp_path: Path
) -> None:
    config = tmp_path / "plugins.toml"  # the cli fixture's copy: one failure is enough for a router cooldown too
    text = config.read_text(encoding="utf-8")
    assert "cooldown_after_failures = 3\n" in text
    config.write_text(text.replace("cooldown_after_failures = 3\n", "cooldown_after_failures = 1\n"), encoding="utf-8")
    server.faults.add("POST /v1/models/*/predictions", 402, times=1)  # the account is empty, once
    broke = cli("run", "a fox", "--tier", "fast", "--profile", "prod", rc=6)
    assert "HTTP 402" in broke.stderr and server.count("POST", "/v1/models/*/predictions") == 1
    listing = json.loads(cli("providers", "--profile", "prod", "--json", rc=0).stdout)
    status = next(row["status"] for row in listing["providers"] if row["provider"] == "replicate")
    assert status.startswith("unavailable: out of credit (HTTP 402); withdrawn until")
    cli("run", "a fox", "--tier", "fast", "--profile", "prod", rc=6)  # still withdrawn: Replicate is not asked
    assert server.count("POST", "/v1/models/*/predictions") == 1

    # The user adds credit, then:
    reset = cli("providers", "reset", "replicate", "--profile", "prod", rc=0)
    assert reset.stdout.startswith("replicate: forgot out of credit (HTTP 402), withdrawn until ")
    assert "; the cooldown after repeated failures, until " in reset.stdout
    assert reset.stdout.rstrip().endswith(" UTC — now available")
    listing = json.loads(cli("providers", "--profile", "prod", "--json", rc=0).stdout)
    assert next(row["status"] for row in listing["providers"] if row["provider"] == "replicate") == "available"
    result = json.loads(cli("run", "a fox", "--tier", "fast", "--profile", "prod", "--json", rc=0).stdout)
    assert result["provider"] == "replicate" and result["actual_cost"] == "0.003000"
    assert result["job_id"] == server.predictions[0].id and len(server.predictions) == 1
    budget = json.loads(cli("budget", "--json", "--profile", "prod", rc=0).stdout)
    spent = {(row["scope"], row["period"]): row["spent"] for row in budget["usage"]}
    assert spent[("provider:replicate", "total")] == "0.003000"

    again = json.loads(cli("providers", "reset", "replicate", "--json", rc=0).stdout)  # nothing left to forget
    assert again == {"providers": [{"provider": "replicate", "forgot": [], "status": "available"}]}
    unknown = cli("providers", "reset", "replicat", rc=4)
    assert unknown.stderr.startswith("genroute: error: PROVIDER: 'replicat' is not an installed provider — name one of")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_webhooks_serve_command(tmp_path: Path, server: FakeReplicate) -> None:
    config = _config(tmp_path, server)
    port = _free_port()
    secret = server.webhook_secret
    environ = _environ(tmp_path, config, {"REPLICATE_WEBHOOK_SECRET": secret})
    proc = subprocess.Popen(
        [sys.executable, "-m", "genroute.cli", "webhooks", "serve", "--port", str(port), "--profile", "prod"],
        cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        body = json.dumps({"id": "p1", "status": "processing"})
        stamp = str(int(time.time()))
        headers = {"webhook-id": "msg_1", "webhook-timestamp": stamp,
                   "webhook-signature": sign_webhook(secret, "msg_1", stamp, body)}  # fmt: skip
        ok = httpx.post(f"http://127.0.0.1:{port}/hooks", content=body, headers=headers, timeout=5)
        assert ok.status_code == 200 and "intermediate" in ok.json()["ignored"]
        forged = {**headers, "webhook-signature": sign_webhook(secret + "x", "msg_1", stamp, body)}
        assert httpx.post(f"http://127.0.0.1:{port}/hooks", content=body, headers=forged, timeout=5).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/hooks", timeout=5).status_code == 405
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err  # Ctrl-C, as for every command (docs/cli.md, exit codes)
    assert err.rstrip().endswith("genroute: interrupted")
    assert f"receiving Replicate webhooks on http://127.0.0.1:{port}/" in err and secret not in out + err


def _serving(tmp_path: Path, environ: dict[str, str], port: int) -> subprocess.Popen[str]:
    """``genroute webhooks serve`` on ``port``, once it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "genroute.cli", "webhooks", "serve", "--port", str(port)],
        cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return proc


def test_webhooks_serve_stopped_by_sigterm_exits_143(tmp_path: Path, server: FakeReplicate) -> None:
    environ = _environ(tmp_path, _config(tmp_path, server), {"REPLICATE_WEBHOOK_SECRET": server.webhook_secret})
    proc = _serving(tmp_path, environ, _free_port())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    assert err.rstrip().endswith("genroute: terminated")


def test_webhooks_serve_says_what_failed_when_the_secret_cannot_be_fetched(
    tmp_path: Path, server: FakeReplicate
) -> None:
    server.faults.add("GET /v1/webhooks/default/secret", 500)
    environ = _environ(tmp_path, _config(tmp_path, server), {"REPLICATE_API_TOKEN": TOKEN})
    proc = subprocess.run(
        [sys.executable, "-m", "genroute.cli", "webhooks", "serve", "--port", str(_free_port())],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert 2 <= server.count("GET", "/v1/webhooks/default/secret") <= 3  # tried again, a bounded few times
    (line,) = proc.stderr.splitlines()
    assert line.startswith("genroute: error: the webhook receiver did not start: could not fetch the webhook signing")
    assert "Replicate answered HTTP 500 on GET /v1/webhooks/default/secret" in line
    assert "REPLICATE_API_TOKEN is set; try again later, or set REPLICATE_WEBHOOK_SECRET" in line
    assert "falls back" not in line and "or REPLICATE_API_TOKEN to fetch" not in line
    assert TOKEN not in proc.stderr and "receiving Replicate webhooks" not in proc.stderr


def test_webhooks_serve_starts_after_one_failed_fetch_of_the_secret(tmp_path: Path, server: FakeReplicate) -> None:
    server.faults.add("GET /v1/webhooks/default/secret", 503, times=1)
    environ = _environ(tmp_path, _config(tmp_path, server), {"REPLICATE_API_TOKEN": TOKEN})
    proc = _serving(tmp_path, environ, _free_port())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "receiving Replicate webhooks" in err
    assert server.count("GET", "/v1/webhooks/default/secret") == 2


def test_webhooks_serve_without_any_secret_fails_clearly(tmp_path: Path, server: FakeReplicate) -> None:
    config = _config(tmp_path, server)
    proc = subprocess.run(
        [sys.executable, "-m", "genroute.cli", "webhooks", "serve", "--port", str(_free_port())],
        cwd=tmp_path, env=_environ(tmp_path, config), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "did not start: it has no webhook signing secret" in proc.stderr
    assert "REPLICATE_WEBHOOK_SECRET" in proc.stderr
    assert "receiving Replicate webhooks" not in proc.stderr  # never announced: it never received anything


def test_webhooks_serve_on_a_busy_port_says_so_before_announcing_anything(
    tmp_path: Path, server: FakeReplicate
) -> None:
    config = _config(tmp_path, server)
    environ = {**_environ(tmp_path, config), "REPLICATE_WEBHOOK_SECRET": "whsec_" + "A" * 32}
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "genroute.cli", "webhooks", "serve", "--port", str(port)],
            cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"cannot receive webhooks on 127.0.0.1:{port}: the port is in use" in proc.stderr
    assert "choose another --port" in proc.stderr
    assert "receiving Replicate webhooks" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "99999"), "argument --port: 99999 is not a TCP port (1-65535)"),
        (("--port", "0"), "argument --port: 0 is not a TCP port (1-65535)"),
        (("--port", "abc"), "argument --port: invalid int value: 'abc'"),
        (("--tolerance", "0"), "argument --tolerance: 0 is not a positive number of seconds"),
        (("--tolerance", "-5"), "argument --tolerance: -5 is not a positive number of seconds"),
        (("--tolerance", "1.5"), "argument --tolerance: invalid int value: '1.5'"),
    ],
)
def test_webhooks_serve_refuses_bad_option_values_as_usage_errors(
    cli: Cli, args: tuple[str, str], message: str
) -> None:
    proc = cli("webhooks", "serve", *args, rc=2)
    assert message in proc.stderr and "usage:" in proc.stderr
    assert "configuration" not in proc.stderr and "receiving Replicate webhooks" not in proc.stderr
