"""``[providers.huggingface.options]``: where the service is, how much free credit a month, how long to wait."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from genroute.money import MAX_USD
from genroute.types import Flag, Number, WholeNumber

NAME = "huggingface"
"""The provider's name: its ``[providers.huggingface]`` section, profile entry and ``free:huggingface`` scope."""

FREE_SCOPE = f"free:{NAME}"


class HuggingFaceOptions(BaseModel):
    """Options of the Hugging Face provider (validated when a Router starts).

    The token is never an option: it comes from the ``HF_TOKEN`` environment variable only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = Field(
        default=None,
        description="root of an hf-inference compatible server (models at <base_url>/models/<id>), e.g. "
        "https://router.huggingface.co/hf-inference or a local fake; None: the real service through "
        "huggingface_hub's own routing (provider hf-inference)",
    )
    monthly_free_credit_usd: Decimal = Field(
        default=Decimal("0.10"),
        ge=0,
        le=MAX_USD,
        decimal_places=6,  # the ledger's unit, the micro-dollar
        description="the account's monthly included credit, the monthly budget limit on free:huggingface unless "
        "[budget].limits sets one; 0 makes no free offers",
    )
    allow_paid: Flag = Field(
        default=False,
        description="also offer paid Hugging Face work (scope global), chosen once the free credit is used up",
    )
    request_timeout_seconds: Number = Field(default=120.0, gt=0, description="one HTTP call to the service")
    max_output_bytes: WholeNumber = Field(default=32 * 1024**2, ge=1024, description="largest image or audio accepted")
    max_loading_wait_seconds: Number = Field(
        default=60.0,
        ge=0,
        description="longest one run waits for a model that is loading (503 with estimated_time) before "
        "the router tries elsewhere; never past the request's deadline",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (or left out for the real service)")
        return value
