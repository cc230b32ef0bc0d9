"""Provider options from plugins.toml are checked by the provider's own model, naming the key."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from genroute.config import ProviderSettings
from genroute.errors import ConfigError
from genroute.provider import Provider, catalogue_tasks
from genroute_huggingface.provider import HuggingFaceProvider
from genroute_mock import MockOptions, MockProvider
from genroute_replicate.provider import ReplicateProvider


class _Bare(Provider):
    name = "bare"

    async def run(self, request, offer, ctx):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str = "eu"


class _WithOptions(_Bare):
    name = "opts"
    options_model = _Opts


def test_mock_options_are_validated_with_the_key_path() -> None:
    provider = MockProvider()
    checked = provider.check_options(ProviderSettings(options={"latency_seconds": 0.2}))
    assert isinstance(checked, MockOptions) and checked.latency_seconds == 0.2
    with pytest.raises(ConfigError) as info:
        provider.check_options(ProviderSettings(options={"failure_rate": 2}), "my.toml")
    assert "my.toml" in str(info.value) and "providers.mock.options.failure_rate" in str(info.value)
    with pytest.raises(ConfigError, match=r"providers\.mock\.options\.latency"):
        provider.check_options(ProviderSettings(options={"latency": 1}))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"failure_rate": "0.5"}, 'providers.mock.options.failure_rate: must be a number, not the string "0.5"'),
        ({"video_side": True}, "providers.mock.options.video_side: must be a whole number, not true"),
        ({"seed": "7"}, 'providers.mock.options.seed: must be a whole number, not the string "7"'),
        ({"video_side": 32}, "providers.mock.options.video_side: Input should be greater than or equal to 64"),
    ],
)
def test_mock_options_refuse_quoted_numbers_and_booleans(options: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        MockProvider().check_options(ProviderSettings(options=options))
    assert expected in str(info.value)


def test_built_in_options_refuse_coerced_booleans_and_numbers() -> None:
    with pytest.raises(ConfigError, match=r'allow_paid: must be true or false, not the string "yes"'):
        HuggingFaceProvider().check_options(ProviderSettings(options={"allow_paid": "yes"}))
    with pytest.raises(ConfigError, match=r"wait_seconds: must be a whole number, not true"):
        ReplicateProvider().check_options(ProviderSettings(options={"wait_seconds": True}))


@pytest.mark.parametrize(
    ("credit", "expected"),
    [
        ("1e400", "monthly_free_credit_usd: Input should be less than or equal to 1000000000000"),
        ("0.0000001", "monthly_free_credit_usd: Decimal input should have no more than 6 decimal places"),
        ("-1", "monthly_free_credit_usd: Input should be greater than or equal to 0"),
    ],
)
def test_the_free_credit_option_is_an_amount_the_ledger_can_hold(credit: str, expected: str) -> None:
    # a huge or sub-micro-dollar credit becomes the free scope's budget limit: refused here, naming the key
    with pytest.raises(ConfigError) as info:
        HuggingFaceProvider().check_options(ProviderSettings(options={"monthly_free_credit_usd": credit}))
    assert f"providers.huggingface.options.{expected}" in str(info.value)


def test_option_errors_read_like_the_rest_of_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        MockProvider().check_options(ProviderSettings(options={"latncy_seconds": 1}), "my.toml")
    assert str(info.value) == (
        "my.toml: providers.mock.options.latncy_seconds: unknown key (check the spelling against "
        "docs/configuration.md) — remove or rename the key"
    )
    assert info.value.file == "my.toml" and info.value.key == "providers.mock.options.latncy_seconds"
    with pytest.raises(ConfigError, match=r"options\.seed: must be a whole number.* \(and 1 more problem\(s\)\)"):
        MockProvider().check_options(ProviderSettings(options={"latncy_seconds": 1, "seed": "x"}), "my.toml")


def test_a_provider_without_options_refuses_any() -> None:
    assert _Bare().check_options(ProviderSettings()) is None
    with pytest.raises(ConfigError, match=r"providers\.bare\.options"):
        _Bare().check_options(ProviderSettings(options={"x": 1}))


def test_custom_options_model_defaults_apply() -> None:
    checked = _WithOptions().check_options(ProviderSettings())
    assert isinstance(checked, _Opts) and checked.region == "eu"


def test_catalogue_rows_come_in_task_then_tier_order() -> None:
    section = ProviderSettings.model_validate(
        {
            "models": {
                "text-generation": {"quality": {"model": "q", "unit": "request", "price": "1"}},
                "text-to-image": {
                    "quality": {"model": "c", "unit": "output", "price": "1"},
                    "fast": {"model": "a", "unit": "output", "price": "1"},
                },
            }
        }
    )
    assert catalogue_tasks(section) == [
        ("text-to-image", "fast", "a"),
        ("text-to-image", "quality", "c"),
        ("text-generation", "quality", "q"),
    ]
