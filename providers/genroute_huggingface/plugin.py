"""genroute plugin entry point for Hugging Face (``[project.entry-points.genroute] huggingface = ...``)."""

from __future__ import annotations

from collections.abc import Callable

from genroute import hookimpl
from genroute.config import BudgetLimit, Settings
from genroute.provider import Provider
from genroute.types import Offer, RequestModel

from .offers import credit_limits, make_offers
from .provider import HuggingFaceProvider


@hookimpl
def genroute_register_providers(register: Callable[[Provider], None]) -> None:
    register(HuggingFaceProvider())


@hookimpl
def genroute_offers(request: RequestModel, settings: Settings) -> list[Offer]:
    return make_offers(request, settings)


@hookimpl
def genroute_budget_limits(settings: Settings) -> list[BudgetLimit]:
    return credit_limits(settings)
