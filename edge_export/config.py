"""Typed run configuration. A config file (YAML or TOML) carries the same options as the flags;
flags override the file; unknown keys are rejected with the closest valid key suggested."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_export.devices.inventory import DeviceSpec
from edge_export.errors import ConfigError
from edge_export.files import read_mapping_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ValidationConfig(_Strict):
    """Accuracy validation: data, generation length and gate overrides."""

    enabled: bool = True
    data: Path | None = None
    generate_tokens: int = Field(32, ge=1, le=512)
    # scope ("*", a precision, or a recipe id) -> metric -> threshold
    gates: dict[str, dict[str, Annotated[float, Field(allow_inf_nan=False)]]] = Field(default_factory=dict)


class LatencyConfig(_Strict):
    """Latency measurement on each device."""

    enabled: bool = True
    # The caps keep a typo (an extra zero or three) from holding a device for hours: see CAPS.
    warmup: int = Field(3, ge=0, le=1000)
    iterations: int = Field(20, ge=1, le=10000)
    batch_size: int = Field(1, ge=1, le=256)
    sequence_length: int = Field(128, ge=1, le=32768)
    prompt_tokens: int = Field(64, ge=1, le=32768)
    decode_tokens: int = Field(32, ge=1, le=4096)
    threads: int | None = Field(None, ge=1, le=1024)


# Why each latency count has its cap (printed when a value is refused).
CAPS = {
    "warmup": "warm-up runs are not measured; 1000 is far more than any runtime needs to settle",
    "iterations": "10000 timed runs already bound a p99 tightly; more only holds the device longer",
    "batch_size": "256 sequences per call is beyond what an edge device serves at once",
    "decode_tokens": "4096 decode steps per measurement is longer than the models' usual context",
}

# Where a config key came from on the command line, so an error names the flag the user typed.
FLAGS = {
    ("latency", "warmup"): "--warmup", ("latency", "iterations"): "--iterations",
    ("validation", "data"): "--data", ("out",): "--out", ("task",): "--task", ("model",): "MODEL",
}  # fmt: skip


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
    # export cache folder: unchanged (model, recipe, data, versions) reuse the cached bundle
    cache: Path | None = None
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


def explain(
    exc: ValidationError,
    model: type[BaseModel],
    from_flags: frozenset[tuple[str, ...]] | set[tuple[str, ...]] = frozenset(),
    prefix: tuple[str, ...] = (),
) -> ConfigError:
    """One ConfigError line for the first pydantic error: the key (or the flag the user typed, when
    the value came from one), what is wrong, and for a refused count the reason for its cap.
    `prefix` is where `model` sits in the config (("latency",) for LatencyConfig)."""
    error = exc.errors()[0]
    own = tuple(str(p) for p in error["loc"])
    loc = prefix + own
    dotted = ".".join(loc)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _known_keys(model, own), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "remove it"
        return ConfigError(f"unknown config key '{dotted}'", hint=hint)
    name = FLAGS[loc] if loc in from_flags and loc in FLAGS else f"config value for '{dotted}'"
    value = error.get("input")
    shown = f", got {value!r}" if isinstance(value, (int, float, str)) and len(repr(value)) < 40 else ""
    hint = CAPS.get(loc[-1]) if error["type"] == "less_than_equal" else None
    return ConfigError(f"invalid {name}: {error['msg']}{shown}", hint=hint)


def read_config_file(path: Path, flag: str = "--config") -> dict[str, Any]:
    """Parse a YAML or TOML config file into a dict (see files.read_mapping_file)."""
    return read_mapping_file(path, flag)


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
        given = {k for k, v in flags.items() if not isinstance(v, dict)}
        nested = {(k, n) for k, v in flags.items() if isinstance(v, dict) for n in v}
        raise explain(exc, ExportConfig, {(k,) for k in given} | nested) from exc


def config_warnings(cfg: ExportConfig, file_values: dict[str, Any], flag_values: dict[str, Any]) -> list[str]:
    """Options that contradict each other: the run goes on (one wins, as documented), but the
    user is told which one was ignored instead of having it resolved silently."""
    given = _merge(file_values, {k: v for k, v in flag_values.items() if v is not None})
    warnings = []
    if not cfg.validation.enabled and cfg.validation.gates:
        warnings.append("validation is off (--no-validate), so the config's validation.gates are not applied")
    latency_keys = sorted(set(given.get("latency") or {}) - {"enabled"})
    if not cfg.latency.enabled and latency_keys:
        names = ", ".join(FLAGS.get(("latency", k), f"latency.{k}") for k in latency_keys)
        warnings.append(f"latency is off (--no-latency), so {names} will not be used")
    if cfg.recipes:
        for key, flag in (("quantize", "--quantize"), ("targets", "--target")):
            if given.get(key):
                warnings.append(f"--recipe picks exact recipes, so {flag} {','.join(given[key])} is ignored")
    return warnings
