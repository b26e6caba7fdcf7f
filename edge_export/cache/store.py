"""The export cache on disk: one folder per key, published atomically, verified before use.

Layout under the cache root:
    entries/<key>/entry.json   the result entry and what `cache ls` shows; its mtime = last used
    entries/<key>/bundle/      the bundle as exported (manifest.json + every file it hashes)
    locks/<key>.lock           a file lock per key (fetch, put and delete take it)
    tmp/                       entries being written or deleted: never read as entries
An entry is written into tmp/ and renamed into entries/ in one step, and removed by renaming it
back into tmp/ first, so no reader ever sees half an entry, also after a crash or a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from edge_export import interrupts
from edge_export.cache.key import cache_key
from edge_export.files import file_hashes

LOCK_TIMEOUT_S = 600.0  # a fetch or put of a large bundle copies gigabytes; waiting longer means a stuck run
STALE_TMP_S = 24 * 3600.0  # a tmp entry of another host is left alone for this long


def default_cache_dir() -> Path:
    """$EDGE_EXPORT_CACHE, else ~/.cache/edge-export."""
    configured = os.environ.get("EDGE_EXPORT_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "edge-export"


class ExportCache:
    """Finished bundles keyed by everything that shaped them (see cache.key)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    key = staticmethod(cache_key)

    def entry_path(self, key: str) -> Path:
        """The folder of a published entry (it may not exist)."""
        return self.root / "entries" / key

    def has(self, key: str) -> bool:
        """Whether an entry is published under `key` (not verified: `fetch` does that)."""
        return (self.entry_path(key) / "entry.json").is_file()

    def fetch(self, key: str, dest: Path) -> dict[str, Any] | None:
        """Copy the cached bundle into the (empty) folder `dest` and return its cached result entry;
        None on a miss. Every copied file must match its manifest's sha256: a corrupt, truncated,
        missing or extra file deletes the entry, empties `dest` and returns None (never used)."""
        if not self.has(key):
            return None
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self._lock(key, required=False))
            except Timeout:  # another run holds the entry longer than a copy takes: export instead
                return None
            return self._fetch_locked(key, dest)

    def _fetch_locked(self, key: str, dest: Path) -> dict[str, Any] | None:
        entry = self.entry_path(key)
        if not (entry / "entry.json").is_file():
            return None  # deleted by another run since `has`
        try:
            meta = json.loads((entry / "entry.json").read_text())
            manifest = json.loads((entry / "bundle" / "manifest.json").read_text())
            artifact = manifest.get("artifact")
            ok = isinstance(meta.get("result"), dict) and isinstance(manifest.get("files"), dict)
            ok = ok and isinstance(artifact, str) and (entry / "bundle" / artifact).exists()
        except (OSError, ValueError, AttributeError):
            ok = False
        if ok:
            ok = _copy_verified(entry / "bundle", dest, manifest["files"])
        if not ok:
            _empty(dest)
            with contextlib.suppress(OSError):  # a read-only cache keeps it, but it is never used
                self.delete(key, locked=True)
            return None
        with contextlib.suppress(OSError):  # a read-only cache still serves hits
            os.utime(entry / "entry.json")
        return meta["result"]

    def put(self, key: str, bundle: Path, result_entry: Mapping[str, Any]) -> None:
        """Publish a finished bundle and its result entry under `key` (atomic: written into tmp/ and
        renamed). An entry already there is kept and marked used. Raises OSError when the cache
        cannot be written (read-only, full): the caller decides that an export goes on without it."""
        for folder in ("entries", "locks", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.sweep()
        with self._lock(key, required=True):
            final = self.entry_path(key)
            if self.has(key):  # another run published it first: keep that one
                with contextlib.suppress(OSError):
                    os.utime(final / "entry.json")
                return
            if final.exists():  # a folder without its entry.json (edited by hand): replace it
                self.delete(key, locked=True)
            tmp = self._tmp_path(key)
            interrupts.track(tmp)
            try:
                _copy_tree(bundle, tmp / "bundle")
                manifest = json.loads((tmp / "bundle" / "manifest.json").read_text())
                meta = {
                    "key": key, "created": _now(), "size_bytes": _size(tmp),
                    "model": manifest.get("model", {}).get("source"),
                    "model_sha256": manifest.get("model", {}).get("sha256"),
                    "target": manifest.get("target"), "recipe": manifest.get("recipe", {}).get("id"),
                    "result": dict(result_entry),
                }  # fmt: skip
                (tmp / "entry.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
                with interrupts.deferred():
                    os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                interrupts.untrack(tmp)

    def delete(self, key: str, *, locked: bool = False) -> bool:
        """Remove an entry (renamed out of entries/ first, so it vanishes in one step); False when
        another process holds its lock (`locked`: the caller holds it already)."""
        lock = contextlib.nullcontext() if locked else self._lock(key, required=False, timeout=0)
        try:
            with lock:
                entry = self.entry_path(key)
                if not entry.exists():
                    return True
                (self.root / "tmp").mkdir(parents=True, exist_ok=True)
                doomed = self._tmp_path(key, "deleted")
                os.rename(entry, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                return True
        except Timeout:
            return False

    def entries(self) -> list[dict[str, Any]]:
        """Every published entry, most recently used first: key, model, recipe, size, last used."""
        folder = self.root / "entries"
        rows = []
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            try:
                meta = json.loads((entry / "entry.json").read_text())
                used = (entry / "entry.json").stat().st_mtime
            except (OSError, ValueError):
                meta, used = None, 0.0
            if not isinstance(meta, dict) or not isinstance(meta.get("result"), dict):
                meta = {"model": "(damaged entry: the next fetch deletes it)", "result": {}}
            rows.append({
                "key": entry.name, "model": meta.get("model"), "model_sha256": meta.get("model_sha256"),
                "target": meta.get("target"), "recipe": meta.get("recipe"),
                "status": meta["result"].get("status"), "size_bytes": _size(entry),
                "created": meta.get("created"), "last_used": _iso(used), "last_used_ts": used,
            })  # fmt: skip
        return sorted(rows, key=lambda r: r["last_used_ts"], reverse=True)

    def prune(self, max_bytes: int) -> list[dict[str, Any]]:
        """Remove least recently used entries until the cache holds at most `max_bytes`; entries in
        use by another process are skipped. Returns the removed entries."""
        self.sweep()
        rows = self.entries()
        total = sum(r["size_bytes"] for r in rows)
        removed = []
        for row in reversed(rows):  # least recently used first
            if total <= max_bytes:
                break
            if self.delete(row["key"]):
                total -= row["size_bytes"]
                removed.append(row)
        return removed

    def sweep(self) -> None:
        """Remove what runs that died (SIGKILL, power loss) left in tmp/: this host's folders whose
        process is gone, and any folder older than a day."""
        folder = self.root / "tmp"
        for path in folder.iterdir() if folder.is_dir() else []:
            parts = path.name.split(".")  # key.host.pid.random.what (a host name may hold dots)
            with contextlib.suppress(OSError, ValueError, IndexError):
                mine = ".".join(parts[1:-3]) == socket.gethostname() and not _alive(int(parts[-3]))
                if mine or time.time() - path.lstat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(path, ignore_errors=True)

    def _tmp_path(self, key: str, what: str = "new") -> Path:
        return self.root / "tmp" / f"{key}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{what}"

    @contextlib.contextmanager
    def _lock(self, key: str, *, required: bool, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """The key's file lock. Not `required` (reads): a cache where no lock file can be made (a
        read-only cache) is read without one, which is safe since entries appear and vanish whole."""
        lock: FileLock | None = None
        try:
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.root / "locks" / f"{key}.lock", timeout=timeout)
            lock.acquire()
        except Timeout:
            raise
        except OSError:
            if required:
                raise
            lock = None
        try:
            yield
        finally:
            if lock is not None:
                lock.release()


def _copy_verified(source: Path, dest: Path, expected: Mapping[str, str]) -> bool:
    """Copy `source`'s files into `dest` and check each copy's sha256 against `expected` (the
    manifest's record); False on any difference, missing or extra file. A full `dest` disk raises."""
    try:
        _copy_tree(source, dest)
    except OSError as exc:
        _empty(dest)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise  # reading never fills a disk: `dest` is full, the entry is fine
        return False  # a cached file that cannot be read is as unusable as a corrupt one
    return file_hashes(dest) == dict(expected)


def _copy_tree(source: Path, dest: Path) -> None:
    """Copy a folder's contents into `dest`, raising the first OSError as it is: shutil.copytree
    folds them into one shutil.Error without an errno, and a full disk must stay recognisable."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):  # parents sort before their children
        target = dest / path.relative_to(source)
        if path.is_dir() and not path.is_symlink():
            target.mkdir(exist_ok=True)
        else:
            shutil.copy2(path, target, follow_symlinks=False)


def _empty(folder: Path) -> None:
    for path in list(folder.iterdir()) if folder.is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def _size(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _iso(timestamp: float) -> str | None:
    return (
        datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds") if timestamp else None
    )
