"""A model's input schema: fetched once from the API, kept on disk, and used to check inputs before paying.

Replicate publishes each model version's Cog OpenAPI schema (``latest_version.openapi_schema``);
``components.schemas.Input.properties`` gives every input's type, range, enum and default. Enums come
inline or, in real Cog schemas, as ``allOf: [{"$ref": "#/components/schemas/<name>"}]``: both are resolved
here, so the rest of the plugin sees one flat mapping per input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from genroute import errors

log = logging.getLogger("genroute.replicate.schema")

RunsBy = Literal["model", "version", "deployment"]
_KEPT = (
    "type",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "format",
    "items",
    "minLength",
    "maxLength",
    "default",
    "description",
)
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class ModelSchema:
    """What the plugin knows of one runnable target (a model, a pinned version, or a deployment)."""

    ref: str  # the catalogue's reference: "owner/name", "owner/name:version" or "deployment:owner/name"
    model: str  # owner/name of the model that runs
    version: str | None  # the version id that runs (None: an official model without a published version)
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)
    output: dict[str, Any] | None = None
    runs_by: RunsBy | None = None  # learned: official models run by name, community ones by version
    fetched_at: float = 0.0

    @property
    def known(self) -> bool:
        """False when the API gave no schema: inputs are then sent by their usual names, unchecked."""
        return bool(self.properties)

    def declares(self, name: str) -> bool:
        return name in self.properties

    def first_declared(self, names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in self.properties), None)


def parse_openapi(
    openapi: Mapping[str, Any] | None,
) -> tuple[dict[str, dict[str, Any]], list[str], dict[str, Any] | None]:
    """(properties, required, output schema) from a Cog OpenAPI document, with enum references resolved."""
    if not isinstance(openapi, Mapping):
        return {}, [], None
    schemas = openapi.get("components", {}).get("schemas", {})
    if not isinstance(schemas, Mapping):
        return {}, [], None
    raw_input = schemas.get("Input", {})
    raw_props = raw_input.get("properties", {}) if isinstance(raw_input, Mapping) else {}
    properties: dict[str, dict[str, Any]] = {}
    for name, spec in raw_props.items() if isinstance(raw_props, Mapping) else ():
        if isinstance(spec, Mapping):
            properties[str(name)] = _flatten(spec, schemas)
    required = (
        [str(n) for n in raw_input.get("required", []) if isinstance(n, str)] if isinstance(raw_input, Mapping) else []
    )
    output = schemas.get("Output")
    return properties, required, dict(output) if isinstance(output, Mapping) else None


def _flatten(spec: Mapping[str, Any], schemas: Mapping[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in spec.items() if k in _KEPT}
    parts: list[Any] = []
    for key in ("allOf", "anyOf", "oneOf"):
        value = spec.get(key)
        if isinstance(value, list):
            parts.extend(value)
    if "$ref" in spec:
        parts.append({"$ref": spec["$ref"]})
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        target: Mapping[str, Any] = part
        ref = part.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found = schemas.get(ref.rsplit("/", 1)[-1])
            target = found if isinstance(found, Mapping) else {}
        if target.get("type") == "null":
            continue  # Optional[...] written as anyOf [X, null]
        for key in _KEPT:
            if key in target and key not in flat:
                flat[key] = target[key]
    return flat


# -- validation --------------------------------------------------------------------------------------
def _type_ok(value: Any, expected: str) -> bool:
    if expected == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "string":
        return isinstance(value, str)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "array":
        return isinstance(value, list)
    if expected == "object":
        return isinstance(value, dict)
    return True


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def allowed_text(spec: Mapping[str, Any]) -> str:
    """The allowed values of one input, for messages: 'one of …', 'from 1 to 4', 'at least 0' …"""
    if "enum" in spec and isinstance(spec["enum"], list):
        values = ", ".join(_fmt(v) for v in spec["enum"])
        return f"one of {values}"
    low = spec.get("minimum", spec.get("exclusiveMinimum"))
    high = spec.get("maximum", spec.get("exclusiveMaximum"))
    if low is not None and high is not None:
        return f"from {low} to {high}"
    if low is not None:
        return f"at least {low}"
    if high is not None:
        return f"at most {high}"
    if "maxLength" in spec:
        return f"at most {spec['maxLength']} characters"
    kind = spec.get("type")
    return f"a {kind}" if kind else "a valid value"


def check_value(name: str, value: Any, spec: Mapping[str, Any]) -> str | None:
    """Why ``value`` does not fit ``spec``, or None."""
    if value is None:
        return None
    expected = spec.get("type")
    if isinstance(expected, str) and not _type_ok(value, expected):
        return f"expected {expected}, got {type(value).__name__}"
    if "enum" in spec and isinstance(spec["enum"], list) and value not in spec["enum"]:
        return "not an allowed value"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in spec and value < spec["minimum"]:
            return "too small"
        if "maximum" in spec and value > spec["maximum"]:
            return "too large"
        if "exclusiveMinimum" in spec and value <= spec["exclusiveMinimum"]:
            return "too small"
        if "exclusiveMaximum" in spec and value >= spec["exclusiveMaximum"]:
            return "too large"
    if isinstance(value, str):
        if "maxLength" in spec and len(value) > spec["maxLength"]:
            return "too long"
        if "minLength" in spec and len(value) < spec["minLength"]:
            return "too short"
        if spec.get("format") == "uri" and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", value):
            return "not a URI"
    return None


def validate_inputs(
    schema: ModelSchema, inputs: Mapping[str, Any], origins: Mapping[str, str], *, provider: str
) -> None:
    """Raise ProviderRejectedInput naming the genroute field and the allowed range; nothing is spent yet."""
    if not schema.known:
        return
    for name in schema.required:
        if inputs.get(name) is None and "default" not in schema.properties.get(name, {}):
            field_name = origins.get(name, name)
            raise errors.ProviderRejectedInput(
                f"{field_name}: {schema.model} requires input {name!r}, which this request does not provide",
                provider=provider,
                hint=f"give {field_name}, set inputs.{name} for this model in plugins.toml, or pick another model",
            )
    for name, value in inputs.items():
        spec = schema.properties.get(name)
        if spec is None:
            continue
        why = check_value(name, value, spec)
        if why is None:
            continue
        field_name = origins.get(name, name)
        shown = value if not (isinstance(value, str) and len(value) > 60) else value[:57] + "..."
        raise errors.ProviderRejectedInput(
            f"{field_name}: {_fmt(shown)} does not fit {schema.model} (input {name!r}, {why}): "
            f"allowed {allowed_text(spec)}",
            provider=provider,
        )


# -- the disk cache --------------------------------------------------------------------------------
class SchemaCache:
    """One JSON file per target under ``directory``; entries older than ``ttl`` seconds are refetched."""

    def __init__(self, directory: Path, ttl: float) -> None:
        self.directory = directory
        self.ttl = ttl
        self._memory: dict[str, ModelSchema] = {}

    def _path(self, ref: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ref)[:80]
        digest = hashlib.sha256(ref.encode()).hexdigest()[:12]
        return self.directory / f"{safe}-{digest}.json"

    def get(self, ref: str) -> ModelSchema | None:
        schema = self._memory.get(ref)
        if schema is None:
            schema = self._read(ref)
            if schema is not None:
                self._memory[ref] = schema
        if schema is not None and self.ttl and time.time() - schema.fetched_at > self.ttl:
            return None
        return schema

    def _read(self, ref: str) -> ModelSchema | None:
        try:
            raw = json.loads(self._path(ref).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.debug("schema cache entry for %s unreadable (%s); refetching", ref, type(exc).__name__)
            return None
        if not isinstance(raw, dict) or raw.pop("format", None) != _CACHE_FORMAT:
            return None
        try:
            return ModelSchema(**raw)
        except TypeError:
            return None

    def put(self, schema: ModelSchema) -> None:
        self._memory[schema.ref] = schema
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self._path(schema.ref)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"format": _CACHE_FORMAT, **asdict(schema)}), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:  # a cache that cannot be written only costs a refetch next time
            log.warning("could not write the schema cache in %s: %s", self.directory, exc.strerror)

    def learn(self, schema: ModelSchema, runs_by: RunsBy) -> ModelSchema:
        if schema.runs_by == runs_by:
            return schema
        updated = replace(schema, runs_by=runs_by)
        self.put(updated)
        return updated

    def forget(self, ref: str) -> None:
        self._memory.pop(ref, None)
        with contextlib.suppress(OSError):
            self._path(ref).unlink()
