"""The export cache: finished bundles reused when nothing that shaped them changed.

`export --cache` and `lab run` look a (model, recipe) up before exporting; a hit copies the verified
bundle and its recorded accuracy instead of converting and validating again (latency is always
measured again). `cache ls|prune` list and trim it. See store.py for the layout on disk and
key.py for what the key covers.
"""

from __future__ import annotations

from edge_export.cache.command import cache_command, parse_size
from edge_export.cache.key import cache_key, library_versions, model_files_sha256, text_sha256
from edge_export.cache.store import ExportCache, default_cache_dir

__all__ = [
    "ExportCache",
    "cache_command",
    "cache_key",
    "default_cache_dir",
    "library_versions",
    "model_files_sha256",
    "parse_size",
    "text_sha256",
]
