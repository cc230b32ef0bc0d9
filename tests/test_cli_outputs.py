"""The ``genroute`` command's option values, output paths and batch input, end to end through a subprocess.

As in ``test_cli.py``: each test runs ``python -m genroute.cli`` in its own ``tmp_path`` (working directory and
``GENROUTE_HOME``) against the repository's ``plugins.toml`` (offline profile: the built-in mock).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest

import test_cli
from test_cli import cli_environ, write_jsonl

cli = test_cli.cli  # the fixture: `cli(*args, rc=…)` runs genroute in tmp_path

REQUEST = {"task": "text-to-image", "prompt": "a red kite", "tier": "fast"}


# -- a bad option value is a bad command line (exit 2) ----------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_a_bad_concurrency_exits_2_with_a_usage_message_naming_the_option(cli, tmp_path, value):
    requests = write_jsonl(tmp_path / "in.jsonl", [REQUEST])
    proc = cli("batch", requests, "--concurrency", value, rc=2)
    assert proc.stderr.startswith("usage: genroute batch")
    assert "argument --concurrency: must be" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / ".genroute" / "ledger").exists() or "reserved" not in proc.stderr  # nothing ran


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_profile_is_refused_naming_the_option_instead_of_meaning_the_default(cli, where, value):
    args = ["--profile", value, "providers"] if where == "before" else ["providers", "--profile", value]
    proc = cli(*args, rc=2)
    assert "argument --profile: must name a profile, not be empty" in proc.stderr
    assert proc.stdout == ""


def test_an_empty_config_path_is_refused_naming_the_option(cli):
    proc = cli("--config", "", "providers", rc=2)
    assert "argument --config: must name a plugins.toml file" in proc.stderr


# -- output paths: missing parent directories are made, for every file the CLI writes --------------------------
def test_batch_results_in_a_missing_directory_creates_it_as_budget_exports_do(cli, tmp_path):
    requests = write_jsonl(tmp_path / "in.jsonl", [REQUEST])
    proc = cli("batch", requests, "--results", "new/sub/out.jsonl", "--no-progress", rc=0)
    assert proc.stdout == ""
    [record] = [json.loads(line) for line in (tmp_path / "new/sub/out.jsonl").read_text().splitlines()]
    assert record["status"] == "ok"
    cli("budget", "--export-csv", "made/deep/r.csv", "--export-json", "made/deeper/r.json", rc=0)
    assert (tmp_path / "made/deep/r.csv").is_file() and (tmp_path / "made/deeper/r.json").is_file()


def test_batch_results_under_a_file_is_refused_with_4_before_any_request_runs(cli, tmp_path):
    requests = write_jsonl(tmp_path / "in.jsonl", [REQUEST])
    (tmp_path / "afile").write_text("x")
    proc = cli("batch", requests, "--results", "afile/out.jsonl", rc=4)
    assert "--results:" in proc.stderr and "afile is not a directory" in proc.stderr
    assert json.loads(cli("budget", "--json", rc=0).stdout)["by_provider"] == []  # nothing was spent


# -- `-` means standard output ----------------------------------------------------------------------------------
def test_budget_export_json_to_a_dash_writes_the_report_to_stdout_and_no_file(cli, tmp_path):
    proc = cli("budget", "--export-json", "-", rc=0)
    report = json.loads(proc.stdout)  # the report alone: no table around it
    assert "usage" in report
    assert not (tmp_path / "-").exists()
    assert "wrote" not in proc.stderr


def test_budget_export_csv_to_a_dash_writes_csv_to_stdout_and_json_to_its_file(cli, tmp_path):
    proc = cli("budget", "--export-csv", "-", "--export-json", "r.json", rc=0)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert rows and rows[0]["group"] and {row["group"] for row in rows} >= {"savings", "usage"}
    assert not (tmp_path / "-").exists()
    assert json.loads((tmp_path / "r.json").read_text())["usage"]
    assert proc.stderr.strip() == "wrote r.json"


def test_both_budget_exports_to_stdout_are_refused(cli, tmp_path):
    proc = cli("budget", "--export-csv", "-", "--export-json", "-", rc=4)
    assert "--export-json: is standard output, as --export-csv is" in proc.stderr
    assert proc.stdout == ""


def test_a_file_named_dash_is_still_reachable_as_dot_slash_dash(cli, tmp_path):
    proc = cli("budget", "--export-csv", "./-", rc=0)
    assert (tmp_path / "-").read_text().startswith("group,")
    assert "scope" in proc.stdout  # the table, as with any file export


def test_batch_results_to_a_dash_go_to_stdout(cli, tmp_path):
    requests = write_jsonl(tmp_path / "in.jsonl", [REQUEST])
    proc = cli("batch", requests, "--results", "-", "--no-progress", rc=0)
    assert json.loads(proc.stdout)["status"] == "ok"
    assert not (tmp_path / "-").exists()


def test_budget_export_to_a_dash_whose_reader_goes_away_ends_quietly_with_141(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "genroute.cli", "budget", "--export-csv", "-"],
        cwd=tmp_path,
        env=cli_environ(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before anything is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == ""


# -- plan: a "use" line after a "refresh" line of the same request -----------------------------------------------
def test_plan_counts_a_use_line_after_a_refresh_line_as_served_as_batch_serves_it(cli, tmp_path):
    requests = write_jsonl(
        tmp_path / "in.jsonl",
        [{**REQUEST, "cache": "refresh"}, REQUEST, {**REQUEST, "cache": "refresh"}, {**REQUEST, "cache": "bypass"}],
    )
    plan = json.loads(cli("plan", requests, "--json", rc=0).stdout)
    rows = {row["line"]: row for row in plan["requests"]}
    assert rows[1]["estimate"] == "0.003" and "same_as" not in rows[1]
    assert rows[2]["same_as"] == 1 and rows[2]["estimate"] == "0"
    assert rows[3]["estimate"] == "0.003" and "same_as" not in rows[3]  # a refresh always pays
    assert rows[4]["estimate"] == "0.003" and "same_as" not in rows[4]  # bypass neither reads nor stores
    assert plan["summary"]["budgets"][0]["estimated"] == "0.009"
    batch = [json.loads(line) for line in cli("batch", requests, "--no-progress", rc=0).stdout.splitlines()]
    by_line = {record["line"]: record for record in batch}
    assert by_line[2]["cached"] is True and by_line[2]["cost"] == "0"
    assert sum(float(record["cost"]) for record in batch) == pytest.approx(0.009)


def test_plan_names_the_latest_earlier_line_that_stores_the_result_a_use_line_is_served_from(cli, tmp_path):
    refresh = {**REQUEST, "cache": "refresh"}
    requests = write_jsonl(tmp_path / "in.jsonl", [REQUEST, refresh, REQUEST, refresh, REQUEST, REQUEST])
    plan = json.loads(cli("plan", requests, "--json", rc=0).stdout)
    rows = {row["line"]: row for row in plan["requests"]}
    assert {line: row.get("same_as") for line, row in rows.items()} == {1: None, 2: None, 3: 2, 4: None, 5: 4, 6: 4}
    assert [rows[line]["estimate"] for line in range(1, 7)] == ["0.003", "0.003", "0", "0.003", "0", "0"]
    table = cli("plan", requests, rc=0).stdout
    labels = [line for line in table.splitlines() if "same as line" in line]
    assert len(labels) == 3, table
    assert "(same as line 2: paid once)" in labels[0] and all(
        "(same as line 4: paid once)" in label for label in labels[1:]
    )
    assert "same as line 1" not in table


# -- batch reads its input off the event loop ------------------------------------------------------------------
SLOW_PRODUCER = """
import os, sys, time
line = sys.argv[1]
sys.stdout.write(line + "\\n")
sys.stdout.flush()
while not os.path.exists(sys.argv[2]):  # blocked until the test says so
    time.sleep(0.02)
sys.stdout.write(line.replace("a red kite", "a blue kite") + "\\n")
sys.stdout.flush()
"""


def first_line(stream: IO[str]) -> str:
    """The next line of ``stream``, or "" when none comes within a hang guard (generous: not a timing threshold;
    before the fix no result came at all while the input pipe was waiting)."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout=90)
    return got[0] if got else ""


@pytest.mark.parametrize("concurrency", ["1", "8"])
def test_a_slow_pipe_does_not_stall_a_request_already_running(tmp_path, concurrency):
    go = tmp_path / "go"
    producer = subprocess.Popen(
        [sys.executable, "-c", SLOW_PRODUCER, json.dumps(REQUEST), str(go)], stdout=subprocess.PIPE
    )
    assert producer.stdout is not None
    batch = subprocess.Popen(
        [sys.executable, "-m", "genroute.cli", "batch", "-", "--no-progress", "--concurrency", concurrency],
        cwd=tmp_path,
        env=cli_environ(tmp_path),
        stdin=producer.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    producer.stdout.close()  # the batch holds the pipe now
    assert batch.stdout is not None and batch.stderr is not None
    try:
        first = first_line(batch.stdout)
        assert first, "no result while the input pipe was waiting"
        assert producer.poll() is None  # the producer is still blocked on the signal file the test controls
        assert not go.exists()
        record = json.loads(first)
        assert (record["line"], record["status"]) == (1, "ok")
    finally:
        go.touch()
        rest, stderr = batch.communicate(timeout=120)
        producer.wait(timeout=30)
    assert batch.returncode == 0, stderr
    [second] = [json.loads(line) for line in rest.splitlines()]
    assert (second["line"], second["status"]) == (2, "ok")
    assert "2/2 done" in stderr


def test_sigterm_while_the_input_pipe_waits_ends_with_143_and_no_crash_at_exit(tmp_path):
    go = tmp_path / "go"
    producer = subprocess.Popen(
        [sys.executable, "-c", SLOW_PRODUCER, json.dumps(REQUEST), str(go)], stdout=subprocess.PIPE
    )
    assert producer.stdout is not None
    batch = subprocess.Popen(
        [sys.executable, "-m", "genroute.cli", "batch", "-", "--no-progress"],
        cwd=tmp_path,
        env=cli_environ(tmp_path),
        stdin=producer.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    producer.stdout.close()
    assert batch.stdout is not None
    try:
        assert json.loads(first_line(batch.stdout) or "{}").get("status") == "ok"  # its reader waits on the pipe
        batch.terminate()  # SIGTERM, to this process by its id
        _, stderr = batch.communicate(timeout=120)
    finally:
        go.touch()
        producer.wait(timeout=30)
    assert batch.returncode == 143, stderr
    assert stderr.strip() == "genroute: terminated"  # no "Fatal Python error" from the reading thread at exit


# -- messages built outside cli.py (errors.py, router.py), seen through the CLI --
def config_without_replicate(directory: Path) -> Path:
    """The repository's plugins.toml without any [providers.replicate…] section, nor replicate in a profile."""
    kept: list[str] = []
    in_replicate = False
    for line in (test_cli.CONFIG).read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            in_replicate = line.startswith("[providers.replicate")
        if not in_replicate:
            kept.append(line)
    text = "\n".join(kept).replace('providers = ["replicate", "huggingface"]', 'providers = ["huggingface"]')
    target = directory / "norep.toml"
    target.write_text(text + "\n", encoding="utf-8")
    return target


def test_a_pin_to_an_installed_provider_without_a_config_section_says_what_to_add(cli, tmp_path):
    config = config_without_replicate(tmp_path)
    proc = cli("--config", config, "run", "a fox", "--provider", "replicate", rc=6)
    assert "no installed plugin registers" not in proc.stderr
    assert "installed" in proc.stderr and "[providers.replicate]" in proc.stderr and str(config) in proc.stderr


def test_a_misspelt_field_is_named_with_a_suggestion_in_plan_and_run(cli, tmp_path):
    requests = write_jsonl(tmp_path / "typo.jsonl", [{"task": "text-to-image", "promt": "x"}])
    plan = json.loads(cli("plan", requests, "--json", rc=10).stdout)
    error = plan["requests"][0]["error"]
    assert "prompt" in error and "promt" in error and "did you mean" in error
    proc = cli("run", "--param", "promt=x", rc=4)
    assert "promt" in proc.stderr and "did you mean" in proc.stderr
