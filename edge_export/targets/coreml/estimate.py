"""The host estimate of a Core ML package: its weights, decompressed, inside the PyTorch model.

Core ML cannot predict on Linux, so what can be measured here is the error the package's stored
weights introduce (fp16 rounding, int8/int4 quantization, palettes): every float weight is read
back out of the saved package (package.decompressed_weights), matched to the PyTorch parameter it
came from, and copied into a copy of the reference model, which then runs through the shared
gates. int8 activations (int8-w8a8) are included: the package's quantize scales are read back
and applied to the same nn.Linear inputs. Not included: fp16 activation arithmetic and Core ML's
kernels. Results are labelled
`"measured_on": "host-estimate"`; a Mac measures the real thing.

MIL weight names come from torch.export placeholders ("p_model_encoder_layer_0_..._weight" plus
suffixes such as "_to_fp16"), so they are matched to parameter names by normalising both and
taking the longest suffix match with a compatible shape (transposed 2-D weights included).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_export.exporter.prepared import PreparedModel, TorchRunnable

_SUFFIXES = re.compile(r"(_to_fp16|_to_fp32|_cast_fp16|_cast_fp32|_quantized|_palettized|_dequantized)+$")


def mil_key(name: str) -> str:
    """A MIL weight name without its p_/b_/c_ prefix and cast/compression suffixes, lower case."""
    return re.sub(r"^[pbc]_", "", _SUFFIXES.sub("", name)).lower()


def torch_key(fqn: str) -> str:
    """A parameter's qualified name as MIL spells it (non-identifier characters -> '_'), lower case."""
    return re.sub(r"[^0-9a-zA-Z_]", "_", fqn).lower()


def match(key: str, candidates: list[str]) -> str | None:
    """The candidate equal to key, or the longest that one ends with the other on a '_' boundary."""
    if key in candidates:
        return key
    hits = [c for c in candidates if key.endswith("_" + c) or c.endswith("_" + key)]
    return max(hits, key=len) if hits else None


def load_weights(module: torch.nn.Module, weights: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Copy read-back weights into `module` in place; returns what matched and what did not."""
    params = dict(module.named_parameters(remove_duplicate=False))  # tied weights under every name
    params.update({k: v for k, v in module.named_buffers() if v.is_floating_point()})
    by_key = {torch_key(k): k for k in params}
    loaded, unmatched = {}, []
    with torch.no_grad():
        for name, array in weights.items():
            key = match(mil_key(name), list(by_key))
            target = params[by_key[key]] if key else None
            if target is None:
                unmatched.append(name)
                continue
            if tuple(array.shape) == tuple(target.shape):
                value = array
            elif array.ndim == 2 and tuple(array.shape[::-1]) == tuple(target.shape):
                value = array.T
            elif array.size == target.numel():
                value = array.reshape(tuple(target.shape))
            else:
                unmatched.append(name)
                continue
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(target.dtype))
            loaded[id(target)] = name
    unmatched = _match_by_content(module, {n: weights[n] for n in unmatched}, loaded)
    absent, identity = [], []
    with torch.no_grad():
        for fqn, param in module.named_parameters():
            if id(param) in loaded:
                continue
            if bool((param == 1).all()) or not param.any():
                identity.append(fqn)  # a scale of ones / a zero shift: the converter drops the no-op
            else:  # unused by the exported graph, or missed: any use must show, never pass
                absent.append(fqn)
                param.fill_(float("nan"))
    return {
        "weights_read": len(weights),
        "parameters_loaded": len(loaded),
        "unmatched_package_weights": unmatched[:20],
        "parameters_not_in_package": absent[:20],
        "identity_parameters": identity[:20],
    }


def _orientations(array: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """`array` as is and transposed (2-D), each only if it has `shape` (square: both)."""
    views = [array, array.T] if array.ndim == 2 else [array]
    return [v for v in views if tuple(v.shape) == shape]


def _match_by_content(
    module: torch.nn.Module, weights: Mapping[str, np.ndarray], loaded: dict[int, str]
) -> list[str]:
    """Package weights whose names the converter replaced (a folded constant such as Gemma's
    `1 + weight` norm scale, "add_54_to_fp16"; a transposed Conv1D, "transpose_0_..."), matched to
    the parameters still missing by their values: the closest of the same shape, as stored or as
    1 + w, within 10% relative error (the coarsest compression's noise is under that; unrelated
    tensors of a random model differ by ~140%). Returns the weights still unmatched."""
    remaining = dict(weights)
    with torch.no_grad():
        for param in module.parameters():
            if id(param) in loaded or not remaining:
                continue
            ref = param.detach().double().numpy()
            best: tuple[float, str, np.ndarray] | None = None
            for name, array in remaining.items():
                for view, offset in (
                    (v, o) for v in _orientations(array, tuple(param.shape)) for o in (0.0, 1.0)
                ):
                    goal = ref + offset
                    error = float(np.linalg.norm(view - goal) / max(np.linalg.norm(goal), 1e-12))
                    if best is None or error < best[0]:
                        best = (error, name, view - offset)
            if best is not None and best[0] < 0.1:
                param.copy_(torch.from_numpy(np.ascontiguousarray(best[2])).to(param.dtype))
                loaded[id(param)] = best[1]
                del remaining[best[1]]
    return list(remaining)


class HostEstimate(TorchRunnable):
    """The reference wrapper with the package's weights; `measured_on` says what it is."""

    measured_on = "host-estimate"

    def __init__(self, module: torch.nn.Module, model: PreparedModel, coverage: dict[str, Any]) -> None:
        super().__init__(module, model.io)
        self.coverage = coverage


def host_estimate(model: PreparedModel, path: Path, manifest: Mapping[str, Any]) -> HostEstimate:
    """Load the package's decompressed weights into a copy of the reference model.

    Parameters not found in the package are set to NaN rather than left at their fp32 values: a
    parameter the graph does not use (e.g. BERT's pooler under feature extraction) stays harmless,
    one that was missed makes the outputs NaN and the gates fail instead of overstating accuracy."""
    from edge_export.targets.coreml.activations import fake_quant_hooks, package_activation_scales
    from edge_export.targets.coreml.package import decompressed_weights, load_program

    module = copy.deepcopy(model.module).eval()
    coverage = load_weights(module, decompressed_weights(path))
    scales = package_activation_scales(load_program(path))
    if scales:  # int8 activations (int8-w8a8): the package's own scales on the same linear inputs
        coverage["activation_quantized_linears"] = fake_quant_hooks(module, scales)
        coverage["activation_scales_in_package"] = len(scales)
    return HostEstimate(module, model, coverage)
