"""Metadata a user adds to documents: `--meta key=value` on the command line and JSON sidecar files.

A sidecar sits beside its file as `NAME.EXT.meta.json` or `NAME.meta.json` (see ingest/discover.py) and holds one
JSON object; its keys go into the document's metadata, under any `--meta` pairs of the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctxqa.ingest.discover import SIDECAR_SUFFIX
from ctxqa.ingest.loaders import LoadError

__all__ = ["json_safe", "parse_meta_args", "read_sidecar"]


def parse_meta_args(items: Sequence[str]) -> dict[str, str]:
    """`--meta key=value` pairs; raises ValueError naming the bad item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--meta expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's object ({} without one); a sidecar that is not a JSON object fails the file, naming the fix."""
    side = path.with_name(path.name + SIDECAR_SUFFIX)
    if not side.is_file():
        side = path.with_name(path.stem + SIDECAR_SUFFIX)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LoadError(path, "corrupt", f"invalid JSON in sidecar {side.name} ({e})", "fix or remove the sidecar") from e
    if not isinstance(data, dict):
        raise LoadError(path, "corrupt", f"sidecar {side.name} does not hold a JSON object",
                        'write it as {"key": "value", ...}')
    return data


def json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata as it will read back from a JSON column (dates and other objects as strings)."""
    return json.loads(json.dumps(meta, default=str))
