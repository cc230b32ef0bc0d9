"""HTTP/1.1 serving with persistent connections for the fakes, on Werkzeug's threaded development server.

Werkzeug's server answers every request with ``Connection: close``: it cannot tell where an unread request
body ends, so it never reuses a connection. Replicate and Hugging Face keep connections alive, and clients
(httpx under both SDKs) reuse them. A fake that closes each one makes every call pay a TCP connect and the
server a new handler thread, which hides the client's real cost and inflates the benchmarks. This handler
reads each request body through a length-limited stream and drains what the application left unread, so the
next request on the connection starts where it should; the connection stays open unless the client asked
to close it, the body was chunked, or the response could not be completed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable
from typing import Any

from werkzeug.exceptions import InternalServerError
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler
from werkzeug.wsgi import LimitedStream

IDLE_SECONDS = 30.0  # an idle kept-alive connection is closed after this long, as servers do


class KeepAliveHandler(WSGIRequestHandler):
    """A Werkzeug request handler that keeps HTTP/1.1 connections open between requests."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS
    # Headers and body leave in one write: on a kept-alive connection, a small second segment would wait
    # for the client's delayed ACK (Nagle), adding tens of milliseconds to every answer.
    wbufsize = 64 * 1024

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _tracked(self.server).opened(self.connection)

    def finish(self) -> None:
        _tracked(self.server).closed(self.connection)
        # A client that went away (as the fault tests make it) leaves buffered bytes nowhere to go: not an error
        # of the server's, so not one to print in the middle of the test run.
        try:
            super().finish()
        except OSError:
            with contextlib.suppress(OSError):
                self.rfile.close()

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            self.wfile.flush()  # http.server wrote "100 Continue" into the buffer; the client waits for it
        environ = self.make_environ()
        body: LimitedStream | None = None
        if environ.get("wsgi.input_terminated"):  # chunked request body: its end is not known here
            self.close_connection = True
        else:
            body = LimitedStream(self.rfile, _content_length(environ))
            environ["wsgi.input"] = body
            environ["wsgi.input_terminated"] = True
        self.environ = environ
        response = _Response(self, environ["REQUEST_METHOD"])
        try:
            try:
                response.send(self.server.app(environ, response.start))
            except (ConnectionError, TimeoutError):
                self.close_connection = True
                return
            except Exception as exc:
                self.close_connection = True
                self.server.log("error", f"Error on request: {exc!r}")
                if not response.headers_sent:
                    response.reset()
                    response.send(InternalServerError()(environ, response.start))
                return
            if body is not None:
                body.exhaust()  # the next request line starts after this request's body
        finally:
            with contextlib.suppress(OSError):
                self.wfile.flush()


class _Response:
    """One response written to the handler's socket: fixed length when known, else chunked."""

    def __init__(self, handler: KeepAliveHandler, method: str) -> None:
        self.handler = handler
        self.method = method
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.chunked = False

    def start(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and self.headers_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status, self.headers = status, headers
        return self.write

    def reset(self) -> None:
        self.status, self.headers = None, []

    def send(self, app_iter: Iterable[bytes]) -> None:
        try:
            for data in app_iter:
                self.write(data)
            if not self.headers_sent:
                self.write(b"")
            if self.chunked:
                self.handler.wfile.write(b"0\r\n\r\n")
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()

    def write(self, data: bytes) -> None:
        handler = self.handler
        if not self.headers_sent:
            self._send_headers()
        if data:
            if self.chunked:
                handler.wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
            else:
                handler.wfile.write(data)
        handler.wfile.flush()

    def _send_headers(self) -> None:
        assert self.status is not None, "write() before start_response"
        handler = self.handler
        code_text, _, message = self.status.partition(" ")
        code = int(code_text)
        handler.send_response(code, message)
        names = set()
        for name, value in self.headers:
            handler.send_header(name, value)  # a "Connection: close" from the application closes it too
            names.add(name.lower())
        bodiless = self.method == "HEAD" or 100 <= code < 200 or code in (204, 304)
        if "content-length" not in names and not bodiless:
            self.chunked = True
            handler.send_header("Transfer-Encoding", "chunked")
        if handler.close_connection and "connection" not in names:
            handler.send_header("Connection", "close")
        handler.end_headers()
        self.headers_sent = True


def _content_length(environ: dict[str, Any]) -> int:
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0


class _Connections:
    """The server's open connections, and how many it has accepted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live: set[socket.socket] = set()
        self.accepted = 0

    def opened(self, connection: socket.socket) -> None:
        with self._lock:
            self.live.add(connection)
            self.accepted += 1

    def closed(self, connection: socket.socket) -> None:
        with self._lock:
            self.live.discard(connection)


_REGISTRY_LOCK = threading.Lock()


def _tracked(server: BaseWSGIServer) -> _Connections:
    with _REGISTRY_LOCK:
        tracked: _Connections | None = getattr(server, "_genroute_connections", None)
        if tracked is None:
            tracked = _Connections()
            server._genroute_connections = tracked  # type: ignore[attr-defined]
        return tracked


def accepted_connections(server: BaseWSGIServer) -> int:
    """How many TCP connections the server has accepted so far."""
    return _tracked(server).accepted


def close_connections(server: BaseWSGIServer) -> None:
    """Shut down the server's open connections (idle kept-alive ones included), so ``stop()`` leaves none."""
    tracked = _tracked(server)
    with tracked._lock:
        live = list(tracked.live)
    for connection in live:
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
