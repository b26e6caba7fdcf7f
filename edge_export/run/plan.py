"""Turn the config into the list of (target, recipe) pairs to run, validating every id first."""

from __future__ import annotations

from dataclasses import dataclass

from edge_export.config import ExportConfig
from edge_export.errors import ConfigError, MissingDependencyError
from edge_export.targets.base import Recipe, Target
from edge_export.targets.registry import create, factories, get_recipe, recipe_for_precision
from edge_export.validation.gates import check_override_keys


@dataclass(frozen=True)
class PlannedRun:
    """One export to perform."""

    target: Target
    recipe: Recipe


def _target_names(cfg: ExportConfig) -> list[str]:
    names: list[str] = []
    for item in cfg.targets:
        for name in item.split(","):
            name = name.strip()
            if name == "all":
                names += sorted(factories())
            elif name:
                names.append(name)
    return list(dict.fromkeys(names))


def plan_runs(cfg: ExportConfig, targets: dict[str, Target] | None = None) -> list[PlannedRun]:
    """Explicit --recipe ids, else the recommended recipe per target and precision. Each target is
    a fresh instance for this run (`targets` collects them), so its caches end with the run."""
    check_override_keys(cfg.validation.gates)
    made = targets if targets is not None else {}

    def target(name: str) -> Target:
        if name not in made:
            made[name] = create(name)
        return made[name]

    runs: list[PlannedRun] = []
    if cfg.recipes:
        ids = [r.strip() for item in cfg.recipes for r in item.split(",") if r.strip()]  # like --quantize
        for recipe_id in ids:
            recipe = get_recipe(recipe_id)
            runs.append(PlannedRun(target(recipe.target), recipe))
    else:
        precisions = [p.strip() for item in cfg.quantize for p in item.split(",") if p.strip()]
        for name in _target_names(cfg):
            runs += [PlannedRun(target(name), recipe_for_precision(target(name), p)) for p in precisions]
    for recipe_id in cfg.recipe_options:
        get_recipe(recipe_id)
    runs = [
        PlannedRun(r.target, r.recipe.with_options(cfg.recipe_options.get(r.recipe.id, {}))) for r in runs
    ]
    unique = list({r.recipe.id: r for r in runs}.values())
    if not unique:
        raise ConfigError("nothing to export", hint="give --target and --quantize, or --recipe")
    for run in unique:
        missing = run.target.missing_dependency()
        if missing:
            raise MissingDependencyError(run.target.extra, f"target {run.target.name} ({missing})")
    return unique
