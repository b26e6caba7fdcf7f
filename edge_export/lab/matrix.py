"""The lab's matrix: every (model, recipe, device) cell a lab file asks for, and shards of it.

A cell's export is shared: the cells of one (model, recipe) -- an "export group" -- come from one
export whose bundle every device of the group measures. Shards therefore split the matrix by
group (never inside one, which would export the same bundle twice) and deterministically: the
same lab file and `--shard i/n` give the same cells on every machine and every call, so CI jobs
fan out over the CI system's own matrix and their stores merge into one without overlap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edge_export.errors import ConfigError, MissingDependencyError
from edge_export.lab.spec import LabSpec
from edge_export.targets.base import Recipe
from edge_export.targets.registry import create, factories, get_recipe, recipe_for_precision
from edge_export.validation.gates import check_override_keys


@dataclass(frozen=True)
class Cell:
    """One measurement of the lab: a model (its label) exported with a recipe, run on a device."""

    model: str
    target: str
    recipe: str
    device: str
    precision: str = ""

    @property
    def id(self) -> str:
        """The cell's key in the results store: "model|recipe|device"."""
        return f"{self.model}|{self.recipe}|{self.device}"

    @property
    def group(self) -> tuple[str, str]:
        """(model, recipe): the export this cell's bundle comes from."""
        return (self.model, self.recipe)

    def to_dict(self) -> dict[str, Any]:
        """The cell as stored with a run's matrix and printed by --dry-run."""
        return {"id": self.id, **asdict(self)}


def _split(items: list[str]) -> list[str]:
    """Items as given, comma lists split (`[onnx,tflite]` or `["onnx,tflite"]`)."""
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def lab_recipes(spec: LabSpec) -> list[Recipe]:
    """The lab's recipes in file order: exact `recipes:` ids, then the recommended recipe of
    every target for every `quantize:` precision; unknown ids, targets and precisions, and
    targets whose extra is missing, are ConfigErrors (exit 2) before anything runs."""
    recipes = [get_recipe(recipe_id) for recipe_id in _split(spec.recipes)]
    names: list[str] = []
    for name in _split(spec.targets):
        names += sorted(factories()) if name == "all" else [name]
    precisions = _split(spec.quantize)
    for name in dict.fromkeys(names):
        target = create(name)
        recipes += [recipe_for_precision(target, precision) for precision in precisions]
    for recipe_id in spec.recipe_options:
        get_recipe(recipe_id)
    check_override_keys(spec.gate_overrides())
    unique = list({recipe.id: recipe for recipe in recipes}.values())
    if not unique:
        raise ConfigError("the lab file names no recipes", hint="give targets: (with quantize:) or recipes:")
    for target_name in dict.fromkeys(r.target for r in unique):
        missing = create(target_name).missing_dependency()
        if missing:
            raise MissingDependencyError(create(target_name).extra, f"target {target_name} ({missing})")
    return unique


def device_can_run(spec: LabSpec, device: str, target: str) -> bool:
    """Whether a device can run a format at all, known without connecting to it: a device
    declared without Python (`python: null`) runs only the formats it has a native benchmark
    tool for. Anything else is tried; a runtime missing there is recorded in the cell."""
    entry = spec.inventory.get(device)
    if entry is None or getattr(entry, "python", "python3") is not None:
        return True
    return target in getattr(entry, "benchmark_tools", {})


def resolve_matrix(spec: LabSpec) -> list[Cell]:
    """Every cell of the lab in a stable order: models in file order, then recipes, then devices
    (the order the runner works in). Cells a device cannot run (see device_can_run) are left out."""
    recipes = lab_recipes(spec)
    devices = list(dict.fromkeys(spec.devices))
    return [
        Cell(model, recipe.target, recipe.id, device, recipe.precision)
        for model in spec.models
        for recipe in recipes
        for device in devices
        if device_can_run(spec, device, recipe.target)
    ]


def skipped_cells(spec: LabSpec) -> list[str]:
    """Why (recipe, device) pairs are not in the matrix, one line each (for --dry-run)."""
    return [
        f"{device}: no runtime for {recipe.target} (python: null and no benchmark_tools.{recipe.target})"
        for recipe in lab_recipes(spec)
        for device in dict.fromkeys(spec.devices)
        if not device_can_run(spec, device, recipe.target)
    ]


def export_groups(cells: list[Cell]) -> dict[tuple[str, str], list[Cell]]:
    """Cells by their export group (model, recipe), in the order the groups first appear."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    return groups


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard I/N` as (I, N), 1 <= I <= N; anything else is a ConfigError naming the flag."""
    parts = text.split("/")
    hint = "give --shard I/N with 1 <= I <= N, e.g. --shard 1/4"
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"invalid --shard {text!r}: expected I/N", hint=hint)
    index, count = int(parts[0]), int(parts[1])
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"invalid --shard {text}: I must be between 1 and N", hint=hint)
    return index, count


def shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """The cells of shard `index` of `count` (1-based), in matrix order. Export groups are
    ordered by their sorted key and dealt round robin, so the split depends only on the cells
    (not on the file's order or the machine) and a group is never divided."""
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"invalid shard {index}/{count}", hint="1 <= I <= N")
    keys = sorted(export_groups(cells), key=lambda group: f"{group[0]}|{group[1]}")
    mine = {key for position, key in enumerate(keys) if position % count == index - 1}
    return [cell for cell in cells if cell.group in mine]
