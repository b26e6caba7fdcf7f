"""The IO spec: names, dtypes and (symbolic) shapes of a model's inputs and outputs.

It is what every target exports against, what the manifest records, and what a device-side runtime
reads to feed the model. Symbolic dimensions are strings ("batch", "sequence", "past_sequence").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: numpy dtype name and shape with symbolic dims as strings."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass
class IOSpec:
    """Inputs and outputs of the exported graph, plus what a runtime needs to drive it."""

    kind: Literal["encoder", "decoder"]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    primary_output: str
    # Decoders with a KV cache: layers, kv heads and head size of each past/present tensor.
    cache: dict[str, int] = field(default_factory=dict)
    # Extra facts a runtime needs: pooling, normalisation, special token ids ...
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        """Input names in graph order."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names in graph order."""
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for manifest.json."""
        return {
            "kind": self.kind,
            "inputs": [asdict(t) | {"shape": list(t.shape)} for t in self.inputs],
            "outputs": [asdict(t) | {"shape": list(t.shape)} for t in self.outputs],
            "primary_output": self.primary_output,
            "cache": dict(self.cache),
            "extras": dict(self.extras),
        }
