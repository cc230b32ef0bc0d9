"""The error examples printed in docs/cli.md and docs/getting-started.md are what the CLI prints.

These outputs are deterministic (no tokens, no timings, no dates), so the documentation can show them
verbatim; a change to the messages or to which offers are listed must update the docs with it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN_VARIABLES = ("REPLICATE_API_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "REPLICATE_WEBHOOK_SECRET")


def _example(doc: str, command: str) -> list[str]:
    """The output lines the page shows under ``$ <command>``, up to the next command or the block's end."""
    text = (REPO_ROOT / "docs" / doc).read_text(encoding="utf-8")
    match = re.search(rf"^\$ {re.escape(command)}\n(.*?)(?=^\$ |^```)", text, flags=re.MULTILINE | re.DOTALL)
    assert match is not None, f"{doc} shows no example of {command!r}"
    return match.group(1).splitlines()


@pytest.mark.parametrize(
    ("doc", "command"),
    [
        ("cli.md", 'genroute run "a fox" --num-outputs 5'),
        ("cli.md", 'genroute --profile prod run "a quiet harbour" --tier fast'),
        ("getting-started.md", 'GENROUTE_PROFILE=prod genroute run "a quiet harbour" --tier fast'),
    ],
)
def test_documented_error_output_is_what_the_cli_prints(doc: str, command: str, tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in (*TOKEN_VARIABLES, "GENROUTE_PROFILE", "FORCE_COLOR")}
    environ.update({"GENROUTE_CONFIG": str(REPO_ROOT / "plugins.toml"), "GENROUTE_HOME": str(tmp_path)})
    environ.update({"NO_COLOR": "1", "COLUMNS": "200"})
    words = shlex.split(command)
    while "=" in words[0]:  # VARIABLE=value before the command
        name, value = words.pop(0).split("=", 1)
        environ[name] = value
    assert words[0] == "genroute"
    proc = subprocess.run(
        [sys.executable, "-m", "genroute.cli", *words[1:]],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.splitlines() == _example(doc, command)
