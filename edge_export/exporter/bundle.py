"""Atomic output folders and bundle manifests.

Everything is built in a staging folder beside OUT and renamed into place only when the run
finishes; an error or Ctrl-C removes the staging folder, so OUT never holds half a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from edge_export import interrupts
from edge_export.errors import ConfigError
from edge_export.exporter.source import file_sha256

MANIFEST_SCHEMA = "edge-export/manifest@1"


class StagedOutput:
    """A staging folder for OUT; `commit()` moves it into place, `discard()` removes it."""

    def __init__(self, out: Path, force: bool) -> None:
        self.out = out.resolve()
        self.force = force
        if self.out.exists() and not force:
            raise ConfigError(
                f"output folder {out} already exists",
                hint="pass --force to replace it, or choose another --out",
            )
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"output path {out} exists and is not a folder", hint="choose another --out")
        self._created = [p for p in reversed(self.out.parents) if not p.exists()]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.out.parent / f".{self.out.name}.staging-{os.getpid()}"
        shutil.rmtree(self.path, ignore_errors=True)
        for folder in self._created:
            interrupts.track(folder)
        interrupts.track(self.path)
        self.path.mkdir()

    def commit(self) -> Path:
        """Replace OUT with the staged folder (the old OUT is removed only after the swap)."""
        old = None
        with interrupts.deferred():
            if self.out.exists():
                old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
                self.out.rename(old)
            self.path.rename(self.out)
            for path in [self.path, *self._created]:
                interrupts.untrack(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def discard(self) -> None:
        """Remove the staging folder and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)
        interrupts.untrack(self.path)
        for folder in reversed(self._created):
            interrupts.untrack(folder)  # parents this run created, deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def file_hashes(bundle: Path) -> dict[str, str]:
    """sha256 of every file in a bundle (relative posix paths), except manifest.json itself."""
    return {
        path.relative_to(bundle).as_posix(): file_sha256(path)
        for path in sorted(bundle.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }


def write_manifest(bundle: Path, manifest: dict[str, Any], hashes: dict[str, str] | None = None) -> Path:
    """Write manifest.json with the schema id and the sha256 of every other file.

    Pass `hashes` (from file_hashes) when rewriting a manifest whose files did not change: hashing
    a large model again costs seconds.
    """
    data = {
        "schema": MANIFEST_SCHEMA,
        **manifest,
        "files": hashes if hashes is not None else file_hashes(bundle),
    }
    path = bundle / "manifest.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def verify_bundle(bundle: Path) -> list[str]:
    """Files whose sha256 no longer matches the manifest (empty when the bundle is intact)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    actual = file_hashes(bundle)
    expected = manifest.get("files", {})
    return sorted(name for name in set(expected) | set(actual) if expected.get(name) != actual.get(name))
