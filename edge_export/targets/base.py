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
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol, get_args, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from edge_export.errors import ConfigError
from edge_export.exporter.prepared import Runnable

if TYPE_CHECKING:
    from edge_export.exporter.prepared import CalibrationSet, PreparedModel
    from edge_export.validation.provenance import StoredTensor

__all__ = [
    "PRECISIONS",
    "Artifact",
    "HostEstimate",
    "LayerPattern",
    "Length",
    "Recipe",
    "RecipeOptions",
    "Runnable",
    "Target",
    "TargetBase",
    "WeightBits",
]

PRECISIONS = ("fp32", "fp16", "int8", "int4")


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


class RecipeOptions(BaseModel):
    """Base of every recipe family's options model: the option names, their types, allowed values
    and defaults as data. Unknown names are refused; `strict` keeps a bool from passing for a number
    and a string from being coerced, while an int is still taken where a float is expected."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


WeightBits = Literal[4, 8]  # int4 or int8 weights (a body, an LM head)
LayerPattern = Annotated[str, Field(min_length=1)]  # a substring of layer names
Length = Annotated[int, Field(ge=1)]  # a sequence length in tokens


@dataclass(frozen=True)
class Recipe:
    """One way to produce an artifact: precision, options with defaults, and default gates.

    `gates` maps a metric name (see validation.gates.METRICS) to its default threshold; metrics a
    task does not compute are ignored. `options_model` (a RecipeOptions) types the options and holds
    their defaults; `options` overrides those defaults for this recipe. Without a model, one is derived
    from the types of the `options` given (for recipes of third-party targets). Every construction,
    `with_options` included, validates the options through the model.
    """

    id: str
    precision: Literal["fp32", "fp16", "int8", "int4"]
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)
    needs_calibration: bool = False
    gates: Mapping[str, float] = field(default_factory=dict)
    default_for: tuple[str, ...] = ()
    options_model: type[BaseModel] | None = None

    def __post_init__(self) -> None:
        model = self.options_model or _derived_model(self.options)
        object.__setattr__(self, "options_model", model)
        object.__setattr__(self, "options", _frozen(validated_options(self.id, model, self.options)))
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
        """A copy with options overridden; every unknown name and bad value is one ConfigError."""
        return replace(self, options={**self.options, **{str(k): v for k, v in overrides.items()}})

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


def validated_options(recipe_id: str, model: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` over the model's defaults, validated, in the model's field order (the order manifests
    and `targets --json` show). Every problem is reported at once, in one line: the user fixes a
    config in one round instead of one error per run."""
    try:
        return model.model_validate(dict(values)).model_dump()
    except ValidationError as exc:
        raise _options_error(recipe_id, model, exc.errors()) from None


def _options_error(recipe_id: str, model: type[BaseModel], errors: list[Any]) -> ConfigError:
    """One ConfigError for every unknown name (each with its closest valid one) and bad value."""
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
    problems = [_problem(model, e) for e in errors if e["type"] != "extra_forbidden"]
    if not unknown:
        return ConfigError(f"recipe {recipe_id}: " + "; ".join(problems))
    valid = list(model.model_fields)
    guesses = [(k, difflib.get_close_matches(k, valid, n=1)) for k in unknown]
    hints = [f"did you mean '{close[0]}' for '{key}'?" for key, close in guesses if close]
    names = ", ".join(f"'{k}'" for k in unknown)
    return ConfigError(
        "; ".join([f"recipe {recipe_id} has no option {names}", *problems]),
        hint=" ".join([*hints, f"valid options: {', '.join(sorted(valid)) or 'none'}"]),
    )


_TYPE_NAMES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str",
               "list_type": "list", "dict_type": "dict"}  # fmt: skip
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _problem(model: type[BaseModel], error: Any) -> str:
    """'<key> must be <what is allowed>, got <value>' for one pydantic error."""
    loc = error["loc"]
    key = str(loc[0]) + "".join(f"[{part}]" for part in loc[1:])
    got = repr(error["input"])
    got = got if len(got) <= 80 else got[:77] + "..."
    kind, ctx = error["type"], error.get("ctx", {})
    if kind in _TYPE_NAMES:
        allowed = _TYPE_NAMES[kind]
    elif kind in _BOUNDS:
        allowed = f"{_BOUNDS[kind]} {next(iter(ctx.values())):g}"  # 0, not 0.0, for a float bound
    elif kind == "string_too_short":
        allowed = "a non-empty str"
    elif kind == "literal_error":
        allowed = _literal_allowed(model, loc, error["input"], ctx["expected"])
    else:
        return f"{key}: {error['msg']}, got {got}"
    return f"{key} must be {allowed}, got {got}"


def _literal_allowed(model: type[BaseModel], loc: tuple[Any, ...], value: Any, expected: str) -> str:
    """The allowed values; with their type first when `value` is not even of that type (True or
    "big" for a block size), so the message says both what kind of value and which ones."""
    info = model.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    kinds = {type(v).__name__ for v in get_args(info.annotation)} if info else set()
    if kinds and type(value).__name__ not in kinds:
        return f"{'/'.join(sorted(kinds))} ({expected})"
    return expected


def _derived_model(defaults: Mapping[str, Any]) -> type[BaseModel]:
    """An options model typed by the defaults (a None default takes anything)."""
    fields: dict[str, Any] = {str(k): (Any if v is None else type(v), v) for k, v in defaults.items()}
    return create_model("DerivedOptions", __base__=RecipeOptions, **fields)


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

    unsupported_families: Mapping[str, str]

    def stored_weights(self, path: Path) -> list[StoredTensor] | None:
        """Every constant tensor the artifact stores, read back from the file itself, for the weight
        provenance check (validation/provenance.py); None where the target cannot read them yet."""
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

    # model types (families/*.py MODEL_TYPES) this target cannot express, each with the reason: the
    # one table that both refuses them before any work and `edge-export targets --families` prints
    unsupported_families: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def check_full_delegation(self, model: PreparedModel, recipe: Recipe) -> None:
        """No delegate that could be partial: nothing to refuse up front."""
        return None

    def stored_weights(self, path: Path) -> list[StoredTensor] | None:
        """Not read back yet: the provenance record says so instead of passing silently."""
        return None

    def host_estimate(
        self, model: PreparedModel, path: Path, manifest: Mapping[str, Any]
    ) -> HostEstimate | None:
        """No host estimate: a result whose runtime cannot run here says "not run"."""
        return None
