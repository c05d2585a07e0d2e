"""Markdown: YAML front matter -> metadata (removed from the text), ATX/setext headings -> sections.

The body is kept as written (formatting included); only newlines are normalised and control characters
dropped. Lines inside fenced code blocks are never headings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rag.types import LoadedDocument, Section

from .base import LoadError, clean_inline, iso_date, jsonable, normalize_text, read_bytes
from .text import decode_file

SUFFIXES = (".md", ".markdown", ".mdown", ".mkd", ".mkdn")

_FRONT_OPEN_RE = re.compile(r"\A---[ \t]*\n")
_FRONT_CLOSE_RE = re.compile(r"^(?:---|\.\.\.)[ \t]*$", re.M)
_ATX_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_RE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_ATTR_LIST_RE = re.compile(r"\s*\{[^{}]*\}\s*$")  # "{ #anchor }" / "{#id .class}" after a heading
_LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPH_RE = re.compile(r"(\*\*|__|`)")
_HTML_TAG_RE = re.compile(r"<[^>]+>")
_LIST_OR_QUOTE_RE = re.compile(r"^ {0,3}(?:[*+-][ \t]|\d{1,9}[.)][ \t]|>|\|)")


def heading_text(raw: str) -> str:
    """The words of a heading: attribute lists, closing #s, links, emphasis markers and tags removed."""
    s = _ATTR_LIST_RE.sub("", raw)
    s = _LINK_RE.sub(r"\1", s)
    s = _HTML_TAG_RE.sub("", s)
    s = _EMPH_RE.sub("", s)
    return clean_inline(s)


def split_front_matter(text: str) -> tuple[dict[str, Any] | None, str, str | None]:
    """(metadata or None, body, warning). The body is the text after the closing fence line."""
    if not _FRONT_OPEN_RE.match(text):
        return None, text, None
    start = text.index("\n") + 1
    close = _FRONT_CLOSE_RE.search(text, start)
    if close is None:
        return None, text, None
    raw = text[start:close.start()]
    end = close.end()
    if end < len(text) and text[end] == "\n":
        end += 1
    try:
        import yaml

        data = yaml.safe_load(raw) if raw.strip() else {}
    except Exception as e:  # noqa: BLE001 - malformed YAML: keep the text, warn
        return None, text, f"front matter is not valid YAML ({type(e).__name__}); kept as text"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, text, "front matter is not a YAML mapping; kept as text"
    return jsonable(data), text[end:], None


def find_headings(text: str) -> list[tuple[int, int, str]]:
    """(char offset of the heading's first line, level, heading text) for every ATX/setext heading."""
    out: list[tuple[int, int, str]] = []
    fence: tuple[str, int] | None = None  # (char, length) of the open code fence
    para_start: int | None = None  # offset of the first line of the current paragraph
    para_lines: list[str] = []
    prev_kind = "blank"
    pos = 0
    for line in text.split("\n"):
        line_start = pos
        pos += len(line) + 1
        if fence is not None:
            m = _FENCE_RE.match(line)
            if m and m[1][0] == fence[0] and len(m[1]) >= fence[1] and not m[2].strip():
                fence = None
            prev_kind = "code"
            continue
        m = _FENCE_RE.match(line)
        if m and not (m[1][0] == "`" and "`" in m[2]):
            fence = (m[1][0], len(m[1]))
            para_start, para_lines, prev_kind = None, [], "code"
            continue
        if not line.strip():
            para_start, para_lines, prev_kind = None, [], "blank"
            continue
        m = _ATX_RE.match(line)
        if m:
            text_ = heading_text(m[2] or "")
            if text_:
                out.append((line_start, len(m[1]), text_))
            para_start, para_lines, prev_kind = None, [], "heading"
            continue
        m = _SETEXT_RE.match(line)
        if m and prev_kind == "para" and para_start is not None:
            text_ = heading_text(" ".join(s.strip() for s in para_lines))
            if text_:
                out.append((para_start, 1 if m[1][0] == "=" else 2, text_))
            para_start, para_lines, prev_kind = None, [], "heading"
            continue
        if line.startswith(("    ", "\t")) and prev_kind != "para":
            prev_kind = "indented"  # indented code block
            continue
        if _LIST_OR_QUOTE_RE.match(line) or line.lstrip().startswith("<"):
            # list items, quotes, tables and raw HTML are not setext heading content
            para_start, para_lines, prev_kind = None, [], "other"
            continue
        if prev_kind != "para":
            para_start, para_lines = line_start, []
        para_lines.append(line)
        prev_kind = "para"
    return out


def build_sections(text: str, headings: list[tuple[int, int, str]]) -> list[Section]:
    """Flat, ordered, non-overlapping sections covering the whole text, each with its full heading path."""
    sections: list[Section] = []
    if not text:
        return sections
    if not headings:
        return [Section((), 0, len(text))]
    if headings[0][0] > 0:
        sections.append(Section((), 0, headings[0][0]))
    stack: list[tuple[int, str]] = []
    for i, (start, level, title) in enumerate(headings):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        end = headings[i + 1][0] if i + 1 < len(headings) else len(text)
        sections.append(Section(tuple(t for _, t in stack), start, end))
    return sections


def parse_markdown(text: str) -> tuple[str, dict[str, Any], list[Section], str | None, list[str]]:
    """(body text, metadata, sections, title, warnings) of already-decoded Markdown."""
    warnings: list[str] = []
    text = normalize_text(text)
    front, body, warn = split_front_matter(text)
    if warn:
        warnings.append(warn)
    metadata: dict[str, Any] = dict(front or {})
    headings = find_headings(body)
    sections = build_sections(body, headings)
    title = metadata.get("title")
    title = clean_inline(str(title)) if isinstance(title, (str, int, float)) and str(title).strip() else None
    if title is None:
        title = next((t for _, level, t in headings if level == 1), None)
    if title:
        metadata.setdefault("title", title)
    if "date" in metadata:
        d = iso_date(metadata["date"])
        if d:
            metadata["date"] = d
    return body, metadata, sections, title, warnings


def load(path: Path, *, password: str | None = None) -> LoadedDocument:  # noqa: ARG001 - uniform signature
    path = Path(path)
    data = read_bytes(path)
    raw, encoding = decode_file(path, data)
    body, metadata, sections, title, warnings = parse_markdown(raw)
    if not body.strip():
        raise LoadError(path, "empty", "the file holds front matter but no text" if metadata else "the file holds no text")
    if encoding not in ("utf-8", "ascii"):
        warnings.append(f"decoded as {encoding}")
    return LoadedDocument(
        text=body,
        media_type="text/markdown",
        title=title,
        metadata=metadata,
        sections=sections,
        warnings=warnings,
    )
