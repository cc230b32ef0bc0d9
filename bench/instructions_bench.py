"""Instructions genroute executes per request, counted by callgrind: a figure the machine's speed does not move.

    python bench/instructions_bench.py

The time figures of ``bench/run.py`` move by 2× with this virtual machine's hour (its system calls and page
writes change speed); the number of instructions a miss executes does not. This runs a short request loop
under ``valgrind --tool=callgrind`` several times with different counts and divides the differences, so the
start-up (imports, configuration, plugin loading) cancels out:

* a **miss** on the shipped offline configuration, the mock provider replaced by one that hands back a
  ready 64×64 PNG (unique per request, so each miss writes a new blob as a real one does): everything
  genroute does around the provider (validation, key, store lookup, offers, ledger reserve and settle,
  store write), and nothing of the mock's image drawing;
* a **hit** of the same requests.

Instructions run in the kernel (system calls, page writes) are not counted: callgrind sees user space only.
Needs valgrind (Debian package ``valgrind``); without it, the figures are skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from genroute import Router
from genroute.types import OutputFile, ProviderOutput, Usage
from run import Figure, make_router, request  # bench/run.py

WARM = 50
SMALL, LARGE = 50, 250
_COLLECTED = re.compile(r"Collected\s*:\s*([\d,]+)")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ready_png(base: bytes, tag: str) -> bytes:
    """``base`` (a PNG) with a text chunk naming ``tag`` before its end: a distinct, valid PNG per request."""
    end = base.rindex(b"IEND") - 4  # the IEND chunk starts with its 4-byte length
    return base[:end] + _png_chunk(b"tEXt", b"genroute\x00" + tag.encode()) + base[end:]


def use_ready_provider(router: Router) -> None:
    """Replace the mock's ``run`` by one returning a ready PNG, so its image drawing is not counted."""
    from genroute_mock import media

    base = media.png_image(64, 64, seed=1, label="ready")
    provider = router.providers["mock"]

    async def ready(model: Any, offer: Any, ctx: Any) -> ProviderOutput:
        data = ready_png(base, ctx.request_key)
        return ProviderOutput(files=[OutputFile(data=data, media_type="image/png")], usage=Usage(outputs=1))

    provider.run = ready  # type: ignore[method-assign]


async def _loop(router: Router, misses: int, hits: int) -> None:
    for i in range(WARM):
        await router.arun(request("warm", i))
    for i in range(misses):
        result = await router.arun(request("count", i))
        assert not result.cached
    for i in range(hits):
        result = await router.arun(request("count", i))
        assert result.cached


def child(misses: int, hits: int, home: Path) -> None:
    with make_router(home) as router:
        use_ready_provider(router)
        asyncio.run(_loop(router, misses, hits))


def _count(misses: int, hits: int, scratch: Path) -> int:
    """Instructions of one whole run of ``misses`` then ``hits`` requests (after the warm-up)."""
    with tempfile.TemporaryDirectory(prefix="instructions-", dir=scratch) as home:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            str(misses),
            str(hits),
            home,
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same counts run after run
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def figures(scratch: Path | None = None) -> list[Figure]:
    """Instructions per miss and per hit; one note row instead when valgrind is missing."""
    if shutil.which("valgrind") is None:
        return [Figure("instructions per miss / hit: skipped, valgrind is not installed", 0, "")]
    scratch = scratch or Path.cwd() / ".genroute"
    scratch.mkdir(parents=True, exist_ok=True)
    runs = [(SMALL, 0), (LARGE, 0), (LARGE, LARGE - SMALL)]
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        small, large, with_hits = pool.map(lambda run: _count(*run, scratch), runs)
    step = LARGE - SMALL
    return [
        Figure("genroute's instructions per cache miss (callgrind; provider hands back a ready PNG)",
               (large - small) / step / 1e6, "M"),
        Figure("genroute's instructions per cache hit (callgrind)", (with_hits - large) / step / 1e6, "M"),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("MISSES", "HITS", "HOME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), Path(args.child[2]))
        return 0
    for figure in figures():
        print(" | ".join(figure.row()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
