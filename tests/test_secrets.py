"""Token values from the environment never appear in what genroute writes."""

from __future__ import annotations

import pytest

from genroute.errors import ProviderError
from genroute.secrets import TOKEN_VARIABLES, redact

REPLICATE = "r8_AbCdEf0123456789xyz"
HF = "hf_ZyXwVu9876543210abc"


def test_token_variables_named() -> None:
    assert {"REPLICATE_API_TOKEN", "HF_TOKEN"} <= set(TOKEN_VARIABLES)


@pytest.mark.parametrize(
    ("name", "value"), [("REPLICATE_API_TOKEN", REPLICATE), ("HF_TOKEN", HF), ("HUGGING_FACE_HUB_TOKEN", HF)]
)
def test_masks_token_value(name: str, value: str) -> None:
    text = f"401 Unauthorized: Authorization: Bearer {value} (retry)"
    out = redact(text, env={name: value})
    assert value not in out
    assert "***" in out
    assert out == "401 Unauthorized: Authorization: Bearer *** (retry)"


def test_masks_every_occurrence_of_both_tokens() -> None:
    env = {"REPLICATE_API_TOKEN": REPLICATE, "HF_TOKEN": HF}
    text = f"{REPLICATE} and {HF}; again {REPLICATE}{HF}"
    out = redact(text, env=env)
    assert REPLICATE not in out and HF not in out
    assert out == "*** and ***; again ******"


def test_leaves_text_alone_when_unset() -> None:
    text = f"token {REPLICATE} in a message"
    assert redact(text, env={}) == text
    assert redact(text, env={"OTHER_TOKEN": REPLICATE}) == text


def test_empty_token_masks_nothing() -> None:
    text = "nothing to hide here"
    assert redact(text, env={"REPLICATE_API_TOKEN": "", "HF_TOKEN": ""}) == text


def test_text_without_token_unchanged() -> None:
    text = "ordinary message with r8_ prefix only"
    assert redact(text, env={"REPLICATE_API_TOKEN": REPLICATE, "HF_TOKEN": HF}) == text


def test_redacts_error_messages() -> None:
    err = ProviderError(f"bad header Bearer {HF}", provider="huggingface")
    out = redact(str(err), env={"HF_TOKEN": HF})
    assert HF not in out
    assert out.startswith("huggingface: bad header Bearer ***")


def test_overlapping_tokens_leave_nothing_behind() -> None:
    env = {"REPLICATE_API_TOKEN": "abcd1234", "HF_TOKEN": "hf_abcd1234_tail"}
    out = redact("value hf_abcd1234_tail end", env=env)
    assert "hf_" not in out and "_tail" not in out
    assert out == "value *** end"
