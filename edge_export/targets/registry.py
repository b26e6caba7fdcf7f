"""Target discovery and lookup: the only module that imports the built-in targets.

Built-in and third-party targets register the same way, through the `edge_export.targets`
entry-point group (a source tree without installed metadata falls back to the built-ins).
`catalog()` holds one instance per target for listing and recipe lookup; a run creates its own
instances with `create()`, so conversion caches live for one run, never for the process.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from edge_export.errors import ConfigError
from edge_export.targets.base import PRECISIONS, Recipe, Target

if TYPE_CHECKING:
    from edge_export.exporter.prepared import PreparedModel


def _builtin_factories() -> dict[str, Callable[[], Target]]:
    from edge_export.targets.coreml import CoremlTarget
    from edge_export.targets.executorch import ExecutorchTarget
    from edge_export.targets.onnx import OnnxTarget
    from edge_export.targets.tflite import TfliteTarget

    return {
        "onnx": OnnxTarget,
        "coreml": CoremlTarget,
        "executorch": ExecutorchTarget,
        "tflite": TfliteTarget,
    }


_FACTORIES: dict[str, Callable[[], Target]] | None = None
_CATALOG: dict[str, Target] | None = None


def factories() -> dict[str, Callable[[], Target]]:
    """Target name -> class (or factory), from the entry points, built-ins included."""
    global _FACTORIES
    if _FACTORIES is None:
        found = {
            ep.name: ep.load()
            for ep in sorted(entry_points(group="edge_export.targets"), key=lambda e: e.name)
        }
        if "onnx" not in found:  # running from a source tree without installed metadata
            found.update(_builtin_factories())
        _FACTORIES = found
    return _FACTORIES


def create(name: str) -> Target:
    """A fresh instance of the target called `name` (one per run: its caches die with the run)."""
    made = factories()
    if name not in made:
        raise ConfigError(f"unknown target '{name}'", hint=f"choose from: {', '.join(sorted(made))}, all")
    return made[name]()


def catalog() -> dict[str, Target]:
    """One instance per registered target, for listing and recipe lookup (never for exports)."""
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = {name: create(name) for name in sorted(factories())}
    return _CATALOG


def get_target(name: str) -> Target:
    """The catalog's target called `name`, or a ConfigError listing the valid names."""
    targets = catalog()
    if name not in targets:
        raise ConfigError(f"unknown target '{name}'", hint=f"choose from: {', '.join(sorted(targets))}, all")
    return targets[name]


def all_recipes() -> dict[str, Recipe]:
    """Every recipe of every registered target, by id."""
    return {r.id: r for t in catalog().values() for r in t.recipes()}


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


def require_family(target: Target, model: PreparedModel, recipe: Recipe) -> None:
    """ConfigError (exit 2) when the target's family table says it cannot express this model type."""
    reason = getattr(target, "unsupported_families", {}).get(model.model_type)
    if reason:
        able = [t.name for t in catalog().values() if model.model_type not in t.unsupported_families]
        raise ConfigError(
            f"{recipe.id}: {target.name} cannot export '{model.model_type}' models: {reason}",
            hint=f"targets that can: {', '.join(able) or 'none'} (edge-export targets --families)",
        )


def family_table() -> list[dict[str, Any]]:
    """One row per supported model type: its family, tasks, and per target "yes" or the reason it
    cannot (the same tables `require_family` enforces)."""
    from edge_export.exporter.families import all_families

    rows = []
    for family in all_families():
        for model_type in family.model_types:
            support = {
                name: target.unsupported_families.get(model_type, "yes") for name, target in catalog().items()
            }
            rows.append({"model_type": model_type, "family": family.name,
                         "tasks": list(family.tasks), "targets": support})  # fmt: skip
    return rows


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
