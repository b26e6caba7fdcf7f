"""The Target protocol and Recipe data (discovery and lookup live in targets/registry.py).

A Recipe is frozen data with a stable id "<target>:<name>"; a Target turns a prepared model into
an artifact for one recipe and can load that artifact back into a host runtime for validation.
Optional capabilities (full-delegation pre-flight, a host estimate where the runtime cannot run
here) are members of the protocol with neutral defaults in TargetBase, never probed for.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from edge_export.errors import ConfigError
from edge_export.exporter.prepared import Runnable

if TYPE_CHECKING:
    from edge_export.exporter.prepared import CalibrationSet, PreparedModel

__all__ = ["PRECISIONS", "Artifact", "HostEstimate", "Recipe", "Runnable", "Target", "TargetBase"]

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
        unknown = [str(key) for key in overrides if key not in self.options]
        if unknown:  # every bad name at once, each with its closest valid one
            valid = ", ".join(sorted(self.options)) or "none"
            guesses = [(k, difflib.get_close_matches(k, list(self.options), n=1)) for k in unknown]
            hints = [f"did you mean '{close[0]}' for '{key}'?" for key, close in guesses if close]
            names = ", ".join(f"'{k}'" for k in unknown)
            raise ConfigError(
                f"recipe {self.id} has no option {names}"[:300],
                hint=" ".join([*hints, f"valid options: {valid}"])[:400],
            )
        for key, value in overrides.items():
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


class HostEstimate(Runnable, Protocol):
    """A host stand-in for an artifact whose runtime cannot run here, and what it covers."""

    coverage: dict[str, Any]


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

    def check_full_delegation(self, model: PreparedModel, recipe: Recipe) -> None:
        """--require-full-delegation pre-flight: raise ConfigError when this recipe can never run
        entirely inside the accelerator delegate for this model (TargetBase: nothing to refuse)."""
        ...

    def host_estimate(
        self, model: PreparedModel, path: Path, manifest: Mapping[str, Any]
    ) -> HostEstimate | None:
        """Where the artifact's runtime cannot exist here (`load` raised NotRunnableHere): a stand-in
        that estimates its accuracy on the host, labelled so in the report; None when the target has
        no such estimate (TargetBase), and the result then says "not run"."""
        ...


class TargetBase:
    """Neutral defaults for the optional members of the Target protocol; built-in targets inherit it."""

    def check_full_delegation(self, model: PreparedModel, recipe: Recipe) -> None:
        """No delegate that could be partial: nothing to refuse up front."""
        return None

    def host_estimate(
        self, model: PreparedModel, path: Path, manifest: Mapping[str, Any]
    ) -> HostEstimate | None:
        """No host estimate: a result whose runtime cannot run here says "not run"."""
        return None
