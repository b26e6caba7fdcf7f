"""Map a bundle's target name to the runtime adapter that loads it on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MissingRuntime(Exception):
    """The runtime a bundle needs is not installed on this device."""


class NotRunnableHere(MissingRuntime):
    """The bundle's runtime cannot exist on this kind of machine (a Core ML delegate off Apple)."""


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest.json."""
    return json.loads((bundle / "manifest.json").read_text())


def load_bundle(bundle: Path, threads: int | None = None) -> tuple[Any, dict[str, Any], str]:
    """(model adapter, manifest, runtime version) for a bundle folder."""
    manifest = read_manifest(bundle)
    target = manifest["target"]
    artifact = bundle / manifest["artifact"]
    if target == "onnx":
        try:
            from .onnx_model import OnnxModel, runtime_version

            version = runtime_version()
        except ImportError as exc:
            raise MissingRuntime("onnxruntime is not installed on this device") from exc
        return OnnxModel(artifact, threads), manifest, f"onnxruntime {version}"
    if target == "executorch":
        try:
            from .executorch_model import ExecutorchModel, host_can_run, runtime_version

            version = runtime_version()
        except ImportError as exc:
            raise MissingRuntime("executorch is not installed on this device") from exc
        reason = host_can_run(manifest)
        if reason:
            raise NotRunnableHere(reason)
        return ExecutorchModel(artifact, manifest, threads), manifest, f"executorch {version}"
    if target == "tflite":
        try:
            from .tflite_model import TfliteModel, runtime_version

            version = runtime_version()
        except ImportError as exc:
            raise MissingRuntime("ai-edge-litert is not installed on this device") from exc
        return TfliteModel(artifact, manifest, threads), manifest, f"ai-edge-litert {version}"
    if target == "coreml":
        from .coreml_model import CoremlModel, host_can_run, runtime_version

        reason = host_can_run()  # before importing coremltools, which takes seconds
        if reason:
            raise NotRunnableHere(reason)
        try:
            version = runtime_version()
        except ImportError as exc:
            raise MissingRuntime("coremltools is not installed on this device") from exc
        return CoremlModel(artifact, manifest), manifest, f"coremltools {version}"  # pragma: no cover
    raise MissingRuntime(f"no runtime adapter for target '{target}' on this device")
