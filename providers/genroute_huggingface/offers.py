"""Which offers Hugging Face makes: the catalogue's tiers for the tasks hf-inference serves, free and maybe paid.

- Free offers (``billing = "free"``) count into the ledger scope ``free:huggingface`` only, whose monthly budget
  limit is the free credit (``monthly_free_credit_usd``, brought by this plugin unless ``plugins.toml`` sets a
  limit on that scope and period); the router sorts them as $0 and refuses them once that scope has no headroom (or once
  the service answered 402 and the scope was marked used up).
- With ``allow_paid``, the same models are also offered as paid work (scope ``global``), which the router picks
  when the free offers are refused and nothing cheaper serves.
- No offers at all for tasks hf-inference cannot serve (video, upscale, inpaint, background removal), nor for a
  request it cannot carry out as asked (:func:`unserved`): its task API has no field for a text-to-speech voice or
  language, nor for a speech-to-text language, so such a request goes to a provider that takes them rather than
  have the field dropped. The router then says ``makes no offer for <task>``.
- Image-to-image takes no seed, so copies of one request are the same image: its offers make one output at most
  (``max_outputs = 1``), and the router passes them over for ``num_outputs`` > 1 saying so.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from genroute.config import BudgetLimit, Settings
from genroute.provider import catalogue_offers
from genroute.types import Offer, RequestModel

from .options import FREE_SCOPE, NAME, HuggingFaceOptions
from .tasks import SERVED_TASKS, one_output_only, unserved

log = logging.getLogger("genroute_huggingface")


def make_offers(request: RequestModel, settings: Settings) -> list[Offer]:
    if request.task_name not in SERVED_TASKS:
        return []
    why = unserved(request)
    if why is not None:
        log.info("Hugging Face makes no offer: %s", why)
        return []
    options = _options(settings)
    if options is None:
        return []
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
    if one_output_only(request):
        offers = [_one_output(offer) for offer in offers]
    return offers


def _one_output(offer: Offer) -> Offer:
    """``offer`` making one output at most (the router refuses it for more, saying so)."""
    if offer.entry is None or (offer.entry.max_outputs is not None and offer.entry.max_outputs <= 1):
        return offer
    return offer.model_copy(update={"entry": offer.entry.model_copy(update={"max_outputs": 1})})


def credit_limits(settings: Settings) -> list[BudgetLimit]:
    """The free credit as a monthly budget limit on ``free:huggingface``: the cap on free offers.

    Brought through ``genroute_budget_limits``, so a limit on that scope and period in ``plugins.toml``
    replaces it (say, to keep part of the credit for something else).
    """
    options = _options(settings)
    if options is None or options.monthly_free_credit_usd <= 0:
        return []  # no free offers: nothing to cap
    return [BudgetLimit(scope=FREE_SCOPE, period="monthly", usd=options.monthly_free_credit_usd)]


def _options(settings: Settings) -> HuggingFaceOptions | None:
    """The validated options, or None when they are bad (a Router refuses to start with bad options)."""
    try:
        return HuggingFaceOptions.model_validate(settings.provider(NAME).options)
    except ValidationError:
        return None
