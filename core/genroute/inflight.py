"""Requests being served now, so that the same request asked meanwhile waits for them instead of paying twice.

Within one router (a batch with repeated lines, two callers, identical streams, any thread's event loop) a
request key is *claimed* by the call serving it, and the others wait for the claim to end, then look in the
store. Across processes sharing a ledger and store, the ledger's shared reservations play that part
(:class:`~genroute.ledger.HeldElsewhere`): :func:`await_elsewhere` waits for another process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from .errors import DeadlineExceeded
from .ledger import HeldElsewhere, Ledger

log = logging.getLogger("genroute.router")


class Claim:
    """A request key being served now: the loop serving it, the calls waiting for it (on any loop) and, for a
    stream, the task that last read it (a stream moves only as its reader reads it)."""

    __slots__ = ("loop", "reader", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, reader: asyncio.Task[Any] | None) -> None:
        self.loop = loop
        self.reader = reader
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def waits_for_itself(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether waiting for this claim on ``loop`` could only end at the deadline: a stream on this loop whose
        reader is the waiting task itself, or a task that has finished (a sync stream's reader between pieces,
        on this very thread; an async stream left without being closed)."""
        reader = self.reader
        return reader is not None and self.loop is loop and (reader.done() or reader is asyncio.current_task())


class InFlight:
    """The request keys one router is serving now, on any thread's event loop."""

    def __init__(self) -> None:
        self._claims: dict[str, Claim] = {}
        self._lock = threading.Lock()  # makes "look, then claim or wait" one step across threads

    async def claim(self, key: str, deadline: float, late: str, *, stream: bool = False) -> Claim | None:
        """Make this call the one serving ``key``, once no other call serves it; :meth:`release` when done.

        The same request already running: wait for it (the caller then looks in the store). Past ``deadline``
        (the running loop's time), :class:`DeadlineExceeded` with the message ``late``. None, without waiting or
        claiming, when the call serving it is a stream that only this caller could move on (its reader is the
        caller's own task, or a finished one on this loop): this call then runs as if alone.
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                claim = self._claims.get(key)
                if claim is None:
                    claim = self._claims[key] = Claim(loop, asyncio.current_task() if stream else None)
                    return claim
                if claim.waits_for_itself(loop):
                    return None
                woken: asyncio.Future[None] = loop.create_future()
                claim.waiters.append((loop, woken))
            try:
                async with asyncio.timeout_at(deadline):
                    await woken
            except TimeoutError:
                raise DeadlineExceeded(f"{late} (waiting for the same request, already running)") from None

    def release(self, key: str) -> None:
        """``key`` is no longer being served: wake the calls waiting for it, on whichever loop each runs."""
        with self._lock:
            claim = self._claims.pop(key)
        if not claim.waiters:
            return
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # a stream finalized outside its loop
            here = None
        for loop, woken in claim.waiters:
            if loop is here:
                _wake(woken)
            else:
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits there any more
                    loop.call_soon_threadsafe(_wake, woken)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # a waiter that gave up (deadline, cancelled) is left alone
        woken.set_result(None)


async def await_elsewhere(ledger: Ledger, held: HeldElsewhere, deadline: float, deadline_seconds: float) -> None:
    """Wait while another process's reservation of the same request stays open and its process alive.

    Polls the ledger, from every 20 ms up to every 0.5 s; past ``deadline`` (the running loop's time),
    :class:`DeadlineExceeded` naming the other process.
    """
    log.info("%s; waiting for its result", held.message)
    loop = asyncio.get_running_loop()
    delay = 0.02
    while ledger.serving_elsewhere(held.reservation_id):
        if loop.time() >= deadline:
            raise DeadlineExceeded(
                f"request did not finish within {deadline_seconds:g}s (waiting for the same request, running "
                f"in another process: pid {held.pid}, on {held.provider})"
            )
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 1.5, 0.5)
