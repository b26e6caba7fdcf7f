"""`edge-export cache ls` and `edge-export cache prune --max-size SIZE`."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from edge_export.cache.store import ExportCache, default_cache_dir
from edge_export.errors import ConfigError
from edge_export.files import describe_os_error

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from a size such as 20G, 500M, 1.5T, 300KiB or 0 (binary units: 1K = 1024 bytes)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"invalid --max-size {text!r}: not a size",
            hint="give a number with an optional unit K, M, G or T, e.g. 20G, 500M or 0",
        )
    power = " kmgt".index(match[2].lower() or " ")
    return int(float(match[1]) * 1024**power)


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB' (what `cache ls` prints)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def cache_command(args: argparse.Namespace) -> int:
    """List or prune the export cache (args: cache_command "ls"|"prune", cache, max_size, json)."""
    cache = ExportCache(args.cache or default_cache_dir())
    if cache.root.exists() and not cache.root.is_dir():
        raise ConfigError(f"cache folder {cache.root} is a file", hint="pass --cache with a folder")
    max_bytes = parse_size(args.max_size) if args.cache_command == "prune" else None
    try:
        removed = cache.prune(max_bytes) if max_bytes is not None else None
        rows = [_public(r) for r in cache.entries()]
    except OSError as exc:
        raise describe_os_error(exc, "--cache") from exc
    total = sum(r["size_bytes"] for r in rows)
    payload: dict[str, Any] = {"cache": str(cache.root), "total_bytes": total, "entries": rows}
    if removed is not None:
        payload["removed"] = [_public(r) for r in removed]
        payload["freed_bytes"] = sum(r["size_bytes"] for r in removed)
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        _print_table(payload)
    return 0


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "last_used_ts"}


def _print_table(payload: dict[str, Any]) -> None:
    for row in payload.get("removed", []):
        print(f"removed {row['key'][:12]}  {row['recipe']}  {human_size(row['size_bytes'])}")
    rows = payload["entries"]
    if rows:
        print(f"{'KEY':<12}  {'MODEL':<40}  {'RECIPE':<24}  {'SIZE':>10}  LAST USED")
    for row in rows:
        model = str(row["model"] or "-")
        model = model if len(model) <= 40 else "..." + model[-37:]
        used = (row["last_used"] or "-").replace("T", " ").replace("+00:00", " UTC")
        print(
            f"{row['key'][:12]:<12}  {model:<40}  {row['recipe'] or '-'!s:<24}  "
            f"{human_size(row['size_bytes']):>10}  {used}"
        )
    count = len(rows)
    print(
        f"{count} cached export{'' if count == 1 else 's'}, {human_size(payload['total_bytes'])} "
        f"in {payload['cache']}"
    )
