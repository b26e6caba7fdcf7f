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
from edge_export.errors import ConfigError, InputError
from edge_export.files import describe_os_error, file_hashes, read_json_file
from edge_export.run.manifest_check import MANIFEST_SCHEMA, check_manifest


class StagedOutput:
    """A staging folder for OUT; `commit()` moves it into place, `discard()` removes it.

    OUT is checked before anything is created: it may not be (or hold, or sit inside) any of the
    `protect` paths (the model's own files), and an existing OUT is replaced under --force only
    when everything in it was written by edge-export."""

    def __init__(self, out: Path, force: bool, protect: tuple[Path, ...] = ()) -> None:
        try:
            self.out = out.resolve()
            check_output_folder(out, self.out, force, protect)
            self._created = [p for p in reversed(self.out.parents) if not p.exists()]
        except OSError as exc:
            raise describe_os_error(exc, "--out") from exc
        self.force = force
        self.path = self.out.parent / f".{self.out.name}.staging-{os.getpid()}"
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.path, ignore_errors=True)
            for folder in self._created:
                interrupts.track(folder)
            interrupts.track(self.path)
            self.path.mkdir()
        except OSError as exc:
            self.discard()
            raise describe_os_error(exc, "--out") from exc

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


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(given: Path, out: Path, force: bool, protect: tuple[Path, ...]) -> None:
    """Refuse an OUT that would overwrite the model or anything edge-export did not write."""
    for path in protect:
        if _inside(out, path) or _inside(path, out):
            relation = "is" if out == path else ("is inside" if _inside(out, path) else "contains")
            raise ConfigError(
                f"output folder {given} {relation} the model's files ({path}); replacing it would delete them",
                hint="choose an --out outside the model folder",
            )
    if not out.exists() and not out.is_symlink():
        parent = next((p for p in out.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ConfigError(f"the parent of --out {given} is a file: {parent}", hint="choose another --out")
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(
                f"cannot create --out {given}: {parent} is not writable", hint="choose another --out"
            )
        return
    if not force:
        raise ConfigError(
            f"output folder {given} already exists",
            hint="pass --force to replace it, or choose another --out",
        )
    if not out.is_dir():
        raise ConfigError(f"output path {given} exists and is not a folder", hint="choose another --out")
    foreign = foreign_entries(out)
    if foreign:
        raise ConfigError(
            f"--force would delete {out / foreign[0]}, which edge-export did not write "
            f"({len(foreign)} such entr{'y' if len(foreign) == 1 else 'ies'} in {given})",
            hint="move it away, or choose another --out",
        )
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot replace --out {given}: {out.parent} is not writable", hint="choose another --out"
        )


# Files a run (or a lab run) writes at the top of OUT besides bundle folders.
OUTPUT_FILES = ("report.json", "report.html", "junit.xml", "lab.json")


def _is_ours(entry: Path) -> bool:
    """An entry edge-export wrote: a known report file or a bundle folder with our manifest."""
    if entry.is_symlink():
        return False
    if entry.is_file():
        return entry.name in OUTPUT_FILES and _schema(entry).startswith("edge-export/")
    manifest = entry / "manifest.json"
    return entry.is_dir() and manifest.is_file() and _schema(manifest).startswith("edge-export/manifest@")


def _schema(path: Path) -> str:
    if path.suffix != ".json":
        return "edge-export/"  # report.html, junit.xml: known names, no schema field to read
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(data.get("schema", "")) if isinstance(data, dict) else ""


def foreign_entries(out: Path) -> list[str]:
    """Names at the top of an existing OUT that edge-export did not write (sorted); [] when OUT
    holds only a previous run's report and bundles (or nothing)."""
    return sorted(entry.name for entry in out.iterdir() if not _is_ours(entry))


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


def verify_bundle(bundle: Path, manifest: dict[str, Any] | None = None) -> list[str]:
    """Files whose sha256 no longer matches the manifest (empty when the bundle is intact)."""
    if manifest is None:
        manifest = json.loads((bundle / "manifest.json").read_text())
    actual = file_hashes(bundle)
    expected = manifest.get("files", {})
    return sorted(name for name in set(expected) | set(actual) if expected.get(name) != actual.get(name))


def read_bundle(bundle: Path) -> dict[str, Any]:
    """The manifest of an intact bundle; InputError when missing, malformed or modified."""
    if not bundle.exists():
        raise InputError(f"bundle {bundle} does not exist", hint="pass a bundle folder from OUT")
    if not bundle.is_dir():
        raise InputError(
            f"bundle {bundle} is a file, not a bundle folder", hint="pass a bundle folder from OUT"
        )
    manifest_file = bundle / "manifest.json"
    if not manifest_file.is_file():
        raise InputError(
            f"{bundle} is not a bundle (no manifest.json)", hint="pass a folder made by edge-export export"
        )
    manifest = read_json_file(manifest_file, "manifest")
    check_manifest(manifest, str(manifest_file))
    if not (bundle / manifest["artifact"]).exists():
        raise InputError(
            f"bundle {bundle} lacks its artifact {manifest['artifact']}", hint="re-export the bundle"
        )
    changed = verify_bundle(bundle, manifest)
    if changed:
        raise InputError(
            f"bundle files changed since export: {', '.join(changed[:5])}", hint="re-export the bundle"
        )
    return manifest
