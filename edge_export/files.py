"""Reading the user's files (config, inventory, data, manifests) and hashing: the bottom floor.

Every way a file the user named can be unusable (missing, a folder, unreadable, not UTF-8, not a
mapping) becomes one InputError line that names the flag it came from and the fix, and an OSError
raised anywhere while reading or writing the user's paths is described the same way
(`describe_os_error`). Imports nothing from the rest of edge-export but errors.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from edge_export.errors import ConfigError, EdgeExportError, InputError

# errno values that mean "the user's paths or machine", never a bug in edge-export.
USER_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ENOSPC,
    errno.EDQUOT, errno.EROFS, errno.ENOENT, errno.ELOOP, errno.EEXIST, errno.ENOTEMPTY, errno.EFBIG,
})  # fmt: skip


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of one file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in a bundle folder (relative posix paths), except manifest.json
    itself: what a manifest records, and what the bundle check and the export cache compare."""
    return {
        path.relative_to(folder).as_posix(): file_sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }


def _short(path: object, limit: int = 400) -> str:
    """A path for a one-line message (a name too long for the file system is cut in the middle)."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:120]}...{text[-60:]}"


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def describe_os_error(exc: OSError, what: str = "path", needed_bytes: int | None = None) -> InputError:
    """One line for an OSError on a user's path: what went wrong where, and the fix.

    `what` names the flag or role of the path (e.g. "--out", "--config"), so the fix can say which
    argument to change; `needed_bytes` is the space a run needs, for a full disk."""
    code = exc.errno
    # A copy (shutil's sendfile path) names the source first and the file it was writing second.
    path = (
        exc.filename2 if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and exc.filename2 else exc.filename
    )
    where = _short(path if path is not None else "")
    if code in (errno.EACCES, errno.EPERM):
        return InputError(
            f"permission denied: {where}", hint=f"choose a {what} you may use, or fix its permissions"
        )
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = free_bytes(Path(str(path))) if path else None
        facts = [f"{free / 2**20:.1f} MiB free there" if free is not None else ""]
        if needed_bytes:
            facts.append(f"this run needs about {needed_bytes / 2**20:.0f} MiB")
        detail = "; ".join(f for f in facts if f)
        return InputError(
            f"disk full while writing {where}" + (f" ({detail})" if detail else ""),
            hint=f"free some space, or choose a {what} (or TMPDIR) on a disk with more room",
        )
    if code == errno.EROFS:
        return InputError(f"read-only file system: {where}", hint=f"choose a writable {what}")
    if code == errno.EISDIR:
        return InputError(f"{where} is a folder, but a file is needed there", hint=f"pass a file as {what}")
    if code == errno.ENOTDIR:
        return InputError(
            f"{where}: a part of this path is a file, not a folder", hint=f"choose another {what}"
        )
    if code == errno.ENAMETOOLONG:
        return InputError(f"file name too long: {where}", hint=f"choose a shorter {what}")
    if code == errno.ENOENT:
        return InputError(f"{where} does not exist", hint=f"check the {what} path")
    if code == errno.ELOOP:
        return InputError(f"{where}: too many symbolic links", hint=f"check the {what} path")
    return InputError(f"cannot use {where}: {exc.strerror or exc}", hint=f"check the {what} path")


def read_user_text(
    path: Path, flag: str, error: type[EdgeExportError] = ConfigError, hint: str = "save the file as UTF-8"
) -> str:
    """The text of a file the user passed with `flag`; `error` (exit 2) for every way it can fail."""
    try:
        if path.is_dir():
            raise error(f"{flag} {_short(path)} is a folder", hint=f"{flag} takes a file")
        if not path.exists():
            raise error(f"{flag} file {_short(path)} does not exist", hint=f"check the {flag} path")
        raw = path.read_bytes()
    except OSError as exc:
        raise describe_os_error(exc, flag) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{flag} {_short(path)} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            hint=hint,
        ) from exc


def read_mapping_file(path: Path, flag: str) -> dict[str, Any]:
    """A YAML or TOML (by suffix) file holding a mapping at the top level; {} when empty."""
    import tomllib
    import yaml

    text = read_user_text(path, flag)
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, ValueError, RecursionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{flag} file {_short(path)} does not parse: {first}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} file {_short(path)} must hold a mapping of options at the top level")
    bad = next((k for k in data if not isinstance(k, str)), None)
    if bad is not None:
        raise ConfigError(f"{flag} file {_short(path)}: key {bad!r} is not a string", hint="quote it")
    return data


def read_json_file(path: Path, what: str, hint: str = "re-export the bundle") -> Any:
    """A JSON file (a bundle's manifest, a tokenizer file); InputError when unreadable or not JSON."""
    text = read_user_text(path, what, InputError, hint)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{what} {_short(path)} is not valid JSON ({exc.msg}, line {exc.lineno})", hint=hint
        ) from exc
    except RecursionError as exc:
        raise InputError(f"{what} {_short(path)} is nested too deeply to read", hint=hint) from exc
