"""Each thread's event loop for the router's sync facade, so one router can be shared by threads.

``Router.run`` (and ``batch``, ``stream``, ``plan``…) runs its coroutine on an event loop of the calling thread,
made on that thread's first call. :class:`ThreadLoops` keeps them all: it closes the loops of threads that have
ended when a new thread arrives, and every loop at :meth:`ThreadLoops.close_all` — only while none is running,
because a running loop cannot be closed from another thread.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import GenrouteError
from .secrets import redact

log = logging.getLogger("genroute.router")

T = TypeVar("T")

ENDED_THREADS_PER_COLLECT = 8
"""Loops of ended threads closed between two garbage collections run to free their threads' database files."""


class ThreadLoop:
    """One thread's event loop: an :class:`asyncio.Runner`, and a lock held while it runs.

    The lock lets :meth:`ThreadLoops.close_all` (from any thread) tell a loop in use — a call under way on its
    thread — from an idle one, which it may close; an idle loop's runner can be run and closed from any thread.
    """

    __slots__ = ("closed", "lock", "runner", "thread")

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.lock = threading.Lock()
        self.thread = threading.current_thread()
        self.closed = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to its end on this loop (in the calling thread)."""
        with self.lock:
            if self.closed:
                coro.close()
                raise GenrouteError(
                    "this router was closed (Router.close): this call (or a stream's next piece) cannot run",
                    hint="close the router only once every thread's calls have returned, or make a new Router",
                )
            return self.runner.run(coro)


class ThreadLoops:
    """Every thread's :class:`ThreadLoop` for one router.

    ``close_clients`` is run on a loop just before it is closed: the router's and providers' HTTP clients of
    that loop (a client belongs to the loop it was made on).
    """

    def __init__(self, close_clients: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._close_clients = close_clients
        self._local = threading.local()  # .loop: this thread's ThreadLoop
        self._loops: list[ThreadLoop] = []
        self._lock = threading.Lock()
        self._ended_since_collect = 0  # loops of ended threads closed since the last garbage collection

    def __len__(self) -> int:
        return len(self._loops)

    def mine(self) -> ThreadLoop:
        """The calling thread's loop, made on its first call. Refused inside a running event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise GenrouteError(
                "the sync API was called inside a running event loop", hint="await router.arun(...) instead"
            )
        loop: ThreadLoop | None = getattr(self._local, "loop", None)
        if loop is None or loop.closed:
            loop = self._new()
        return loop

    def _new(self) -> ThreadLoop:
        """A loop for the calling thread; the loops of threads that have ended are closed now (none runs)."""
        with self._lock:
            ended = [loop for loop in self._loops if not loop.thread.is_alive()]
            mine = ThreadLoop()
            self._loops = [loop for loop in self._loops if loop.thread.is_alive()] + [mine]
        self._local.loop = mine
        for loop in ended:
            try:
                with loop.lock:
                    self._close(loop)
            except Exception:  # closing what an ended thread left must not fail this thread's call
                log.debug("closing an ended thread's event loop failed: %s", redact(traceback.format_exc()))
        self._ended_since_collect += len(ended)
        if self._ended_since_collect >= ENDED_THREADS_PER_COLLECT:
            # An ended thread's ledger and store connections (diskcache keeps one per thread) are left unclosed,
            # and Python 3.11 frees an SQLite connection only in a cyclic garbage collection: without one now and
            # then, a server making a thread pool per batch would pile up open database files until it runs out.
            self._ended_since_collect = 0
            gc.collect()
        return mine

    def close_all(self) -> None:
        """Close every thread's loop, or raise :class:`GenrouteError` and close none while one is running."""
        with self._lock:
            held: list[ThreadLoop] = []
            for loop in self._loops:
                if not loop.lock.acquire(blocking=False):
                    for taken in held:
                        taken.lock.release()
                    if loop.thread is threading.current_thread():
                        raise GenrouteError(
                            "Router.close() was called inside a running call on this thread",
                            hint="await router.aclose() from async code, or close the router after the call returns",
                        )
                    raise GenrouteError(
                        f"Router.close() was called while thread {loop.thread.name!r} is still running a call on "
                        "this router; nothing was closed",
                        hint="close the router once every thread's calls have returned (join the threads first)",
                    )
                held.append(loop)
            self._loops = []
        try:
            for loop in held:
                self._close(loop)
        finally:
            for loop in held:
                loop.lock.release()

    def _close(self, loop: ThreadLoop) -> None:
        """Close one loop (its lock held, so not running): its clients, then the loop itself."""
        try:
            if not loop.closed:
                loop.runner.run(self._close_clients())
        finally:
            loop.closed = True
            loop.runner.close()
