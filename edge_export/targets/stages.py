"""Steps every target shares: one quiet export stage whose library failure becomes ExportError naming
the stage, and the pre-flight view of a model's linear layers (the model-dependent checks of
quantizing recipes; option values themselves are checked by each recipe's options model).

Shared by the targets whose libraries raise arbitrary exceptions from deep inside their passes
(ExecuTorch, litert-torch): the user gets exit 3, the stage, and the library's own first line.
"""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edge_export import interrupts
from edge_export.errors import ConfigError, ExportError
from edge_export.quiet import native_stderr_captured, quiet

if TYPE_CHECKING:
    import torch

    from edge_export.targets.base import Recipe

T = TypeVar("T")
LinearShapes = list[tuple[str, tuple[int, ...]]]


def run_stage(target: str, stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call fn(*args, **kwargs) with library chatter captured; failures -> ExportError(target, stage)."""
    try:
        with quiet(), native_stderr_captured():  # native kernels and converters log on fd 2
            return fn(*args, **kwargs)
    except (ConfigError, ExportError):
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the machine, not the converter: the run stops
            raise
        raise _export_error(target, stage, exc) from exc
    except Exception as exc:
        raise _export_error(target, stage, exc) from exc


def _export_error(target: str, stage: str, exc: Exception) -> ExportError:
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return ExportError(target, stage, f"{type(exc).__name__}: {first}".rstrip(": "))


def linear_shapes(model: Any) -> LinearShapes:
    """(name, weight shape) of every nn.Linear of the model (what weight quantizers act on)."""
    import torch

    return [
        (name, tuple(module.weight.shape))
        for name, module in model.hf_model.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]


def require_linear_layers(model: Any, recipe: Recipe, fallback: str) -> LinearShapes:
    """The model's linear layers; an int8 / int4 recipe is refused when there are none, because
    weight quantizers act on nothing else and the "quantized" artifact would be the float model.
    `fallback` names the float recipes to use instead."""
    linears = linear_shapes(model)
    if recipe.precision in ("int8", "int4") and not linears:
        raise ConfigError(f"{recipe.id}: the model has no linear layers to quantize", hint=f"use {fallback}")
    return linears


def require_divisible(recipe: Recipe, linears: LinearShapes, option: str) -> None:
    """Refuse a block or group size (the option `option`) that does not divide every linear layer's
    input size: block-wise int4 kernels (torchao, ai-edge-quantizer, coremltools) cut the input
    dimension into whole blocks and fail deep inside the converter on a remainder."""
    size = int(recipe.options[option])
    bad = [name for name, shape in linears if shape[-1] % size]
    if bad:
        raise ConfigError(
            f"{recipe.id}: {len(bad)} linear layers (e.g. {bad[0]}) have an input size "
            f"not divisible by {option} {size}",
            hint=f"choose a smaller {option}",
        )


def outlier_names(peaks: Mapping[str, float], ratio: float) -> list[str]:
    """Names whose peak |activation| exceeds `ratio` x the median peak, sorted.

    One per-tensor int8 scale cannot hold an input whose range is hundreds of times the usual one
    (the "massive activations" of LLM down-projections): every other value would round to zero, so
    static int8 recipes leave those layers' inputs in float. A ratio of 0 (or less) marks none."""
    if not peaks or ratio <= 0:
        return []
    import numpy as np

    median = float(np.median(list(peaks.values())))
    return sorted(name for name, peak in peaks.items() if peak > ratio * max(median, 1e-12))


class Scratch:
    """A target's temporary folder for conversions it reuses across recipes: created on first use,
    removed at exit and on Ctrl-C, handing out a fresh subfolder per conversion (never one an
    earlier, possibly failed, conversion wrote to)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def fresh(self) -> Path:
        """A new empty folder inside the scratch folder."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix=self._prefix)
            interrupts.track(Path(self._dir.name))
        return Path(tempfile.mkdtemp(dir=self._dir.name))


def _conv1d_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str, Any]]:
    """(qualified name, parent, attribute, module) of every transformers Conv1D (GPT-2's layers)."""
    from transformers.pytorch_utils import Conv1D

    return [
        (f"{prefix}.{name}".lstrip("."), parent, name, child)
        for prefix, parent in model.named_modules()
        for name, child in parent.named_children()
        if isinstance(child, Conv1D)
    ]


def conv1d_to_linear(model: torch.nn.Module) -> int:
    """In place: each transformers Conv1D (y = x @ W + b, W [in, out]) becomes the same nn.Linear
    (weight W.T), so the quantizers, which match linear layers only (torchao 8da4w, XNNPACK's PT2E
    int8), quantize GPT-2's body instead of leaving it fp32. Returns how many were replaced."""
    import torch

    found = _conv1d_modules(model)
    for _, parent, name, conv in found:
        weight = conv.weight.detach()
        linear = torch.nn.Linear(weight.shape[0], weight.shape[1], bias=conv.bias is not None)
        linear.weight = torch.nn.Parameter(weight.t().contiguous())
        if conv.bias is not None:
            linear.bias = torch.nn.Parameter(conv.bias.detach().clone())
        setattr(parent, name, linear)
    return len(found)


def conv1d_shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, linear-layout weight shape [out, in]) of every Conv1D, for the group-size checks."""
    return [(qual, tuple(conv.weight.shape[::-1])) for qual, _, _, conv in _conv1d_modules(model)]
