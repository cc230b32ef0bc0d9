"""Which offers Hugging Face makes: the catalogue's tiers for the tasks hf-inference serves, free and maybe paid.

- Free offers (``billing = "free"``) count into the ledger scope ``free:huggingface`` only, whose monthly budget
  limit is the free credit; the router sorts them as $0 and refuses them once that scope has no headroom (or once
  the service answered 402 and the scope was marked used up).
- With ``allow_paid``, the same models are also offered as paid work (scope ``global``), which the router picks
  when the free offers are refused and nothing cheaper serves.
- No offers at all for tasks hf-inference cannot serve (video, upscale, inpaint, background removal): the router
  then says ``makes no offer for <task>``.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from pydantic import ValidationError

from genroute.config import Settings
from genroute.provider import catalogue_offers
from genroute.types import Offer, RequestModel

from .options import FREE_SCOPE, NAME, HuggingFaceOptions
from .tasks import SERVED_TASKS

log = logging.getLogger("genroute_huggingface")

_warned: set[tuple[str, str, str]] = set()


def make_offers(request: RequestModel, settings: Settings) -> list[Offer]:
    if request.task_name not in SERVED_TASKS:
        return []
    try:
        options = HuggingFaceOptions.model_validate(settings.provider(NAME).options)
    except ValidationError:
        return []  # a Router refuses to start with bad options; nothing to offer meanwhile
    _check_credit_limit(options, settings)
    offers: list[Offer] = []
    if options.monthly_free_credit_usd > 0:
        offers += [
            offer.model_copy(update={"note": "free credit (scope free:huggingface)"})
            for offer in catalogue_offers(NAME, request, settings, billing_kind="free")
        ]
    if options.allow_paid:
        offers += [
            offer.model_copy(update={"note": "paid Hugging Face usage", "priority": offer.priority + 1})
            for offer in catalogue_offers(NAME, request, settings, billing_kind="paid")
        ]
    return offers


def monthly_credit_limit(settings: Settings) -> Decimal | None:
    """The tightest monthly budget limit on ``free:huggingface`` in force, or None."""
    limits = [lim.usd for lim in settings.limits() if lim.scope == FREE_SCOPE and lim.period == "monthly"]
    return min(limits) if limits else None


def _check_credit_limit(options: HuggingFaceOptions, settings: Settings) -> None:
    """Say once when the budget limit that caps the free credit is missing or disagrees with the option."""
    if options.monthly_free_credit_usd <= 0:
        return
    limit = monthly_credit_limit(settings)
    if limit == options.monthly_free_credit_usd:
        return
    key = (settings.source, str(limit), str(options.monthly_free_credit_usd))
    if key in _warned:
        return
    _warned.add(key)
    if limit is None:
        log.warning(
            "no monthly budget limit on %s: free Hugging Face offers are capped only by the service's 402; add "
            '{ scope = "%s", period = "monthly", usd = "%s" } to [budget].limits',
            FREE_SCOPE,
            FREE_SCOPE,
            options.monthly_free_credit_usd,
        )
    else:
        log.warning(
            "the monthly budget limit on %s is $%s but monthly_free_credit_usd says $%s; the budget limit is what "
            "caps free offers",
            FREE_SCOPE,
            limit,
            options.monthly_free_credit_usd,
        )
