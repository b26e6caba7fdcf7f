"""Typed run configuration. A config file (YAML or TOML) carries the same options as the flags;
flags override the file; unknown keys are rejected with the closest valid key suggested."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_export.devices.inventory import DeviceSpec
from edge_export.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ValidationConfig(_Strict):
    """Accuracy validation: data, generation length and gate overrides."""

    enabled: bool = True
    data: Path | None = None
    generate_tokens: int = Field(32, ge=1, le=512)
    # scope ("*", a precision, or a recipe id) -> metric -> threshold
    gates: dict[str, dict[str, float]] = Field(default_factory=dict)


class LatencyConfig(_Strict):
    """Latency measurement on each device."""

    enabled: bool = True
    warmup: int = Field(3, ge=0)
    iterations: int = Field(20, ge=1)
    batch_size: int = Field(1, ge=1)
    sequence_length: int = Field(128, ge=1)
    prompt_tokens: int = Field(64, ge=1)
    decode_tokens: int = Field(32, ge=1)
    threads: int | None = Field(None, ge=1)


class ExportConfig(_Strict):
    """Everything `edge-export export` needs."""

    model: str
    task: str | None = None
    targets: list[str] = Field(default_factory=lambda: ["onnx"])
    quantize: list[str] = Field(default_factory=lambda: ["fp32"])
    recipes: list[str] = Field(default_factory=list)
    recipe_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    out: Path = Path("edge-export-out")
    force: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    require_full_delegation: bool = False
    devices: list[str] = Field(default_factory=lambda: ["local"])
    inventory: dict[str, DeviceSpec] = Field(default_factory=dict)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


def _explain(exc: ValidationError) -> ConfigError:
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    dotted = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(ExportConfig, loc), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "remove it"
        return ConfigError(f"unknown config key '{dotted}'", hint=hint)
    return ConfigError(f"invalid config value for '{dotted}': {error['msg']}")


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML or TOML config file into a dict."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", hint="check the --config path")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} does not parse: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options at the top level")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> ExportConfig:
    """File values, overridden by flags the user actually gave (None means not given)."""
    flags = {k: v for k, v in flag_values.items() if v is not None}
    try:
        return ExportConfig.model_validate(_merge(file_values, flags))
    except ValidationError as exc:
        raise _explain(exc) from exc
