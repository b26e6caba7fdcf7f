"""The shape a bundle's manifest.json must have before `validate` or `bench` trusts any of it.

A manifest is read from disk where anyone can edit it, so every key the commands use is checked
first (types included), and its paths must stay inside the bundle. A bad one is one InputError
line naming the first problem, never a KeyError or a traceback.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_export.errors import InputError

MANIFEST_SCHEMA = "edge-export/manifest@1"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _ModelPart(_Open):
    source: str
    sha256: str


class _RecipePart(_Open):
    id: str = Field(pattern=r"^[a-z0-9_-]+:[a-z0-9_.-]+$")
    precision: str
    options: dict[str, Any] = Field(default_factory=dict)


class _Tensor(_Open):
    name: str


class _IoPart(_Open):
    kind: str
    inputs: list[_Tensor]


class ManifestHead(_Open):
    """The keys every command reads; more may be present."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_: str = Field(alias="schema")
    model: _ModelPart
    task: str
    target: str
    recipe: _RecipePart
    artifact: str
    io: _IoPart
    files: dict[str, str]

    @field_validator("artifact")
    @classmethod
    def _inside_bundle(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
            raise ValueError("must be a file name inside the bundle")
        return value


def check_manifest(data: Any, where: str) -> None:
    """Raise InputError unless `data` is a manifest of our schema with every key the commands use."""
    hint = "pass a bundle folder written by edge-export export, or re-export it"
    if not isinstance(data, dict):
        raise InputError(f"{where} is not a bundle manifest (a JSON object is expected)", hint=hint)
    schema = data.get("schema")
    if schema != MANIFEST_SCHEMA:
        shown = repr(schema)[:60] if schema is not None else "none"
        raise InputError(
            f"{where} has schema {shown}; this edge-export reads {MANIFEST_SCHEMA}",
            hint=hint if schema is None else "re-export the bundle with this edge-export version",
        )
    try:
        ManifestHead.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        problem = "is missing" if error["type"] == "missing" else f"is invalid: {error['msg']}"
        raise InputError(f"{where}: key '{key}' {problem}", hint=hint) from exc
