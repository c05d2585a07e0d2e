"""The vocabulary of cited metadata: key aliases, block refs, and how cited values are normalised before they are
compared with a block's BEGINCONTEXT pairs."""

from __future__ import annotations

import re

REF_RE = re.compile(r"^\[?\s*(?:block\s*)?b(\d{1,4})\s*\]?$", re.IGNORECASE)
URL_RE = re.compile(r"^(?:https?|ftp)://\S+$|^www\.\S+$", re.IGNORECASE)

KEY_ALIASES: dict[str, str] = {
    "block id": "block",
    "block ref": "block",
    "input": "block",
    "input block": "block",
    "file": "source",
    "filename": "source",
    "file name": "source",
    "path": "source",
    "document": "source",
    "doc": "source",
    "sources": "source",
    "link": "url",
    "uri": "url",
    "website": "url",
    "web": "url",
    "pages": "page",
    "page number": "page",
    "p": "page",
    "pp": "page",
    "published": "date",
    "publication date": "date",
    "authors": "author",
}
# Keys that mean "block" when the value is a block ref ("ref: B2") and "source" otherwise ("reference: a.md").
AMBIGUOUS_KEYS = frozenset({"ref", "reference", "references", "citation", "id"})
KNOWN_KEYS = frozenset({"block", "source", "title", "page", "date", "url", "author", "journal", "publisher"})
# Keys that alone make a trailing run of metadata lines a sources section even without a heading.
IDENTIFYING_KEYS = frozenset({"block", "source", "url"})


def canonical_key(key: str, value: str = "") -> str:
    """The metadata key a cited key stands for ("file" -> "source", "link" -> "url", "ref: B2" -> "block")."""
    if key in AMBIGUOUS_KEYS:
        return "block" if REF_RE.match(strip_md(value)) else "source"
    return KEY_ALIASES.get(key, key)


def strip_md(s: str) -> str:
    """Remove markdown emphasis/code markers and angle brackets around a key or value."""
    s = re.sub(r"^(?:\*\*|__|\*|_|`)+|(?:\*\*|__|\*|_|`)+$", "", s.strip()).strip()
    if s.startswith("<") and s.endswith(">") and len(s) > 2:
        s = s[1:-1].strip()
    return s




def norm(s: str) -> str:
    """Case-insensitive, whitespace-normalised, surrounding quotes and trailing punctuation removed."""
    s = re.sub(r"\s+", " ", s).strip().strip("\"'`“”‘’«»").strip()
    return s.rstrip(".,;").casefold()


def norm_url(s: str) -> str:
    s = norm(s).strip("<>")
    s = re.sub(r"^[a-z][a-z0-9+.\-]*://", "", s)
    s = re.sub(r"^www\.", "", s)
    return s.rstrip("/")


def norm_path(s: str) -> str:
    s = norm(s).replace("\\", "/")
    s = re.sub(r"^file://", "", s)
    return re.sub(r"^\./", "", s).rstrip("/")


def path_match(cited: str, actual: str) -> bool:
    """Equal paths, or one is a suffix of the other at a "/" boundary (a.md vs docs/a.md)."""
    a, b = norm_path(cited), norm_path(actual)
    if not a or not b:
        return False
    if a == b:
        return True
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return long_.endswith("/" + short)


def pages_of(value: str) -> list[int]:
    """Pages named by a value: "3", "p. 3", "3-4", "3, 5", "pages 3–4". Ranges are expanded (capped)."""
    pages: list[int] = []
    for lo, hi in re.findall(r"(\d+)(?:\s*[-–—]\s*(\d+))?", value):
        a = int(lo)
        b = int(hi) if hi else a
        if b < a or b - a > 1000:
            b = a
        pages.extend(range(a, b + 1))
    return pages
