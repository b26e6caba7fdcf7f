"""The structure stays as designed (DESIGN.md): imports only go down the floors, no import cycle
between top-level packages, the model side (exporter/) imports none of the rooms that use it, and
modules and functions stay small. Read from the source with `ast`, nothing imported."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edge_export"

# Floors, bottom first: a module may import its own floor's modules or lower floors, never higher.
FLOORS = [
    {
        "__init__",
        "errors",
        "quiet",
        "interrupts",
        "files",
        "demo_models",
    },  # demo_models: where the real models live
    {"exporter"},  # the model side: loading, families, IO specs, the prepared model
    {"devices", "report"},  # runners (and the self-contained agent); the typed result and its renderings
    {"validation"},  # metrics and gates against the PyTorch reference
    {"targets"},  # formats; use validation's shared gates and the agent's host runtimes
    {"config", "cache"},  # the export cache sits below run, which looks up and stores bundles
    {"run"},  # the only room that drives targets, validation and devices together
    {"lab"},
    {"api"},
    {"cli", "__main__"},
]
RANK = {room: floor for floor, rooms in enumerate(FLOORS) for room in rooms}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    """module -> the edge_export modules it imports (at any depth: lazy imports count too)."""
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    found: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            found[_module(path)] |= {n for n in names if n in modules}
    return found


def test_every_room_has_a_floor() -> None:
    rooms = {_room(_module(p)) for p in PACKAGE.rglob("*.py")}
    assert rooms - set(RANK) == set(), "give the new room a floor in FLOORS (and DESIGN.md)"


def test_no_upward_import() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in _imports().items()
        for target in targets
        if RANK[_room(target)] > RANK[_room(module)]
    )
    assert upward == []


def test_no_cycle_between_rooms() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, targets in _imports().items():
        graph[_room(module)] |= {_room(t) for t in targets} - {_room(module)}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    assert sorted(room for room in list(graph) if reaches(room, room, {room})) == []


def test_the_model_side_and_the_runners_stay_below() -> None:
    imports = _imports()
    exporter = {t for m, ts in imports.items() if _room(m) == "exporter" for t in ts}
    assert {_room(t) for t in exporter} <= {"exporter", *FLOORS[0]}
    devices = {t for m, ts in imports.items() if _room(m) == "devices" for t in ts}
    assert {_room(t) for t in devices} <= {"devices", *FLOORS[0]}  # no config, no exporter
    agent = {t for m, ts in imports.items() if m.startswith("edge_export.devices.agent") for t in ts}
    assert all(t.startswith("edge_export.devices.agent") for t in agent)  # runs alone on a device
    registry_users = {m for m, ts in imports.items() for t in ts if t.startswith("edge_export.targets.") and
                      t.split(".")[2] in ("onnx", "coreml", "executorch", "tflite") and _room(m) != "targets"}  # fmt: skip
    assert registry_users == set(), "only targets/registry.py creates the built-in targets"


def test_modules_and_functions_stay_small() -> None:
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 400:
            long_modules.append(f"{_module(path)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append(f"{_module(path)}.{node.name}: {length} lines")
    assert long_modules == [] and long_functions == []
