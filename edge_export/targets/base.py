"""The Target protocol, Recipe data and the target registry.

A Recipe is frozen data with a stable id "<target>:<name>"; a Target turns a prepared model into
an artifact for one recipe and can load that artifact back into a host runtime for validation.
Built-in and third-party targets register through the `edge_export.targets` entry-point group.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from edge_export.errors import ConfigError

if TYPE_CHECKING:
    from edge_export.exporter.prepared import CalibrationSet, PreparedModel

PRECISIONS = ("fp32", "fp16", "int8", "int4")


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Recipe:
    """One way to produce an artifact: precision, options with defaults, and default gates.

    `gates` maps a metric name (see validation.gates.METRICS) to its default threshold; metrics a
    task does not compute are ignored. `options` holds defaults; `with_options` validates overrides.
    """

    id: str
    precision: Literal["fp32", "fp16", "int8", "int4"]
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)
    needs_calibration: bool = False
    gates: Mapping[str, float] = field(default_factory=dict)
    default_for: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _frozen(self.options))
        object.__setattr__(self, "gates", _frozen(self.gates))

    @property
    def target(self) -> str:
        """The target part of the id ("onnx" for "onnx:int8-dynamic")."""
        return self.id.split(":", 1)[0]

    @property
    def name(self) -> str:
        """The recipe part of the id ("int8-dynamic"); also the bundle folder suffix."""
        return self.id.split(":", 1)[1]

    def with_options(self, overrides: Mapping[str, Any]) -> Recipe:
        """A copy with options overridden; unknown option names or wrong types are errors."""
        merged = dict(self.options)
        for key, value in overrides.items():
            if key not in self.options:
                valid = ", ".join(sorted(self.options)) or "none"
                raise ConfigError(
                    f"recipe {self.id} has no option '{key}'",
                    hint=f"valid options: {valid}",
                )
            merged[key] = _option_value(self.id, key, self.options[key], value)
        return replace(self, options=merged)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for `targets --json` and manifests)."""
        return {
            "id": self.id,
            "precision": self.precision,
            "description": self.description,
            "options": dict(self.options),
            "needs_calibration": self.needs_calibration,
            "gates": dict(self.gates),
        }


def _option_value(recipe_id: str, key: str, default: Any, value: Any) -> Any:
    """`value` checked against the type of the option's default: an int is accepted (as a float)
    where a float is expected; a bool is never taken for a number."""
    if default is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    wrong_bool = isinstance(value, bool) and not isinstance(default, bool)
    if wrong_bool or not isinstance(value, type(default)):
        raise ConfigError(
            f"recipe {recipe_id} option '{key}' must be {type(default).__name__}, got {value!r}"[:300]
        )
    return value


@dataclass
class Artifact:
    """What a target produced: the main file plus any side files, all inside `workdir`."""

    target: str
    recipe: Recipe
    path: Path
    files: list[Path]
    details: dict[str, Any] = field(default_factory=dict)
    # The IO the artifact exposes when it differs from the prepared model's (e.g. a stateful LM).
    io: dict[str, Any] | None = None


@runtime_checkable
class Runnable(Protocol):
    """A loaded artifact on the host: maps named numpy inputs to named numpy outputs."""

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Run one forward pass."""
        ...


@runtime_checkable
class Target(Protocol):
    """One output format. Heavy libraries are imported inside the methods, never at import."""

    name: str
    extra: str
    quantizes: Literal["before-export", "after-export"]

    def recipes(self) -> list[Recipe]:
        """Every recipe this target offers."""
        ...

    def missing_dependency(self) -> str | None:
        """None when the target's libraries import, else the name of the missing module."""
        ...

    def check(self, model: PreparedModel, recipe: Recipe) -> None:
        """Pre-flight: raise ConfigError when the recipe cannot apply to this model."""
        ...

    def export(
        self,
        model: PreparedModel,
        recipe: Recipe,
        calibration: CalibrationSet | None,
        workdir: Path,
    ) -> Artifact:
        """Produce the artifact in `workdir`; raise ExportError(target, stage, msg) on failure."""
        ...

    def load(self, artifact_path: Path, manifest: Mapping[str, Any]) -> Runnable:
        """Load an artifact into the host runtime."""
        ...

    def inspect(self, artifact_path: Path, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Operators, residency and sizes of an artifact (`details`: what export recorded)."""
        ...


def _discover() -> dict[str, Target]:
    found: dict[str, Target] = {}
    for ep in sorted(entry_points(group="edge_export.targets"), key=lambda e: e.name):
        found[ep.name] = ep.load()()
    if "onnx" not in found:  # running from a source tree without installed metadata
        from edge_export.targets.coreml import CoremlTarget
        from edge_export.targets.executorch import ExecutorchTarget
        from edge_export.targets.onnx import OnnxTarget
        from edge_export.targets.tflite import TfliteTarget

        found["onnx"] = OnnxTarget()
        found["coreml"] = CoremlTarget()
        found["executorch"] = ExecutorchTarget()
        found["tflite"] = TfliteTarget()
    return found


_REGISTRY: dict[str, Target] | None = None


def registry() -> dict[str, Target]:
    """All registered targets by name (built-ins through the same entry-point path)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _discover()
    return _REGISTRY


def get_target(name: str) -> Target:
    """The target called `name`, or a ConfigError listing the valid names."""
    targets = registry()
    if name not in targets:
        raise ConfigError(f"unknown target '{name}'", hint=f"choose from: {', '.join(sorted(targets))}, all")
    return targets[name]


def all_recipes() -> dict[str, Recipe]:
    """Every recipe of every registered target, by id."""
    return {r.id: r for t in registry().values() for r in t.recipes()}


def get_recipe(recipe_id: str) -> Recipe:
    """The recipe with this exact id, or a ConfigError listing the valid ids."""
    recipes = all_recipes()
    if recipe_id not in recipes:
        close = difflib.get_close_matches(recipe_id, list(recipes), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"unknown recipe '{recipe_id}'",
            hint=f"{hint}valid recipes: {', '.join(sorted(recipes))}",
        )
    return recipes[recipe_id]


def recipe_for_precision(target: Target, precision: str) -> Recipe:
    """The target's recommended recipe for a precision (what `--quantize int8` means)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'", hint=f"choose from: {', '.join(PRECISIONS)}")
    for recipe in target.recipes():
        if precision in recipe.default_for:
            return recipe
    offered = sorted({r.precision for r in target.recipes()})
    raise ConfigError(
        f"target {target.name} has no {precision} recipe",
        hint=f"{target.name} offers: {', '.join(offered)}",
    )
