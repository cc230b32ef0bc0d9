"""genroute plugin entry point for Replicate (``[project.entry-points.genroute] replicate = ...``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from genroute import hookimpl
from genroute.config import Settings
from genroute.provider import Provider, catalogue_offers
from genroute.types import Offer, RequestModel

from . import commands
from .provider import ReplicateProvider


@hookimpl
def genroute_register_providers(register: Callable[[Provider], None]) -> None:
    register(ReplicateProvider())


@hookimpl
def genroute_offers(request: RequestModel, settings: Settings) -> list[Offer]:
    # Offers are made even without a token: the router passes them over with the provider's
    # unavailable_reason ("REPLICATE_API_TOKEN is not set"), so `plan` and errors say why.
    return catalogue_offers(ReplicateProvider.name, request, settings)


@hookimpl
def genroute_register_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    commands.register(subparsers, common)


class ReplicatePlugin:
    """The same plugin around a given provider object (say, one with a test transport), for
    ``make_plugin_manager(entry_points=False, plugins=[ReplicatePlugin(provider)])``."""

    def __init__(self, provider: ReplicateProvider | None = None) -> None:
        self.provider = provider or ReplicateProvider()

    @hookimpl
    def genroute_register_providers(self, register: Callable[[Provider], None]) -> None:
        register(self.provider)

    @hookimpl
    def genroute_offers(self, request: RequestModel, settings: Settings) -> list[Offer]:
        return catalogue_offers(ReplicateProvider.name, request, settings)
