"""``plugins.toml`` + environment → validated :class:`Settings`.

Precedence, highest first: arguments to :func:`load_settings`, then the environment
(``GENROUTE_CONFIG`` picks the file, ``GENROUTE_PROFILE`` the profile, ``GENROUTE_HOME`` the base of
relative paths), then the file. Tokens come only from the environment: a file that holds one is refused.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .money import MAX_USD
from .store import SCRATCH_MAX_BYTES
from .types import Billing, Flag, ModelEntry, Number, Task, Tier, WholeNumber

CONFIG_FILE_NAME = "plugins.toml"
ENV_CONFIG = "GENROUTE_CONFIG"
ENV_PROFILE = "GENROUTE_PROFILE"
ENV_HOME = "GENROUTE_HOME"

Period = Literal["total", "daily", "monthly"]

_SECRET_KEY = re.compile(r"(^|[_\-.])(token|api[_\-]?key|secret|password)$", re.IGNORECASE)
_NAME = r"[a-z0-9_\-]+"  # a provider's name, as it appears in its budget scopes
_PROVIDER_NAME = re.compile(_NAME)
_SCOPE = re.compile(rf"global|simulated|provider:{_NAME}|free:{_NAME}")
_OUT_OF_RANGE = f"must be from 0 to {MAX_USD:,} dollars (a trillion)"
_RANGE_HINT = 'write an amount in that range, as a string such as "5.00"'


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSettings(_Strict):
    """A provider's section: ``[providers.<name>]``."""

    enabled: Flag = True
    priority: WholeNumber = Field(default=100, description="lower goes first among offers of equal price")
    billing: Billing = "paid"
    options: dict[str, Any] = Field(default_factory=dict, description="provider-specific, checked by the plugin")
    models: dict[Task, dict[Tier, ModelEntry]] = Field(default_factory=dict)


class BudgetLimit(_Strict):
    """A spending cap on one scope for one period (UTC calendar days and months)."""

    scope: str = "global"
    period: Period = "total"
    usd: Decimal = Field(decimal_places=6, description="dollars, to the micro-dollar (the ledger's unit), 0 to MAX_USD")

    @field_validator("usd")
    @classmethod
    def _to_the_micro_dollar(cls, value: Decimal) -> Decimal:
        if not 0 <= value <= MAX_USD:
            raise ValueError(_OUT_OF_RANGE)
        return value.quantize(Decimal("0.000001"))  # "1E+2" is shown and exported as 100.000000

    @field_validator("scope")
    @classmethod
    def _scope_shape(cls, value: str) -> str:
        if not _SCOPE.fullmatch(value):
            raise ValueError(
                "scope must be 'global', 'simulated', 'provider:<name>' or 'free:<name>'"
                " (name in lowercase letters, digits, '_' and '-')"
            )
        return value


class BudgetSettings(_Strict):
    warn_share: Number = Field(default=0.8, gt=0, le=1, description="warn once when a scope passes this share")
    limits: list[BudgetLimit] = Field(default_factory=list)


def _not_empty(value: Any) -> Any:
    """An empty path would be read as ``.``, the working directory: refuse it rather than guess."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(
            "must not be empty (an empty path is the working directory itself): give a directory of its own"
        )
    return value


class LedgerSettings(_Strict):
    path: Path = Path(".genroute/ledger")
    reservation_ttl_seconds: Number = Field(
        default=900, gt=0, description="a reservation older than this (its process died) is reclaimed"
    )

    _path_not_empty = field_validator("path", mode="before")(_not_empty)


class StoreSettings(_Strict):
    enabled: Flag = True
    path: Path = Path(".genroute/store")
    max_bytes: WholeNumber = Field(default=2 * 1024**3, ge=1024**2, le=2**62)
    # <path>/scratch/: the files of results the store does not keep (store disabled, cache bypass, or a
    # result larger than max_bytes)
    scratch_max_bytes: WholeNumber = Field(default=SCRATCH_MAX_BYTES, ge=0, le=2**62)

    _path_not_empty = field_validator("path", mode="before")(_not_empty)


class JobsSettings(_Strict):
    path: Path = Path(".genroute/jobs")

    _path_not_empty = field_validator("path", mode="before")(_not_empty)


class RoutingSettings(_Strict):
    max_attempts: WholeNumber = Field(default=3, ge=1, le=20, description="tries per offer before falling back")
    backoff_initial_seconds: Number = Field(default=0.5, ge=0)
    backoff_max_seconds: Number = Field(default=20, ge=0)
    deadline_seconds: Number = Field(default=600, gt=0)
    cooldown_after_failures: WholeNumber = Field(default=3, ge=1)
    cooldown_seconds: Number = Field(default=60, ge=0)
    max_input_bytes: WholeNumber = Field(default=50 * 1024**2, ge=1024)
    max_output_bytes: WholeNumber = Field(default=200 * 1024**2, ge=1024)


class Profile(_Strict):
    """A named routing setup: which providers may serve, in which order of preference."""

    description: str = ""
    providers: list[str] = Field(min_length=1)
    limits: list[BudgetLimit] = Field(default_factory=list, description="extra limits while this profile is active")


class Settings(_Strict):
    """Everything genroute reads from configuration, validated."""

    default_profile: str = "offline"
    profile: str = Field(default="", description="the active profile (resolved at load)")
    profiles: dict[str, Profile]
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    source: str = Field(default="<defaults>", description="where these settings came from")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.profile:
            object.__setattr__(self, "profile", self.default_profile)
        if self.profile not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ValueError(f"profile {self.profile!r} is not defined (known profiles: {known})")
        for name, profile in self.profiles.items():
            for provider in profile.providers:
                if provider not in self.providers:
                    raise ValueError(
                        f"profile {name!r} lists provider {provider!r}, which has no [providers.{provider}] section"
                    )
        return self

    @property
    def active(self) -> Profile:
        return self.profiles[self.profile]

    def limits(self) -> list[BudgetLimit]:
        """The budget limits in force: global ones plus the active profile's."""
        return [*self.budget.limits, *self.active.limits]

    def provider(self, name: str) -> ProviderSettings:
        """A provider's section; an empty default when the file has none."""
        return self.providers.get(name) or ProviderSettings()


def find_config_file(env: Mapping[str, str] | None = None) -> Path:
    """``$GENROUTE_CONFIG``, else ``./plugins.toml``, else the copy shipped with genroute."""
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG):
        path = _expand(Path(env[ENV_CONFIG]), ENV_CONFIG, "environment")
        if path.is_dir():
            raise ConfigError(
                f"{ENV_CONFIG} points at {path}, which is a directory",
                hint=f"point it at the {CONFIG_FILE_NAME} file (such as {path / CONFIG_FILE_NAME}), or unset it",
            )
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "does not exist"
            raise ConfigError(f"{ENV_CONFIG} points at {path}, which {what}", hint="fix the path or unset it")
        return path
    local = Path.cwd() / CONFIG_FILE_NAME
    if local.is_file():
        return local
    packaged = resources.files("genroute").joinpath(CONFIG_FILE_NAME)
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / CONFIG_FILE_NAME  # editable install of the repo
    if checkout.is_file():
        return checkout
    raise ConfigError(
        "no plugins.toml found", hint=f"create one in the current directory or set {ENV_CONFIG} to its path"
    )


def load_settings(
    path: str | Path | None = None,
    *,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Read, check and return the settings; raise :class:`ConfigError` naming file, key and expectation."""
    env = os.environ if env is None else env
    file = Path(path) if path is not None else find_config_file(env)
    if file.is_dir():
        raise ConfigError(
            "is a directory, not a configuration file",
            file=str(file),
            hint=f"give the path of the {CONFIG_FILE_NAME} file (such as {file / CONFIG_FILE_NAME})",
        )
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(file), hint="check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(file), hint="fix the TOML syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(file)) from None
    return settings_from_dict(raw, source=str(file), profile=profile, env=env)


def settings_from_dict(
    raw: Mapping[str, Any],
    *,
    source: str = "<dict>",
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Validate a configuration already parsed into a dict (tests and embedding use this)."""
    env = os.environ if env is None else env
    _refuse_secrets(raw, source)
    data = dict(raw)
    if "profile" in data or "source" in data:
        reserved = "profile" if "profile" in data else "source"
        hint = (
            "use default_profile, or GENROUTE_PROFILE"
            if reserved == "profile"
            else "remove it (genroute records where the settings came from itself)"
        )
        raise ConfigError("is not a configuration key", file=source, key=reserved, hint=hint)
    chosen = profile or env.get(ENV_PROFILE) or data.get("default_profile", "offline")
    # A default_profile that is not a string is reported at its own key, not a second time as "profile".
    data["profile"] = chosen if isinstance(chosen, str) else ""
    data["source"] = source
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(exc, file=source) from None
    _check_prices(settings, source)
    _check_names_and_limits(settings, source)
    return _resolve_paths(settings, env)


def _check_prices(settings: Settings, source: str) -> None:
    """Refuse a unit price past :data:`~genroute.money.MAX_USD`, naming its key (ModelEntry takes any size)."""
    for name, provider in settings.providers.items():
        for task, tiers in provider.models.items():
            for tier, entry in tiers.items():
                if entry.price > MAX_USD:
                    key = f"providers.{name}.models.{task}.{tier}.price"
                    raise ConfigError(_OUT_OF_RANGE, file=source, key=key, hint=_RANGE_HINT)


def _check_names_and_limits(settings: Settings, source: str) -> None:
    """Refuse what would make a budget limit never apply, or a profile say one thing twice.

    A limit's ``provider:<name>`` or ``free:<name>`` scope must name a configured provider (a misspelt one
    would cap nothing, in silence), and a provider's name must be one such a scope can be written with.
    """
    for name in settings.providers:
        if not _PROVIDER_NAME.fullmatch(name):
            raise ConfigError(
                f"{name!r} cannot name a provider: its spend counts in the budget scopes provider:<name> and "
                "free:<name>, so a name is lowercase letters, digits, '_' and '-'",
                file=source,
                key=f"providers.{name}",
                hint="rename the section (and the profiles listing it) to the name the provider's plugin registers",
            )
    for profile_name, profile in settings.profiles.items():
        first: dict[str, int] = {}
        for index, provider in enumerate(profile.providers):
            if provider in first:
                raise ConfigError(
                    f"lists {provider!r} twice (items {first[provider]} and {index})",
                    file=source,
                    key=f"profiles.{profile_name}.providers",
                    hint="list each provider once: the list's order is the order of preference between equal prices",
                )
            first[provider] = index
    known = sorted(settings.providers)
    scopes = ["global", "simulated", *(f"{kind}:{name}" for kind in ("provider", "free") for name in known)]
    groups = [("budget.limits", settings.budget.limits)]
    groups += [(f"profiles.{name}.limits", profile.limits) for name, profile in settings.profiles.items()]
    for where, limits in groups:
        seen: dict[tuple[str, str], str] = {}
        for index, limit in enumerate(limits):
            key = f"{where}.{index}"
            _kind, _, provider = limit.scope.partition(":")
            if provider and provider not in settings.providers:
                guess = difflib.get_close_matches(limit.scope, scopes, n=1)
                raise ConfigError(
                    f"scope {limit.scope!r} names no configured provider, so it would cap nothing (scopes are "
                    "'global', 'simulated', and 'provider:<name>' or 'free:<name>' for a configured provider: "
                    f"{', '.join(known) or 'none'})",
                    file=source,
                    key=f"{key}.scope",
                    hint=(f"did you mean {guess[0]!r}? Fix" if guess else "fix")
                    + f" the scope, or add a [providers.{provider}] section",
                )
            if (limit.scope, limit.period) in seen:
                raise ConfigError(
                    f"a second {limit.period} limit on {limit.scope!r}: {seen[(limit.scope, limit.period)]} "
                    "sets one already",
                    file=source,
                    key=key,
                    hint="keep one of the two (the lower would bind, the other never)",
                )
            seen[(limit.scope, limit.period)] = key


def config_error_from(exc: ValidationError, *, file: str, key_prefix: tuple[str, ...] = ()) -> ConfigError:
    """The first problem pydantic found, as a ConfigError naming the file, the key path and what is expected.

    Provider plugins' options are reported through this too (``key_prefix`` ``providers.<name>.options``),
    so every key of the file reads alike.
    """
    first = exc.errors()[0]
    # "[key]" marks a problem with a table's key itself (a misspelt task or tier): the path up to it names it.
    parts = [*key_prefix, *(str(part) for part in first["loc"] if part != "[key]")]
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    return ConfigError(f"{_expectation(first)}{more}", file=file, key=".".join(parts) or None, hint=_hint_for(first))


def _expectation(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown key (check the spelling against docs/configuration.md)"
    if error["type"] == "missing":
        return "required key is missing"
    if "[key]" in error["loc"]:
        return f"unknown key: expected {message.removeprefix('Input should be ')}"
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a table ([section] or { key = value, … })"
    if error["type"] == "list_type":
        return "must be an array ([…])"
    if error["type"] == "path_type":
        return "must be a path, written as a string"
    return message


def _hint_for(error: Any) -> str:
    if error["type"] == "extra_forbidden" or "[key]" in error["loc"]:
        return "remove or rename the key"
    if error["type"] == "missing":
        return "add the key and run again"
    if "has no [providers." in str(error["msg"]):
        return "add that [providers.<name>] section, or remove the provider from the profile"
    if _OUT_OF_RANGE in str(error["msg"]):
        return _RANGE_HINT
    if "profile" in str(error["msg"]):
        return "pick a profile defined under [profiles.<name>], or set GENROUTE_PROFILE to one"
    return "fix the value at that key and run again"


def _refuse_secrets(raw: Any, source: str, prefix: str = "") -> None:
    if isinstance(raw, list | tuple):
        for index, item in enumerate(raw):
            _refuse_secrets(item, source, f"{prefix}{index}.")
        return
    if not isinstance(raw, Mapping):
        return
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if _SECRET_KEY.search(str(key)):
            raise ConfigError(
                "secrets are not read from files",
                file=source,
                key=path,
                hint="remove it; set REPLICATE_API_TOKEN or HF_TOKEN in the environment instead",
            )
        _refuse_secrets(value, source, f"{path}.")


def _resolve_paths(settings: Settings, env: Mapping[str, str]) -> Settings:
    base = _expand(Path(env[ENV_HOME]), ENV_HOME, settings.source) if env.get(ENV_HOME) else Path.cwd()

    def absolute(path: Path, key: str) -> Path:
        path = _expand(path, key, settings.source)
        return path if path.is_absolute() else base / path

    resolved = settings.model_copy(
        update={
            "store": settings.store.model_copy(update={"path": absolute(settings.store.path, "store.path")}),
            "ledger": settings.ledger.model_copy(update={"path": absolute(settings.ledger.path, "ledger.path")}),
            "jobs": settings.jobs.model_copy(update={"path": absolute(settings.jobs.path, "jobs.path")}),
        }
    )
    _check_store_path(resolved, base)
    return resolved


# What a store directory holds of its own (see genroute.store): anything else there is someone else's.
_STORE_ENTRIES = frozenset({"data", "stats", "scratch"})
_OWN_DIRECTORY_HINT = 'give the store a directory of its own, such as ".genroute/store" (the default)'


def _check_store_path(settings: Settings, base: Path) -> None:
    """Refuse a store directory that would share its place with the ledger, the jobs or anyone's other files.

    The store removes what it keeps (``genroute cache clear``, its size limit, its scratch folder) and starts a
    damaged database anew (removing ``data/cache.db``), and its error messages may advise rebuilding it: none of
    this may ever reach the budget ledger, the job records, the configuration file, the files of the directory
    genroute runs in, the user's home directory or a file system's root. So the store is a directory of its own:
    one that does not exist yet, or holds nothing but what a store makes (``data/``, ``stats/``, ``scratch/``).
    """
    source = settings.source
    store = _real(settings.store.path)
    if store.parent == store:  # "/", a drive's root: never the store's alone, even when empty
        raise ConfigError(
            f"{store} is the root of the file system: the store's clearing and recovery must never reach "
            "the files of the whole disk",
            file=source,
            key="store.path",
            hint=_OWN_DIRECTORY_HINT,
        )
    home = _home()
    if home is not None and (store == home or store in home.parents):
        what = "is your home directory" if store == home else f"holds your home directory ({home})"
        raise ConfigError(
            f"{store} {what}: the store's clearing and recovery (which removes "
            "data/cache.db there) must never reach your own files",
            file=source,
            key="store.path",
            hint=f'{_OWN_DIRECTORY_HINT}, or one under your home directory such as "~/.cache/genroute"',
        )
    for key, path in (("ledger.path", settings.ledger.path), ("jobs.path", settings.jobs.path)):
        other = _real(path)
        if store == other or store in other.parents:
            what = "is the same directory as" if store == other else "holds"
            raise ConfigError(
                f"{store} {what} {key} ({other}): the store's clearing and eviction must never reach "
                f"the {'budget ledger' if key == 'ledger.path' else 'job records'}",
                file=source,
                key="store.path",
                hint=f"{_OWN_DIRECTORY_HINT}, apart from ledger.path and jobs.path",
            )
    places: dict[Path, str] = {}
    config_file = Path(source)
    if source != "<defaults>" and _is_file(config_file):
        places[_real(config_file).parent] = f"the directory of the configuration file {config_file.name}"
    places.setdefault(_real(Path.cwd()), "the working directory")
    places.setdefault(_real(base), f"the directory {ENV_HOME} names")
    for place, label in places.items():
        if store in place.parents:
            raise ConfigError(
                f"{store} holds {label} ({place}), which holds files that are not the store's",
                file=source,
                key="store.path",
                hint=_OWN_DIRECTORY_HINT,
            )
    foreign = _other_things(store)
    if foreign:  # the working directory or any other: a directory left to the store alone (or new) is fine
        what = f" is {places[store]}, which" if store in places else ""
        raise ConfigError(
            f"{store}{what} holds files that are not the store's ({foreign}): the store's clearing and "
            "recovery must never reach them",
            file=source,
            key="store.path",
            hint=f"{_OWN_DIRECTORY_HINT}: a new or empty directory, or one holding only a store's data/, stats/ "
            "and scratch/",
        )


def _home() -> Path | None:
    """The user's home directory (``~``, as ``HOME`` says), symbolic links resolved; None when there is none."""
    try:
        return _real(Path.home())
    except (RuntimeError, KeyError, OSError):  # no HOME, no password entry
        return None


def _real(path: Path) -> Path:
    """``path`` made absolute with symbolic links resolved, as far as the file system allows."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a loop: compare it as written
        return Path(os.path.abspath(path))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _other_things(directory: Path) -> str:
    """What ``directory`` holds besides a store's own entries, as a few names to show ("" when nothing: a new or
    empty directory, or a store's own; a directory that cannot be listed is said to be unreadable)."""
    try:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries if entry.name not in _STORE_ENTRIES)
    except (FileNotFoundError, NotADirectoryError):
        return ""  # a new directory (or a file in the way, which the store's own opening names)
    except (OSError, ValueError) as exc:
        return f"it cannot be listed: {getattr(exc, 'strerror', None) or exc}"
    shown = ", ".join(repr(name) for name in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _expand(path: Path, key: str, source: str) -> Path:
    try:
        return path.expanduser()
    except RuntimeError as exc:  # "~unknown-user/…"
        raise ConfigError(f"cannot expand {str(path)!r}: {exc}", file=source, key=key) from None
