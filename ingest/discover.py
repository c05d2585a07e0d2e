"""Walk the paths given to `ctxqa ingest`: hidden files and .gitignore'd paths skipped, include/exclude globs."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pathspec

SIDECAR_SUFFIX = ".meta.json"


@dataclass(frozen=True)
class Found:
    path: Path  # absolute
    root: Path  # the directory `source` is relative to
    source: str  # posix path relative to root


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str
    kind: str = "failed"  # failed: the user asked for something we cannot read; skipped: not ours to read


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _gitignore(dirpath: Path) -> pathspec.PathSpec | None:
    gi = dirpath / ".gitignore"
    if not gi.is_file():
        return None
    try:
        return pathspec.GitIgnoreSpec.from_lines(gi.read_text(errors="replace").splitlines())
    except (OSError, ValueError):
        return None


def _ignored(specs: list[tuple[Path, pathspec.PathSpec]], p: Path, is_dir: bool) -> bool:
    """Whether a .gitignore in effect for `p` excludes it."""
    for d, sp in specs:
        rel = p.relative_to(d).as_posix() + ("/" if is_dir else "")
        if sp.match_file(rel):
            return True
    return False


def discover(paths: Sequence[Path], suffixes: Collection[str], *, include: Sequence[str] = (),
             exclude: Sequence[str] = ()) -> Iterator[Found | Problem]:
    """Yield every file to ingest, in a stable order, or a Problem for a path that cannot be walked."""
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            yield Problem(path, f"path does not exist: {path} (check the spelling, or the current directory)")
            continue
        path = path.resolve()
        if path.is_file():
            yield Found(path, path.parent, path.name)
            continue
        if not os.access(path, os.R_OK | os.X_OK):
            yield Problem(path, f"directory is not readable: {path} (check its permissions)")
            continue
        # (directory, spec) pairs: a .gitignore applies to its directory and everything below it.
        specs: list[tuple[Path, pathspec.PathSpec]] = []
        for dirpath_s, dirnames, filenames in os.walk(path, onerror=None):
            dirpath = Path(dirpath_s)
            spec = _gitignore(dirpath)
            specs = [(d, sp) for d, sp in specs if d == dirpath or d in dirpath.parents]
            if spec is not None:
                specs.append((dirpath, spec))
            dirnames[:] = sorted(d for d in dirnames
                                 if not d.startswith(".") and not _ignored(specs, dirpath / d, True))
            for name in sorted(filenames):
                if name.startswith(".") or name.endswith(SIDECAR_SUFFIX):
                    continue
                fp = dirpath / name
                rel = fp.relative_to(path).as_posix()
                if _ignored(specs, fp, False):
                    continue
                if include and not _matches(rel, include):
                    continue
                if exclude and _matches(rel, exclude):
                    continue
                if fp.suffix.lower() not in suffixes:
                    yield Problem(fp, f"unsupported file type {fp.suffix or '(no extension)'}", "skipped")
                    continue
                yield Found(fp, path, rel)
