"""Configuration: the shipped plugins.toml, profile/file/home selection, and errors that name file and key."""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genroute.config import ModelEntry, Settings, load_settings, settings_from_dict
from genroute.errors import ConfigError
from genroute.types import TASKS, TIERS

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "plugins.toml"
RAW: dict[str, Any] = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))


@pytest.fixture
def shipped() -> Settings:
    return load_settings(SHIPPED, env={})


def raw_copy() -> dict[str, Any]:
    return copy.deepcopy(RAW)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def shipped_with(path: Path, old: str, new: str) -> Path:
    """The shipped plugins.toml with ``old`` (which must be in it) replaced by ``new``, written to ``path``."""
    text = SHIPPED.read_text(encoding="utf-8")
    assert old in text, f"plugins.toml no longer contains {old!r}: update the test"
    return write_toml(path, text.replace(old, new, 1))


MINIMAL = """
default_profile = "a"
[profiles.a]
providers = ["mock"]
[profiles.b]
providers = ["mock"]
[providers.mock]
[ledger]
path = "rel/ledger"
[store]
path = "rel/store"
"""


def config_error(raw: dict[str, Any], **kwargs: Any) -> ConfigError:
    kwargs.setdefault("env", {})
    kwargs.setdefault("source", "conf.toml")
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw, **kwargs)
    return info.value


# -- the shipped file ------------------------------------------------------------------------------


def test_shipped_file_loads_with_offline_default(shipped: Settings) -> None:
    assert shipped.default_profile == "offline"
    assert shipped.profile == "offline"
    assert shipped.active.providers == ["mock"]
    assert shipped.source == str(SHIPPED)


@pytest.mark.parametrize(
    ("profile", "providers"),
    [("offline", ["mock"]), ("dev", ["huggingface", "mock"]), ("prod", ["replicate", "huggingface"])],
)
def test_shipped_profiles_list_promised_providers(shipped: Settings, profile: str, providers: list[str]) -> None:
    assert shipped.profiles[profile].providers == providers
    for name in providers:
        assert name in shipped.providers, f"profile {profile} names {name} but it has no section"


def test_shipped_mock_covers_every_task_and_tier(shipped: Settings) -> None:
    mock = shipped.providers["mock"]
    assert set(mock.models) == set(TASKS)
    for task in TASKS:
        assert set(mock.models[task]) == set(TIERS), task


def test_every_catalogue_entry_has_an_explicit_price(shipped: Settings) -> None:
    entries = 0
    for pname, provider in shipped.providers.items():
        for task, tiers in provider.models.items():
            for tier, entry in tiers.items():
                raw_entry = RAW["providers"][pname]["models"][task][tier]
                assert "price" in raw_entry, f"{pname}.{task}.{tier} has no price in the file"
                assert isinstance(entry.price, Decimal)
                assert entry.price == Decimal(raw_entry["price"])
                entries += 1
    assert entries >= 30


def test_model_entry_has_no_default_price() -> None:
    assert ModelEntry.model_fields["price"].is_required()
    raw = raw_copy()
    del raw["providers"]["replicate"]["models"]["text-to-image"]["fast"]["price"]
    err = config_error(raw)
    assert err.key == "providers.replicate.models.text-to-image.fast.price"
    assert "providers.replicate.models.text-to-image.fast.price" in str(err)


def test_shipped_limits_are_decimal(shipped: Settings) -> None:
    limits = shipped.limits()
    assert {(lim.scope, lim.period) for lim in limits} == {
        ("global", "daily"),
        ("global", "monthly"),
        ("simulated", "daily"),
    }  # the Hugging Face free credit is its plugin's (genroute_budget_limits), not the file's
    assert all(isinstance(lim.usd, Decimal) for lim in limits)
    assert [lim.usd for lim in limits] == [Decimal("5.00"), Decimal("50.00"), Decimal("5.00")]


def test_limits_are_whole_micro_dollars_and_read_as_such() -> None:
    raw = raw_copy()
    raw["budget"]["limits"][0]["usd"] = "0.0000015"  # would round to a limit the ledger cannot hold
    err = config_error(raw)
    assert err.key == "budget.limits.0.usd" and "6 decimal places" in str(err)
    raw["budget"]["limits"][0]["usd"] = "1E+2"
    (first, *_) = settings_from_dict(raw, env={}).limits()
    assert str(first.usd) == "100.000000"  # shown and exported like every other amount


HUGE_AMOUNTS = ["1e400", "1e22", "1000000000000.000001", "-0.01"]
MONEY_KEYS: list[tuple[str | int, ...]] = [
    ("budget", "limits", 2, "usd"),
    ("profiles", "offline", "limits"),  # a profile's own limit
    ("providers", "mock", "models", "speech-to-text", "balanced", "price"),
    ("providers", "replicate", "models", "text-to-image", "quality", "price"),
]


@pytest.mark.parametrize("amount", HUGE_AMOUNTS)
@pytest.mark.parametrize("path", MONEY_KEYS, ids=lambda p: ".".join(map(str, p)))
def test_an_amount_out_of_range_is_a_config_error_naming_the_key_and_the_range(
    path: tuple[str | int, ...], amount: str
) -> None:
    raw = raw_copy()
    if path[-1] == "limits":
        raw["profiles"]["offline"]["limits"] = [{"scope": "global", "period": "total", "usd": amount}]
        path = (*path, 0, "usd")
    else:
        _set(path, amount)(raw)
    err = config_error(raw)
    key = ".".join(str(part) for part in path)
    assert err.key == key and err.exit_code == 3
    if amount == "-0.01" and path[-1] == "price":
        return  # a negative price is refused by the catalogue entry itself (test_bad_value_names_the_key)
    assert str(err).startswith(f"conf.toml: {key}: must be from 0 to 1,000,000,000,000 dollars")
    assert err.hint == 'write an amount in that range, as a string such as "5.00"'


def test_a_huge_limit_in_the_file_is_reported_not_a_crash(tmp_path: Path) -> None:
    path = shipped_with(
        tmp_path / "plugins.toml",
        '{ scope = "simulated", period = "daily", usd = "5.00" }',
        '{ scope = "simulated", period = "daily", usd = "1e400" }',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value).startswith(f"{path}: budget.limits.2.usd: must be from 0 to 1,000,000,000,000 dollars")


def test_the_largest_amounts_in_range_are_accepted() -> None:
    raw = raw_copy()
    raw["budget"]["limits"][0]["usd"] = "1e12"
    raw["providers"]["mock"]["models"]["text-to-image"]["fast"]["price"] = "1000000000000"
    settings_ = settings_from_dict(raw, env={})
    assert settings_.limits()[0].usd == Decimal(10**12)
    assert settings_.providers["mock"].models["text-to-image"]["fast"].price == Decimal(10**12)


# -- profile selection -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["offline", "dev", "prod"])
def test_env_profile_selects(name: str) -> None:
    settings_ = load_settings(SHIPPED, env={"GENROUTE_PROFILE": name})
    assert settings_.profile == name
    assert settings_.active is settings_.profiles[name]


def test_profile_argument_wins_over_env() -> None:
    settings_ = load_settings(SHIPPED, profile="prod", env={"GENROUTE_PROFILE": "dev"})
    assert settings_.profile == "prod"
    assert settings_.active.providers == ["replicate", "huggingface"]


def test_profile_argument_without_env() -> None:
    assert load_settings(SHIPPED, profile="dev", env={}).profile == "dev"


def test_profile_limits_join_global_limits() -> None:
    raw = raw_copy()
    raw["profiles"]["dev"]["limits"] = [{"scope": "provider:huggingface", "period": "daily", "usd": "1.00"}]
    shipped = ["global", "global", "simulated"]
    s = settings_from_dict(raw, profile="dev", env={})
    assert [lim.scope for lim in s.limits()] == [*shipped, "provider:huggingface"]
    s = settings_from_dict(raw, profile="offline", env={})
    assert [lim.scope for lim in s.limits()] == shipped


@pytest.mark.parametrize("how", ["env", "argument", "default_profile"])
def test_unknown_profile_lists_known_ones(how: str) -> None:
    raw = raw_copy()
    kwargs: dict[str, Any] = {"env": {}}
    if how == "env":
        kwargs["env"] = {"GENROUTE_PROFILE": "staging"}
    elif how == "argument":
        kwargs["profile"] = "staging"
    else:
        raw["default_profile"] = "staging"
    err = config_error(raw, **kwargs)
    message = str(err)
    assert "staging" in message
    for known in ("offline", "dev", "prod"):
        assert known in message
    assert "conf.toml" in message


def test_profile_naming_provider_without_section_is_refused() -> None:
    raw = raw_copy()
    raw["profiles"]["dev"]["providers"] = ["huggingface", "fal"]
    err = config_error(raw)
    assert "fal" in str(err)
    assert "dev" in str(err)


def test_inactive_profile_with_unknown_provider_is_still_refused() -> None:
    raw = raw_copy()
    raw["profiles"]["prod"]["providers"] = ["nonesuch"]
    err = config_error(raw, profile="offline")
    assert "nonesuch" in str(err)


def test_profile_needs_a_provider() -> None:
    raw = raw_copy()
    raw["profiles"]["dev"]["providers"] = []
    err = config_error(raw)
    assert err.key == "profiles.dev.providers"


def test_profile_and_source_are_not_file_keys() -> None:
    for key in ("profile", "source"):
        raw = raw_copy()
        raw[key] = "prod"
        err = config_error(raw)
        assert err.key == key
        assert ("GENROUTE_PROFILE" in err.hint) == (key == "profile")  # the profile hint only for "profile"


# -- file and home selection -----------------------------------------------------------------------


def test_genroute_config_points_to_another_file(tmp_path: Path) -> None:
    other = write_toml(tmp_path / "other.toml", MINIMAL)
    s = load_settings(env={"GENROUTE_CONFIG": str(other)})
    assert s.source == str(other)
    assert set(s.profiles) == {"a", "b"}
    assert s.profile == "a"


def test_genroute_config_and_profile_together(tmp_path: Path) -> None:
    other = write_toml(tmp_path / "other.toml", MINIMAL)
    s = load_settings(env={"GENROUTE_CONFIG": str(other), "GENROUTE_PROFILE": "b"})
    assert s.profile == "b"


def test_path_argument_wins_over_genroute_config(tmp_path: Path) -> None:
    other = write_toml(tmp_path / "other.toml", MINIMAL)
    s = load_settings(SHIPPED, env={"GENROUTE_CONFIG": str(other)})
    assert s.source == str(SHIPPED)
    assert "offline" in s.profiles


def test_genroute_config_missing_file_is_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"GENROUTE_CONFIG": str(missing)})
    assert str(missing) in str(info.value)


def test_genroute_config_at_a_directory_says_so_and_names_the_file_to_point_at(tmp_path: Path) -> None:
    folder = tmp_path / "somedir"
    folder.mkdir()
    with pytest.raises(ConfigError) as info:
        load_settings(env={"GENROUTE_CONFIG": str(folder)})
    assert info.value.exit_code == 3
    assert info.value.message == f"GENROUTE_CONFIG points at {folder}, which is a directory"
    assert info.value.hint == f"point it at the plugins.toml file (such as {folder / 'plugins.toml'}), or unset it"
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        load_settings(env={"GENROUTE_CONFIG": str(fifo)})
    assert info.value.message == f"GENROUTE_CONFIG points at {fifo}, which is not a regular file"  # it exists


def test_a_directory_given_as_the_config_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path, env={})
    assert str(info.value) == (
        f"{tmp_path}: is a directory, not a configuration file — "
        f"give the path of the plugins.toml file (such as {tmp_path / 'plugins.toml'})"
    )


def test_missing_path_argument_is_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing, env={})
    assert str(missing) in str(info.value)


def test_genroute_home_rebases_relative_paths(tmp_path: Path) -> None:
    other = write_toml(tmp_path / "other.toml", MINIMAL)
    home = tmp_path / "home"
    s = load_settings(other, env={"GENROUTE_HOME": str(home)})
    assert s.store.path == home / "rel/store"
    assert s.ledger.path == home / "rel/ledger"


def test_genroute_home_rebases_shipped_defaults(tmp_path: Path) -> None:
    s = load_settings(SHIPPED, env={"GENROUTE_HOME": str(tmp_path)})
    assert s.store.path == tmp_path / ".genroute/store"
    assert s.ledger.path == tmp_path / ".genroute/ledger"


def test_genroute_home_leaves_absolute_paths(tmp_path: Path) -> None:
    absolute = tmp_path / "abs"
    text = MINIMAL.replace('"rel/store"', f'"{(absolute / "store").as_posix()}"')
    other = write_toml(tmp_path / "other.toml", text)
    s = load_settings(other, env={"GENROUTE_HOME": str(tmp_path / "home")})
    assert s.store.path == absolute / "store"
    assert s.ledger.path == tmp_path / "home" / "rel/ledger"


def test_without_home_relative_paths_are_under_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(SHIPPED, env={})
    assert s.store.path == tmp_path / ".genroute/store"
    assert s.store.path.is_absolute() and s.ledger.path.is_absolute()


def test_local_plugins_toml_is_found_without_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path / "plugins.toml", MINIMAL)
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert set(s.profiles) == {"a", "b"}


# -- errors name the file and the key --------------------------------------------------------------


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    bad = write_toml(tmp_path / "bad.toml", "default_profile = \n[profiles\n")
    with pytest.raises(ConfigError) as info:
        load_settings(bad, env={})
    assert str(bad) in str(info.value)
    assert info.value.file == str(bad)
    assert "TOML" in str(info.value)


def test_unknown_top_level_key_names_file_and_key(tmp_path: Path) -> None:
    bad = write_toml(tmp_path / "bad.toml", "colour = 'blue'\n" + MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_settings(bad, env={})
    assert info.value.key == "colour"
    assert str(bad) in str(info.value) and "colour" in str(info.value)
    assert "unknown key" in str(info.value)


def test_unknown_deep_key_names_dotted_path(tmp_path: Path) -> None:
    bad = shipped_with(
        tmp_path / "bad.toml",
        'fast     = { model = "mock/flux-schnell", unit = "output", price = "0.003" }',
        'fast     = { model = "mock/flux-schnell", unit = "output", prise = "0.003", price = "0.003" }',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(bad, env={})
    dotted = "providers.mock.models.text-to-image.fast.prise"
    assert info.value.key == dotted
    assert dotted in str(info.value)
    assert str(bad) in str(info.value)


Mutation = Callable[[dict[str, Any]], None]


def _set(path: tuple[str | int, ...], value: Any) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        node: Any = raw
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


BAD_VALUES: list[tuple[str, Mutation, str]] = [
    (
        "negative price",
        _set(("providers", "mock", "models", "text-to-image", "fast", "price"), "-0.01"),
        "providers.mock.models.text-to-image.fast.price",
    ),
    (
        "price not a number",
        _set(("providers", "mock", "models", "inpaint", "quality", "price"), "cheap"),
        "providers.mock.models.inpaint.quality.price",
    ),
    ("warn_share 2", _set(("budget", "warn_share"), 2), "budget.warn_share"),
    ("warn_share 0", _set(("budget", "warn_share"), 0), "budget.warn_share"),
    ("unknown period", _set(("budget", "limits", 0, "period"), "weekly"), "budget.limits.0.period"),
    ("bad scope", _set(("budget", "limits", 1, "scope"), "team:x"), "budget.limits.1.scope"),
    ("negative limit", _set(("budget", "limits", 0, "usd"), "-5"), "budget.limits.0.usd"),
    (
        "unknown unit",
        _set(("providers", "mock", "models", "upscale", "fast", "unit"), "pixel"),
        "providers.mock.models.upscale.fast.unit",
    ),
    ("unknown task", _set(("providers", "mock", "models", "text-to-imag"), {}), "providers.mock.models.text-to-imag"),
    (
        "unknown tier",
        _set(("providers", "mock", "models", "text-to-image", "ultra"), {"model": "m", "unit": "output", "price": "1"}),
        "providers.mock.models.text-to-image.ultra",
    ),
    ("priority not int", _set(("providers", "mock", "priority"), "first"), "providers.mock.priority"),
    ("billing kind", _set(("providers", "huggingface", "billing"), "gratis"), "providers.huggingface.billing"),
    ("max_attempts 0", _set(("routing", "max_attempts"), 0), "routing.max_attempts"),
    ("store too small", _set(("store", "max_bytes"), 10), "store.max_bytes"),
    ("ttl zero", _set(("ledger", "reservation_ttl_seconds"), 0), "ledger.reservation_ttl_seconds"),
]


@pytest.mark.parametrize(("label", "mutate", "key"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_names_the_key(label: str, mutate: Mutation, key: str) -> None:
    raw = raw_copy()
    mutate(raw)
    err = config_error(raw)
    assert err.key is not None and err.key.startswith(key), (label, err.key)
    assert key in str(err)
    assert "conf.toml" in str(err)
    assert err.exit_code == 3


# TOML has real numbers and booleans: a quoted number or a boolean where a number goes (or the other way
# round) is a mistake to report, not a value to coerce (``reservation_ttl_seconds = true`` would be 1 s).
COERCIONS: list[tuple[tuple[str | int, ...], Any, str]] = [
    (("providers", "mock", "enabled"), "yes", 'must be true or false, not the string "yes"'),
    (("providers", "mock", "enabled"), 1, "must be true or false, not 1"),
    (("store", "enabled"), "false", 'must be true or false, not the string "false"'),
    (("providers", "mock", "priority"), True, "must be a whole number, not true"),
    (("providers", "mock", "priority"), "5", 'must be a whole number, not the string "5"'),
    (("routing", "max_attempts"), True, "must be a whole number, not true"),
    (("routing", "max_attempts"), "3", 'must be a whole number, not the string "3"'),
    (("routing", "deadline_seconds"), "60", 'must be a number, not the string "60"'),
    (("routing", "cooldown_seconds"), False, "must be a number, not false"),
    (("ledger", "reservation_ttl_seconds"), True, "must be a number, not true"),
    (("budget", "warn_share"), "0.5", 'must be a number, not the string "0.5"'),
    (("store", "max_bytes"), "2147483648", "must be a whole number"),
    (("store", "scratch_max_bytes"), True, "must be a whole number, not true"),
    (("providers", "replicate", "models", "text-to-image", "quality", "max_outputs"), True, "must be a whole number"),
]


@pytest.mark.parametrize(("path", "value", "expected"), COERCIONS, ids=[f"{c[0][-1]}={c[1]!r}" for c in COERCIONS])
def test_numbers_and_booleans_are_not_coerced(path: tuple[str | int, ...], value: Any, expected: str) -> None:
    raw = raw_copy()
    _set(path, value)(raw)
    err = config_error(raw)
    assert err.key == ".".join(str(part) for part in path)
    assert expected in str(err) and "conf.toml" in str(err)


def test_whole_floats_and_ints_still_read_as_numbers() -> None:
    raw = raw_copy()
    raw["providers"]["mock"]["priority"] = 5.0  # a whole float is still a whole number
    raw["routing"]["deadline_seconds"] = 60  # an integer is a number
    raw["store"]["enabled"] = False
    settings = settings_from_dict(raw, env={})
    assert settings.providers["mock"].priority == 5 and isinstance(settings.providers["mock"].priority, int)
    assert settings.routing.deadline_seconds == 60.0
    assert settings.store.enabled is False


def _documented_config_errors() -> list[str]:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    block = text.split("## Errors", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    return [line.removeprefix("genroute: error: ") for line in block.splitlines()]


DOC_SOURCE = "/srv/app/plugins.toml"
DOC_MUTATIONS: dict[str, Mutation] = {
    "routing.max_atempts": _set(("routing", "max_atempts"), 3),
    "providers.mock.models.upscale.fast": lambda raw: raw["providers"]["mock"]["models"]["upscale"]["fast"].pop(
        "est_seconds"
    ),
    "providers.mock.models.upscale.fats": lambda raw: raw["providers"]["mock"]["models"]["upscale"].update(
        fats={"model": "m", "unit": "output", "price": "1"}
    ),
    "budget.limits.2.scope": _set(("budget", "limits", 2, "scope"), "team:x"),
    "budget.limits.3.scope": lambda raw: raw["budget"]["limits"].append(
        {"scope": "provider:mokc", "period": "daily", "usd": "0"}
    ),
    "store.path": _set(("store", "path"), ".genroute"),
    "routing.max_attempts": _set(("routing", "max_attempts"), "3"),
    "providers.mock.options.failure_rate": _set(("providers", "mock", "options", "failure_rate"), 2),
}


def test_documented_config_errors_are_what_genroute_prints(tmp_path: Path) -> None:
    from genroute_mock import MockProvider

    lines = _documented_config_errors()
    assert len(lines) == len(DOC_MUTATIONS) + 1
    for line in lines:
        raw = raw_copy()
        key = line.removeprefix(f"{DOC_SOURCE}: ").split(": ", 1)[0]
        if key.startswith("profile "):  # the file as a whole: no key
            err = config_error(raw, source=DOC_SOURCE, profile="staging")
        elif key.startswith("providers.mock.options."):  # checked by the plugin when a Router starts
            DOC_MUTATIONS[key](raw)
            settings = settings_from_dict(raw, source=DOC_SOURCE, env={"GENROUTE_HOME": str(tmp_path)})
            with pytest.raises(ConfigError) as info:
                MockProvider().check_options(settings.provider("mock"), DOC_SOURCE)
            err = info.value
        elif key == "store.path":  # paths are resolved against GENROUTE_HOME: the docs' /srv/app
            DOC_MUTATIONS[key](raw)
            err = config_error(raw, source=DOC_SOURCE, env={"GENROUTE_HOME": str(Path(DOC_SOURCE).parent)})
        else:
            DOC_MUTATIONS[key](raw)
            err = config_error(raw, source=DOC_SOURCE)
        assert str(err) == line


def test_the_documented_store_path_refusal_is_what_genroute_prints() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text.split("### Where the store may live", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    raw = raw_copy()
    DOC_MUTATIONS["store.path"](raw)
    err = config_error(raw, source=DOC_SOURCE, env={"GENROUTE_HOME": str(Path(DOC_SOURCE).parent)})
    assert section.splitlines() == [f"genroute: error: {err}"]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("providers", "mock", "models", "text-to-image", "ultra"), {}, "unknown key: expected 'fast', 'balanced' or"),
        (("providers", "mock", "models", "text-to-imag"), {}, "unknown key: expected 'text-to-image', "),
        (("budget",), 3, "must be a table ("),
        (("providers", "mock", "models", "upscale", "fast"), "m", "must be a table ("),
        (("store", "path"), 3, "must be a path, written as a string"),
        (("profiles", "offline", "providers"), "mock", "must be an array"),
        (("default_profile",), 3, "Input should be a valid string —"),  # once: not again as "profile"
    ],
)
def test_wrong_shapes_say_what_is_expected(path: tuple[str, ...], value: Any, expected: str) -> None:
    raw = raw_copy()
    _set(path, value)(raw)
    err = config_error(raw)
    assert err.key == ".".join(path)
    assert expected in str(err)
    assert "[key]" not in str(err) and "<class" not in str(err) and "BudgetSettings" not in str(err)


def test_compute_second_without_est_seconds_refused() -> None:
    raw = raw_copy()
    del raw["providers"]["mock"]["models"]["upscale"]["fast"]["est_seconds"]
    err = config_error(raw)
    assert err.key == "providers.mock.models.upscale.fast"
    assert "est_seconds" in str(err)


def test_compute_second_with_est_seconds_accepted() -> None:
    entry = ModelEntry(model="m", unit="compute_second", price=Decimal("0.001"), est_seconds=Decimal("2"))
    assert entry.est_seconds == Decimal("2")
    with pytest.raises(ValueError, match="est_seconds"):
        ModelEntry(model="m", unit="compute_second", price=Decimal("0.001"))


# -- secrets are refused -----------------------------------------------------------------------------

SECRET_PLACES: list[tuple[str | int, ...]] = [
    ("token",),
    ("api_key",),
    ("password",),
    ("secret",),
    ("providers", "replicate", "token"),
    ("providers", "replicate", "api_token"),
    ("providers", "huggingface", "hf_token"),
    ("providers", "mock", "apikey"),
    ("providers", "mock", "options", "api_key"),
    ("providers", "mock", "options", "client_secret"),
    ("providers", "mock", "options", "db_password"),
    ("providers", "mock", "options", "nested", "deeper", "Token"),
    ("budget", "API_KEY"),
    ("providers", "mock", "models", "text-to-image", "fast", "inputs", "api_token"),
]


def _put(raw: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = raw
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    node[path[-1]] = value


def _assert_secret_refusal(err: ConfigError, dotted: str) -> None:
    assert err.key == dotted
    assert "secret" in str(err).lower()
    assert "environment" in err.hint
    assert "REPLICATE_API_TOKEN" in err.hint or "HF_TOKEN" in err.hint
    assert "r8_supersecretvalue" not in str(err)


@pytest.mark.parametrize("path", SECRET_PLACES, ids=[".".join(map(str, p)) for p in SECRET_PLACES])
def test_secret_looking_keys_refused_with_env_hint(path: tuple[str | int, ...]) -> None:
    raw = raw_copy()
    _put(raw, path, "r8_supersecretvalue")
    _assert_secret_refusal(config_error(raw), ".".join(map(str, path)))


def test_secret_in_file_refused_through_load_settings(tmp_path: Path) -> None:
    bad = shipped_with(
        tmp_path / "secret.toml",
        "[providers.replicate]\n",
        '[providers.replicate]\napi_token = "r8_supersecretvalue"\n',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(bad, env={})
    _assert_secret_refusal(info.value, "providers.replicate.api_token")
    assert str(bad) in str(info.value)


def test_secret_inside_list_of_tables_is_refused() -> None:
    raw = raw_copy()
    raw["providers"]["mock"]["options"]["auth"] = [{"token": "r8_supersecretvalue"}]
    _assert_secret_refusal(config_error(raw), "providers.mock.options.auth.0.token")


@pytest.mark.parametrize("key", ["api-key", "hf-token", "client-secret"])
def test_hyphenated_secret_keys_are_refused(key: str) -> None:
    raw = raw_copy()
    raw["providers"]["mock"]["options"][key] = "r8_supersecretvalue"
    _assert_secret_refusal(config_error(raw), f"providers.mock.options.{key}")


@pytest.mark.parametrize("key", ["tokens_per_minute", "max_tokens", "token_budget", "secretary"])
def test_keys_merely_containing_secret_words_are_allowed(key: str) -> None:
    raw = raw_copy()
    raw["providers"]["mock"]["options"][key] = 5
    s = settings_from_dict(raw, env={})
    assert s.providers["mock"].options[key] == 5


# -- nothing but ConfigError escapes -----------------------------------------------------------------

_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.decimals()
    | st.text(max_size=12)
    | st.sampled_from(["offline", "mock", "global", "daily", "output", "compute_second", "-1", "nan", "inf"])
)
_values = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_top_keys = st.sampled_from(
    ["default_profile", "profiles", "providers", "budget", "ledger", "store", "routing"]
) | st.text(max_size=10)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        found.append((*prefix, key))
        found.extend(_paths(value, (*prefix, key)))
    return found


RAW_PATHS = _paths(RAW)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_top_keys, _values, max_size=5), st.sampled_from([None, "dev", "", "zzz"]))
def test_random_dicts_raise_only_config_error(raw: dict[str, Any], profile: str | None) -> None:
    try:
        result = settings_from_dict(raw, profile=profile, env={})
    except ConfigError as exc:
        assert exc.file == "<dict>"
    else:
        assert result.profile in result.profiles


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(RAW_PATHS), _values)
def test_shipped_config_with_one_value_replaced_raises_only_config_error(path: tuple[Any, ...], value: Any) -> None:
    raw = raw_copy()
    _set(path, value)(raw)
    try:
        settings_from_dict(raw, env={})
    except ConfigError as exc:
        assert exc.file == "<dict>"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_random_file_text_raises_only_config_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "plugins.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_settings(path, env={})
    except ConfigError as exc:
        assert str(path) in str(exc)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_an_infinite_or_nan_setting_is_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    path = shipped_with(tmp_path / "plugins.toml", "deadline_seconds = 600", f"deadline_seconds = {value}")

    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"GENROUTE_HOME": str(tmp_path)})

    assert "routing.deadline_seconds: must be a finite number" in str(info.value)


# -- where the store may live ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        (".genroute", "holds ledger.path"),  # with the default ledger.path ".genroute/ledger"
        (".", "holds ledger.path"),
        (".genroute/ledger", "is the same directory as ledger.path"),
        (".genroute/jobs", "is the same directory as jobs.path"),
        ("..", "holds ledger.path"),
    ],
)
def test_a_store_holding_the_ledger_or_the_jobs_is_refused(tmp_path: Path, store: str, expected: str) -> None:
    conf = shipped_with(tmp_path / "plugins.toml", 'path = ".genroute/store"', f'path = "{store}"')
    with pytest.raises(ConfigError) as info:
        load_settings(conf, env={"GENROUTE_HOME": str(tmp_path)})
    err = info.value
    assert (err.file, err.key) == (str(conf), "store.path")
    assert expected in err.message
    assert "budget ledger" in err.message or "job records" in err.message
    assert "directory of its own" in err.hint


def test_a_ledger_or_jobs_directory_inside_the_store_is_refused(tmp_path: Path) -> None:
    conf = shipped_with(tmp_path / "plugins.toml", 'path = ".genroute/ledger"', 'path = ".genroute/store/ledger"')
    with pytest.raises(ConfigError) as info:
        load_settings(conf, env={"GENROUTE_HOME": str(tmp_path)})
    assert info.value.key == "store.path" and "holds ledger.path" in info.value.message
    raw = raw_copy()
    raw["jobs"] = {"path": str(tmp_path / "s" / "jobs")}
    raw["store"]["path"] = str(tmp_path / "s")
    err = config_error(raw)
    assert err.key == "store.path" and "holds jobs.path" in err.message and "job records" in err.message


@pytest.mark.parametrize("key", ["store", "ledger", "jobs"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_is_refused_not_read_as_the_working_directory(key: str, value: str) -> None:
    raw = raw_copy()
    raw[key] = {**raw.get(key, {}), "path": value}
    err = config_error(raw)
    assert err.key == f"{key}.path"
    assert "must not be empty" in err.message


def _elsewhere(tmp_path: Path) -> str:
    """A [ledger] and a [jobs] section far from the store, so that only the store's own place is in question."""
    state = (tmp_path / "state").as_posix()
    return f'[ledger]\npath = "{state}/ledger"\n[jobs]\npath = "{state}/jobs"\n'


def test_the_working_directory_or_the_config_directory_as_the_store_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    conf = write_toml(
        project / "plugins.toml",
        MINIMAL.replace('[ledger]\npath = "rel/ledger"\n', _elsewhere(tmp_path)).replace('"rel/store"', '"."'),
    )
    monkeypatch.chdir(project)
    with pytest.raises(ConfigError) as info:  # the working directory, and the directory of plugins.toml
        load_settings(conf, env={})
    assert info.value.key == "store.path"
    assert "is the directory of the configuration file plugins.toml" in info.value.message
    assert "files that are not the store's" in info.value.message

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = write_toml(elsewhere / "genroute.toml", conf.read_text())
    with pytest.raises(ConfigError) as info:
        load_settings(other, env={})  # "." is still the working directory, which holds notes.txt
    assert "is the working directory" in info.value.message

    with pytest.raises(ConfigError) as info:  # and a store above it holds it
        load_settings(write_toml(elsewhere / "up.toml", conf.read_text().replace('path = "."', 'path = ".."')), env={})
    assert info.value.key == "store.path" and "holds" in info.value.message


def test_a_directory_left_to_the_store_alone_may_be_the_genroute_home(tmp_path: Path) -> None:
    home = tmp_path / "cache-home"
    (home / "data").mkdir(parents=True)  # what an earlier run of the store made: nothing else
    text = MINIMAL.replace('[ledger]\npath = "rel/ledger"\n', _elsewhere(tmp_path)).replace('"rel/store"', '"."')
    settings = load_settings(write_toml(tmp_path / "conf.toml", text), env={"GENROUTE_HOME": str(home)})
    assert settings.store.path == home / "."


def _store_at(tmp_path: Path, store: str, name: str = "conf.toml") -> Path:
    """MINIMAL with the ledger and jobs under tmp_path/state and ``[store] path = store``, written to tmp_path."""
    text = MINIMAL.replace('[ledger]\npath = "rel/ledger"\n', _elsewhere(tmp_path)).replace('"rel/store"', f'"{store}"')
    return write_toml(tmp_path / name, text)


def test_the_home_directory_as_the_store_is_refused_even_when_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)  # a fresh, empty home: still never the store's own
    monkeypatch.setenv("HOME", str(home))
    for store, words in (("~", f"{home} is your home directory"), ("~/", f"{home} is your home directory")):
        with pytest.raises(ConfigError) as info:
            load_settings(_store_at(tmp_path, store), env={"GENROUTE_HOME": str(tmp_path)})
        assert info.value.key == "store.path"
        assert words in info.value.message and "data/cache.db" in info.value.message
        assert "directory of its own" in info.value.hint
    with pytest.raises(ConfigError) as info:  # a store above it holds it
        load_settings(_store_at(tmp_path, (tmp_path / "home").as_posix()), env={"GENROUTE_HOME": str(tmp_path)})
    assert f"holds your home directory ({home})" in info.value.message
    assert list(home.iterdir()) == []  # refused before anything was made there
    settings = load_settings(_store_at(tmp_path, "~/.cache/genroute"), env={"GENROUTE_HOME": str(tmp_path)})
    assert settings.store.path == home / ".cache/genroute"  # a directory under it is fine


def test_the_root_of_the_file_system_as_the_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:  # only read: load_settings creates nothing
        load_settings(_store_at(tmp_path, "/"), env={"GENROUTE_HOME": str(tmp_path)})
    assert info.value.key == "store.path"
    assert "store.path: / is the root of the file system" in info.value.message


def test_any_directory_holding_other_files_is_refused_and_a_new_or_empty_one_is_fine(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat.jpg", "dog.jpg", "eel.jpg", "fox.jpg"):
        (photos / name).write_text("mine")
    with pytest.raises(ConfigError) as info:
        load_settings(_store_at(tmp_path, photos.as_posix()), env={"GENROUTE_HOME": str(tmp_path)})
    assert info.value.key == "store.path"
    assert (
        f"store.path: {photos} holds files that are not the store's ('cat.jpg', 'dog.jpg', 'eel.jpg' and 1 more)"
        in (info.value.message)
    )
    assert "a new or empty directory" in info.value.hint
    assert sorted(p.name for p in photos.iterdir()) == ["cat.jpg", "dog.jpg", "eel.jpg", "fox.jpg"]

    empty = tmp_path / "empty"
    empty.mkdir()
    for store in (empty, tmp_path / "new" / "store"):
        settings = load_settings(_store_at(tmp_path, store.as_posix()), env={"GENROUTE_HOME": str(tmp_path)})
        assert settings.store.path == store
    assert not (tmp_path / "new").exists()


# -- budget scopes name configured providers -------------------------------------------------------


def test_a_misspelt_provider_scope_is_refused_naming_the_key_and_the_scopes(tmp_path: Path) -> None:
    conf = shipped_with(
        tmp_path / "plugins.toml",
        '{ scope = "simulated", period = "daily", usd = "5.00" },',
        '{ scope = "simulated", period = "daily", usd = "5.00" },\n'
        '  { scope = "provider:mokc", period = "daily", usd = "0" },',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(conf, env={})
    err = info.value
    assert (err.file, err.key) == (str(conf), "budget.limits.3.scope")
    assert "'provider:mokc' names no configured provider" in err.message
    assert "'global', 'simulated'" in err.message and "huggingface, mock, replicate" in err.message
    assert "provider:mock" in err.hint  # the likely meaning


@pytest.mark.parametrize("scope", ["free:nonesuch", "provider:fal"])
def test_a_profile_limit_on_an_unconfigured_provider_is_refused(scope: str) -> None:
    raw = raw_copy()
    raw["profiles"]["prod"]["limits"] = [
        {"scope": "global", "period": "total", "usd": "9"},
        {"scope": scope, "usd": "1"},
    ]
    err = config_error(raw, profile="offline")  # an inactive profile too: it would fail when picked
    assert err.key == "profiles.prod.limits.1.scope"
    assert "names no configured provider" in err.message


def test_scopes_of_configured_providers_are_accepted() -> None:
    raw = raw_copy()
    raw["budget"]["limits"] += [
        {"scope": "provider:mock", "period": "daily", "usd": "0"},
        {"scope": "free:huggingface", "period": "monthly", "usd": "0.05"},
        {"scope": "provider:replicate", "period": "monthly", "usd": "20"},
    ]
    assert len(settings_from_dict(raw, env={}).limits()) == 6


@pytest.mark.parametrize("name", ["my provider", "a|b", "Mock", "mock.v2", ""])
def test_a_provider_name_that_cannot_be_a_budget_scope_is_refused_at_its_section(name: str) -> None:
    raw = raw_copy()
    raw["providers"][name] = {}
    err = config_error(raw)
    assert err.key == f"providers.{name}"
    assert "cannot name a provider" in err.message and "provider:<name>" in err.message
    assert "lowercase letters, digits" in err.message


def test_a_provider_listed_twice_in_a_profile_is_refused() -> None:
    raw = raw_copy()
    raw["profiles"]["dev"]["providers"] = ["huggingface", "mock", "huggingface"]
    err = config_error(raw)
    assert err.key == "profiles.dev.providers"
    assert "'huggingface' twice (items 0 and 2)" in err.message


def test_two_limits_on_one_scope_and_period_are_refused_naming_both() -> None:
    raw = raw_copy()
    raw["budget"]["limits"].append({"scope": "global", "period": "daily", "usd": "3.00"})
    err = config_error(raw)
    assert err.key == "budget.limits.3"
    assert "budget.limits.0" in err.message and "global" in err.message and "daily" in err.message

    raw = raw_copy()
    raw["profiles"]["dev"]["limits"] = [{"scope": "free:huggingface", "period": "monthly", "usd": "0.05"}] * 2
    err = config_error(raw)
    assert err.key == "profiles.dev.limits.1" and "profiles.dev.limits.0" in err.message


def test_a_profile_may_tighten_a_global_limit_for_the_same_scope_and_period() -> None:
    raw = raw_copy()
    raw["profiles"]["dev"]["limits"] = [{"scope": "global", "period": "daily", "usd": "1.00"}]
    settings = settings_from_dict(raw, profile="dev", env={})
    assert [(lim.scope, lim.period, lim.usd) for lim in settings.limits() if lim.period == "daily"][-1] == (
        "global",
        "daily",
        Decimal("1.000000"),
    )


def test_a_free_scope_of_a_provider_without_free_credit_is_accepted_and_documented_as_never_counting(
    tmp_path: Path,
) -> None:
    # Plugins decide each offer's kind of money when they offer, so the configuration cannot tell that the mock
    # never bills free credit: free:mock is not refused on a guess, and the docs say such a limit counts nothing.
    conf = shipped_with(
        tmp_path / "plugins.toml",
        '{ scope = "simulated", period = "daily", usd = "5.00" },',
        '{ scope = "simulated", period = "daily", usd = "5.00" },\n'
        '  { scope = "free:mock", period = "daily", usd = "0" },',
    )
    settings = load_settings(conf, env={"GENROUTE_HOME": str(tmp_path)})
    assert ("free:mock", "daily") in {(limit.scope, limit.period) for limit in settings.limits()}
    text = " ".join((REPO / "docs" / "configuration.md").read_text(encoding="utf-8").split())
    assert "**A `free:<name>` limit counts only free offers.**" in text
    assert "`free:mock`, whose spend is `simulated` — never counts anything" in text
    assert "To cap a provider's spend whatever its kind of money, limit `provider:<name>`." in text
