"""``genroute webhooks serve``: the webhook receiver under uvicorn (added through genroute_register_commands)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
from typing import TYPE_CHECKING, Any

from rich.console import Console

from genroute.errors import ConfigError, GenrouteError

if TYPE_CHECKING:
    from genroute.router import Router

    from .options import ReplicateOptions
    from .provider import ReplicateProvider

NAME = "replicate"


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    hooks = subparsers.add_parser(
        "webhooks", parents=[common], help="receive Replicate webhooks that complete submitted jobs"
    )
    actions = hooks.add_subparsers(dest="webhooks_action", required=True, metavar="ACTION")
    serve = actions.add_parser(
        "serve",
        parents=[common],
        help="serve the receiver (secret from $REPLICATE_WEBHOOK_SECRET or the Replicate API)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8787, help="port to listen on, 1-65535 (default: 8787)")
    serve.add_argument(
        "--tolerance",
        type=_positive_seconds,
        default=None,
        help="oldest webhook timestamp accepted, in whole seconds > 0 (default: 300)",
    )
    serve.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(handler=cmd_serve)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def _port(text: str) -> int:
    """``--port``: a TCP port, 1-65535 (argparse names the option and exits 2 otherwise)."""
    port = _integer(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def _positive_seconds(text: str) -> int:
    """``--tolerance``: a positive whole number of seconds (0 would accept replays of any age)."""
    seconds = _integer(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{seconds} is not a positive number of seconds")
    return seconds


def cmd_serve(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Serve until Ctrl-C (then exit 130, as every command interrupted) or SIGTERM (143)."""
    from genroute.cli import router_from_args

    from .options import options_for
    from .provider import ReplicateProvider
    from .webhooks import create_app

    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - a dependency of genroute
        raise GenrouteError("uvicorn is not installed", hint="pip install uvicorn") from exc
    router = router_from_args(args)
    interrupted = False
    try:
        provider = router.providers.get(NAME)
        if not isinstance(provider, ReplicateProvider):
            raise GenrouteError("the replicate provider is not installed", hint="install genroute's Replicate plugin")
        options = options_for(router.settings, router.provider_options.get(NAME))
        tolerance = args.tolerance if args.tolerance is not None else options.webhook_tolerance_seconds
        if tolerance <= 0:  # from the configuration (the command line's --tolerance is checked by argparse)
            raise ConfigError("webhook_tolerance_seconds must be a positive number of seconds")
        listening = _listen(args.host, args.port)  # before anything is announced: a busy port fails here
        try:
            secret = asyncio.run(_signing_secret(provider, router, options))
            app = create_app(router, secret=secret, tolerance=tolerance, close_router_on_shutdown=True)
            announcement = (
                f"receiving Replicate webhooks on http://{args.host}:{args.port}/ "
                f"(profile {router.settings.profile}, timestamp tolerance {tolerance}s); Ctrl-C stops"
            )

            class AnnouncingServer(uvicorn.Server):
                async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                    await super().startup(sockets=sockets)
                    if self.started:  # the socket serves: only now say so
                        err.print(announcement, markup=False)

            config = uvicorn.Config(app, log_level=args.log_level, lifespan="on")
            server = AnnouncingServer(config)
            try:
                server.run(sockets=[listening])
            except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down, then re-raised it
                interrupted = True
            except SystemExit:  # uvicorn exits when the app's startup fails
                if server.started:
                    raise
        finally:
            listening.close()
        if not interrupted and not server.started:
            raise GenrouteError("the webhook receiver did not start", hint="run again with --log-level info to see why")
    finally:
        router.close()
    if interrupted:
        raise KeyboardInterrupt  # after the clean-up: genroute says "interrupted" and exits 130
    return 0


async def _signing_secret(provider: ReplicateProvider, router: Router, options: ReplicateOptions) -> str:
    """The webhook signing secret (environment, else the API), looked up before serving; says what failed."""
    try:
        return await provider.webhook_secret(router.settings, options)
    except GenrouteError as exc:
        why = exc.message.removeprefix(f"{NAME}: ")
        raise GenrouteError(f"the webhook receiver did not start: {why}", hint=exc.hint) from exc
    finally:
        await provider.aclose()  # this event loop's clients: the server runs on a loop of its own


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or an error saying why there cannot be one."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise GenrouteError(
                f"cannot receive webhooks on {host}:{port}: the port is in use",
                hint="choose another --port, or stop the program listening there",
            ) from None
        raise GenrouteError(
            f"cannot receive webhooks on {host}:{port}: {exc.strerror or exc}",
            hint="give --host an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)",
        ) from None
