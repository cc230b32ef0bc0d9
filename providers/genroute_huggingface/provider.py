"""The Hugging Face provider: hf-inference through the real ``AsyncInferenceClient``, paid from the free credit."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, NoReturn

from huggingface_hub import ChatCompletionInputStreamOptions, constants

from genroute import errors
from genroute.config import Settings
from genroute.provider import Provider, RunContext
from genroute.types import ModelEntry, Offer, ProviderOutput, RequestModel, TextGeneration, Usage

from . import tasks
from .client import (
    TOKEN_VARIABLE,
    ClientPool,
    ComputeMeter,
    close_client,
    metering,
    model_target,
    token_from_env,
)
from .failures import TOKEN_HINT, timed_out_after_sending, translate
from .loading import LoadingWaiter
from .options import NAME, HuggingFaceOptions


class HuggingFaceProvider(Provider):
    """Text-to-image, image-to-image, text-to-speech, speech-to-text and text generation (streamed) on hf-inference.

    Offers are made by :mod:`.offers`; this class carries them out. Every answer becomes bytes (PNG images,
    sniffed audio) or text; the compute time the service reports settles the cost.
    """

    name = NAME
    options_model = HuggingFaceOptions

    def __init__(self) -> None:
        self._clients = ClientPool()

    def unavailable_reason(self, settings: Settings) -> str | None:
        if token_from_env() is None:
            return f"{TOKEN_VARIABLE} is not set"
        if constants.is_offline_mode():
            return "HF_HUB_OFFLINE is set: huggingface_hub refuses every request, even to a local server"
        return None

    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        options = _options(ctx)
        if request.task_name not in tasks.SERVED_TASKS:
            raise errors.ProviderRejectedInput(f"Hugging Face does not serve {request.task_name}", provider=NAME)
        client = await self._clients.shared(options, _token())
        call = _call(client, offer, ctx, options)
        meter = ComputeMeter()
        with metering(meter):
            try:
                output = await tasks.run_task(call, request)
            except Exception as exc:
                _raise_translated(exc, offer, meter)
        usage = output.usage.model_copy(update={"compute_seconds": meter.total})
        return output.model_copy(update={"usage": usage})

    async def stream(self, request: RequestModel, offer: Offer, ctx: RunContext) -> AsyncIterator[str]:
        if not isinstance(request, TextGeneration):
            raise errors.ProviderRejectedInput("only text-generation streams", provider=NAME)
        options = _options(ctx)
        # A client of its own, referenced until the stream ends: a stream dies with its client.
        client = await self._clients.dedicated(options, _token())
        call = _call(client, offer, ctx, options)
        meter = ComputeMeter()
        try:
            with metering(meter):  # the answer's headers arrive inside this call
                try:
                    chunks: Any = await call(
                        lambda: client.chat_completion(
                            tasks.chat_messages(request),
                            stream=True,
                            stream_options=ChatCompletionInputStreamOptions(include_usage=True),
                            **tasks.chat_arguments(call, request),
                        )
                    )
                except Exception as exc:
                    _raise_translated(exc, offer, meter)
            pieces: list[str] = []
            size = 0
            finish: str | None = None
            tokens: int | None = None
            try:
                async for chunk in chunks:
                    counted = getattr(getattr(chunk, "usage", None), "completion_tokens", None)
                    if isinstance(counted, int):
                        tokens = counted
                    for choice in getattr(chunk, "choices", None) or []:
                        finish = choice.finish_reason or finish
                        piece = choice.delta.content if choice.delta is not None else None
                        if piece:
                            pieces.append(piece)
                            size += len(piece.encode())
                            tasks.check_text_size(call, size)
                            yield piece
            except Exception as exc:
                _raise_translated(exc, offer, meter)
            if finish is None:  # the client ends a stream cut short (no [DONE]) silently
                raise errors.ProviderError(
                    f"the answer stream from {offer.model} ended before the model finished (no finish_reason)",
                    provider=NAME,
                    retryable=True,
                    incurred=_incurred(offer, meter),
                )
            text = "".join(pieces)
            ctx.extra["output"] = ProviderOutput(
                text=text, usage=Usage(outputs=1, output_tokens=tokens, compute_seconds=meter.total)
            )
        finally:
            await close_client(client)

    async def aclose(self) -> None:
        await self._clients.aclose()


def _options(ctx: RunContext) -> HuggingFaceOptions:
    return ctx.options if isinstance(ctx.options, HuggingFaceOptions) else HuggingFaceOptions()


def _token() -> str:
    token = token_from_env()
    if token is None:
        raise errors.AuthenticationFailed(f"{TOKEN_VARIABLE} is not set", provider=NAME, hint=TOKEN_HINT)
    return token


def _call(client: Any, offer: Offer, ctx: RunContext, options: HuggingFaceOptions) -> tasks.Call:
    return tasks.Call(
        client=client,
        target=model_target(options, offer.model),
        model=offer.model,
        options=options,
        seed=int(hashlib.sha256(ctx.request_key.encode()).hexdigest()[:8], 16),  # same request, same seeds
        wait=LoadingWaiter(ctx, options, offer.model),
    )


def _incurred(offer: Offer, meter: ComputeMeter, *, in_flight: bool = False) -> Decimal | None:
    """What this run's calls may have cost: the answers already billed (an output that then proved broken is still
    billed), plus, with ``in_flight``, the call that was sent and never answered (a read timeout: the service may
    have run it and billed it) at its estimate, so that the ledger never under-records."""
    done = billed(offer.entry, meter) if meter.answers and offer.entry is not None else None
    if not in_flight:
        return done
    pending = _one_call(offer, answered=meter.answers)
    if pending is None:
        return done
    return (done or Decimal(0)) + pending


def _one_call(offer: Offer, *, answered: int) -> Decimal | None:
    """The catalogue price of one more call of ``offer`` (``answered`` calls already answered in this run)."""
    entry = offer.entry
    if entry is None:
        return offer.estimate
    match entry.unit:
        case "compute_second":
            assert entry.est_seconds is not None  # enforced by ModelEntry
            return entry.price * entry.est_seconds
        case "output":
            return entry.price
        case "request":
            return entry.price if not answered else Decimal(0)  # one price for the whole request
    return offer.estimate


def _may_be_billed(exc: BaseException, meter: ComputeMeter) -> bool:
    """A request sent and never answered: it timed out after it was sent, before any answer came back."""
    return bool(timed_out_after_sending(exc)) and meter.unanswered


def billed(entry: ModelEntry, meter: ComputeMeter) -> Decimal | None:
    """The catalogue price of the answers ``meter`` saw: measured compute time, else ``est_seconds`` each."""
    match entry.unit:
        case "compute_second":
            assert entry.est_seconds is not None  # enforced by ModelEntry
            seconds = Decimal(str(meter.total)) if meter.total is not None else entry.est_seconds * meter.answers
            return entry.price * seconds
        case "output":
            return entry.price * meter.answers
        case "request":
            return entry.price
    return None  # units measured on the output (media seconds, tokens): unknown for a failed call


def _raise_translated(exc: Exception, offer: Offer, meter: ComputeMeter) -> NoReturn:
    incurred = _incurred(offer, meter, in_flight=_may_be_billed(exc, meter))
    error = translate(exc, model=offer.model, incurred=incurred, billing=offer.billing)
    if error is None:
        raise exc
    if error is exc:
        raise error
    raise error from exc
