"""The pluggy hook specifications of project ``genroute``.

A provider plugin implements :func:`genroute_register_providers` (hand over the provider objects that
run requests) and :func:`genroute_offers` (say what each can do for one request, at what price).
Policy plugins may implement :func:`genroute_choose`; observers the ``*_started``/``*_finished`` and
budget-warning hooks. A plugin may bring default budget limits (:func:`genroute_budget_limits`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .config import BudgetLimit, Settings
    from .provider import Provider
    from .types import Offer, RequestModel, Result

PROJECT = "genroute"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def genroute_register_providers(register: Callable[[Provider], None]) -> None:
    """Call ``register(provider)`` once for each provider this plugin brings."""


@hookspec
def genroute_offers(request: RequestModel, settings: Settings) -> list[Offer] | None:
    """Return the offers this plugin's providers make for ``request`` (every tier they serve).

    Return an empty list (or None) when the plugin cannot serve the task. The router filters by
    profile, tier, pins, cooldown and budget, and records why each offer was passed over.
    """


@hookspec(firstresult=True)
def genroute_choose(request: RequestModel, offers: list[Offer]) -> list[Offer] | None:
    """Reorder (or shorten) the usable offers, cheapest first by default. First non-None answer wins."""


@hookspec
def genroute_request_started(request: RequestModel, key: str) -> None:
    """Observer: a request entered the router."""


@hookspec
def genroute_request_finished(
    request: RequestModel, key: str, result: Result | None, error: BaseException | None
) -> None:
    """Observer: a request left the router, with its result or its error."""


@hookspec
def genroute_register_commands(subparsers: Any, common: Any) -> None:
    """Add ``genroute`` sub-commands: ``subparsers.add_parser(name, parents=[common], ...)`` then
    ``set_defaults(handler=fn)`` with ``fn(args, out, err) -> int`` (rich consoles for stdout and stderr);
    :func:`genroute.cli.router_from_args` gives the Router the command's options ask for.
    """


@hookspec
def genroute_budget_limits(settings: Settings) -> list[BudgetLimit] | None:
    """Budget limits a plugin brings by default, say a free tier's monthly credit on ``free:<provider>``.

    A limit configured in ``plugins.toml`` (``[budget].limits`` or the active profile's) for the same scope
    and period replaces the plugin's. Collected once, when a Router starts.
    """


@hookspec
def genroute_budget_warning(warning: Any) -> None:
    """Observer: a budget scope crossed its warning share (a ``genroute.ledger.BudgetWarning``)."""
