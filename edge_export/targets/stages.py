"""One export step of a target, run quietly; a library failure becomes ExportError naming the stage.

Shared by the targets whose libraries raise arbitrary exceptions from deep inside their passes
(ExecuTorch, litert-torch): the user gets exit 3, the stage, and the library's own first line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from edge_export.errors import ConfigError, ExportError
from edge_export.quiet import native_stderr_captured, quiet

T = TypeVar("T")


def run_stage(target: str, stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call fn(*args, **kwargs) with library chatter captured; failures -> ExportError(target, stage)."""
    try:
        with quiet(), native_stderr_captured():  # native kernels and converters log on fd 2
            return fn(*args, **kwargs)
    except (ConfigError, ExportError):
        raise
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else ""
        raise ExportError(target, stage, f"{type(exc).__name__}: {first}".rstrip(": ")) from exc
