"""genroute plugin entry point for the mock provider (``[project.entry-points.genroute] mock = ...``)."""

from __future__ import annotations

from collections.abc import Callable

from genroute import hookimpl
from genroute.config import Settings
from genroute.provider import Provider, catalogue_offers
from genroute.types import Offer, RequestModel

from .provider import MockProvider


@hookimpl
def genroute_register_providers(register: Callable[[Provider], None]) -> None:
    register(MockProvider())


@hookimpl
def genroute_offers(request: RequestModel, settings: Settings) -> list[Offer]:
    return catalogue_offers(MockProvider.name, request, settings)
