"""``[providers.replicate.options]``: how the Replicate provider talks to the API and what it accepts back."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from genroute.config import Settings
from genroute.types import Number, WholeNumber

DEFAULT_OUTPUT_HOSTS = ("replicate.delivery",)
TOKEN_VARIABLE = "REPLICATE_API_TOKEN"


class ReplicateOptions(BaseModel):
    """Validated when a Router starts; a bad value raises ConfigError naming the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = Field(
        default=None, description="API root; None is the real https://api.replicate.com (tests point it at a fake)"
    )
    wait_seconds: WholeNumber = Field(
        default=60, ge=1, le=60, description="Prefer: wait=N on creates (Replicate allows 1-60)"
    )
    poll_initial_seconds: Number = Field(default=0.5, gt=0, le=60, description="first wait between polls")
    poll_max_seconds: Number = Field(default=5.0, gt=0, le=300, description="longest wait between polls")
    poll_backoff: Number = Field(default=1.5, ge=1, le=4, description="factor applied to the poll wait each time")
    poll_error_limit: WholeNumber = Field(
        default=5, ge=1, le=100, description="consecutive failed polls before giving up"
    )
    connect_timeout_seconds: Number = Field(default=10.0, gt=0, le=120)
    read_timeout_seconds: Number = Field(default=30.0, gt=0, le=600, description="reads other than a held create")
    create_timeout_seconds: Number = Field(
        default=30.0,
        gt=0,
        le=600,
        description="how long a create's answer may take beyond its wait (its read timeout is wait + this), "
        "and the limit for uploads (the client sets none)",
    )
    max_output_bytes: WholeNumber = Field(
        default=200 * 1024**2, ge=1024, description="largest single downloaded output"
    )
    allowed_output_hosts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OUTPUT_HOSTS),
        description="output URLs must be https on one of these hosts or their subdomains (plus base_url's host)",
    )
    inline_media_max_bytes: WholeNumber = Field(
        default=256 * 1024, ge=0, description="media inputs up to this size go as data: URIs; larger ones are uploaded"
    )
    schema_cache_dir: Path | None = Field(default=None, description="default: <state_dir>/schemas")
    schema_cache_ttl_seconds: Number = Field(default=24 * 3600, ge=0, description="refetch a model's schema after this")
    state_dir: Path | None = Field(default=None, description="default: 'replicate' beside the result store")
    credit_cooldown_seconds: Number = Field(
        default=600, ge=0, description="after HTTP 402 (out of credit) make no offers for this long"
    )
    reconcile_window_seconds: Number = Field(
        default=600, gt=0, description="how far back an ambiguous create is looked for among recent predictions"
    )
    reconcile_attempts: WholeNumber = Field(
        default=3,
        ge=1,
        le=20,
        description="listings tried after an ambiguous create (a 500/503 too), until one finds it",
    )
    reconcile_interval_seconds: Number = Field(default=0.5, ge=0, le=30)
    reconcile_settle_seconds: Number = Field(
        default=30, ge=0, description="after this long unseen, an ambiguous create is taken to have made nothing"
    )
    logs_tail_chars: WholeNumber = Field(
        default=2000, ge=0, le=100_000, description="prediction logs kept in a failure"
    )
    webhook_secret_env: str = Field(
        default="REPLICATE_WEBHOOK_SECRET",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the webhook signing secret (else fetched from the API)",
    )
    webhook_tolerance_seconds: WholeNumber = Field(
        default=300, ge=1, le=3600, description="oldest webhook timestamp accepted"
    )
    webhook_replay_keep_seconds: Number = Field(
        default=7 * 24 * 3600, gt=0, description="remember webhook ids this long"
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.replicate.com")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("allowed_output_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        cleaned = [h.strip().lower().lstrip(".") for h in hosts]
        for host in cleaned:
            if not host or "/" in host or ":" in host:
                raise ValueError(f"{host!r} is not a host name (no scheme, port or path)")
        return cleaned

    @model_validator(mode="after")
    def _poll_order(self) -> ReplicateOptions:
        if self.poll_max_seconds < self.poll_initial_seconds:
            raise ValueError("poll_max_seconds must be at least poll_initial_seconds")
        return self

    # -- derived -----------------------------------------------------------------------------------
    def api_host(self) -> tuple[str, str] | None:
        """(scheme, host) of base_url, when one is configured."""
        if self.base_url is None:
            return None
        parts = urlsplit(self.base_url)
        return parts.scheme, (parts.hostname or "").lower()

    def state_path(self, settings: Settings) -> Path:
        if self.state_dir is not None:
            base = self.state_dir.expanduser()
            return base if base.is_absolute() else settings.store.path.parent / base
        return settings.store.path.parent / "replicate"

    def schema_path(self, settings: Settings) -> Path:
        if self.schema_cache_dir is not None:
            base = self.schema_cache_dir.expanduser()
            return base if base.is_absolute() else settings.store.path.parent / base
        return self.state_path(settings) / "schemas"


def options_for(settings: Settings, validated: BaseModel | None = None) -> ReplicateOptions:
    """The validated options: the router's instance when given, else parsed from the settings."""
    if isinstance(validated, ReplicateOptions):
        return validated
    return ReplicateOptions.model_validate(settings.provider("replicate").options)
