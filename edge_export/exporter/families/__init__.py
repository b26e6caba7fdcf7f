"""Architecture families: each a small declarative module that knows its model types, tasks,
IO spec and export wrapper. Adding a family touches only its own module and this list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edge_export.errors import InputError

if TYPE_CHECKING:
    import torch

    from edge_export.exporter.iospec import IOSpec


class FamilyBuilder(Protocol):
    """Builds the export wrapper, its IO spec and example inputs for one task."""

    def __call__(
        self, hf_model: Any, task: str, extras: dict[str, Any]
    ) -> tuple[torch.nn.Module, IOSpec]: ...


@dataclass(frozen=True)
class Family:
    """A group of architectures exported the same way."""

    name: str
    model_types: tuple[str, ...]
    tasks: tuple[str, ...]
    build: FamilyBuilder


def all_families() -> list[Family]:
    """Every family, encoders first."""
    from edge_export.exporter.families import decoder, encoder

    return [encoder.FAMILY, decoder.FAMILY]


def family_for(model_type: str) -> Family:
    """The family that exports `model_type`, or an InputError listing the supported ones."""
    for family in all_families():
        if model_type in family.model_types:
            return family
    supported = "; ".join(f"{f.name}: {', '.join(f.model_types)}" for f in all_families())
    raise InputError(
        f"unsupported architecture '{model_type}'",
        hint=f"supported model types are {supported}",
    )
