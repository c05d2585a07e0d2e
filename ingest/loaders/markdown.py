"""Markdown: YAML front matter -> metadata (removed from the text), ATX/setext headings -> sections.

The body is rendered to readable text (`render_inline`) before headings are found, so section offsets index
into the returned text. Inline links `[text](url "title")` and reference links `[text][ref]` keep only their
text, images `![alt](src)` only their alt text, autolinks `<https://x>` only their URL; link reference
definition lines, HTML comments, <script>/<style> elements and inline HTML tags (`<abbr ...>`, `</div>`,
`<img ...>`, `<br/>`...) are removed, keeping the text between tags. A line left empty by that (a tag-only line
such as `<div class="termy">`) disappears with its newline; lines that were blank stay, lines are never joined.
Why: URLs and markup are noise for the embedder and BM25, and every chunk is embedded. On the FastAPI docs
(155 pages) the raw text is 517k MiniLM word pieces and the rendered text 333k (-36%; release-notes.md, two
GitHub URLs a line, 289k -> 129k), and snippets/citations read as prose. LlamaIndex's MarkdownReader drops
hyperlinks and images by default too.

Protected, byte for byte: fenced code blocks (``` and ~~~), indented code blocks and inline code spans
(`` `[x](y)` ``). Kept as written: emphasis, list markers, tables, heading `#`s, blockquotes, admonitions,
bare URLs, and `<`/`>` that are not tags (`a < b`, `x -> y`, `<= 5`). Otherwise only newlines are normalised
and control characters dropped. Lines inside fenced code blocks are never headings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ctxqa.ingest.loaders.base import LoadError, clean_inline, iso_date, jsonable, normalize_text, read_bytes
from ctxqa.ingest.loaders.text import decode_file
from ctxqa.rag.types import LoadedDocument, Section

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


# --- render_inline ------------------------------------------------------------------------------------------
# Link text: no brackets, or one level of nested brackets ("[@pr-submit[bot]](url)", "[![alt](img)](url)").
_R_TEXT = r"(?:\\.|[^\[\]\\\n]|\[(?:\\.|[^\[\]\\\n])*\])*"
# Link destination (one level of balanced parentheses, or <...>) and optional title.
_R_DEST = (r"\([ \t]*(?:<[^<>\n]*>|(?:\\.|[^\s()\\]|\((?:\\.|[^\s()\\])*\))*)"
           r"""(?:[ \t]+(?:"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|\((?:\\.|[^()\\\n])*\)))?[ \t]*\)""")
_R_LABEL = r"(?:\\.|[^\[\]\\\n])"
_IMAGE_RE = re.compile(r"(?<!\\)!\[(" + _R_TEXT + r")\]" + _R_DEST)
_INLINE_LINK_RE = re.compile(r"(?<!\\)\[(" + _R_TEXT + r")\]" + _R_DEST)
_REF_LINK_RE = re.compile(r"(?<!\\)(!?)\[(" + _R_TEXT + r")\]\[(" + _R_LABEL + r"{0,999})\]")
_SHORTCUT_REF_RE = re.compile(r"(?<![\\\]])(!?)\[(" + _R_TEXT + r")\](?![\[(:])")
_REF_DEF_RE = re.compile(r"^ {0,3}\[(?!\^)(" + _R_LABEL + r"{1,999})\]:[ \t]*(?:<[^<>\n]*>|\S+)"
                         r"""(?:[ \t]+(?:"[^"\n]*"|'[^'\n]*'|\([^()\n]*\)))?[ \t]*$""", re.M)
_AUTOLINK_RE = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*|[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
                          r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                          r"[A-Za-z0-9])?)*)>")
# Real tags only (CommonMark raw HTML): "<name attr=... >", "</name>"; "a < b", "x -> y", "<= 5" are prose.
_TAG_RE = re.compile(r"""<[A-Za-z][A-Za-z0-9-]*(?:\s+[A-Za-z_:][A-Za-z0-9_.:-]*(?:\s*=\s*(?:[^\s"'=<>`]+|'[^']*'"""
                     r"""|"[^"]*"))?)*\s*/?>|</[A-Za-z][A-Za-z0-9-]*\s*>""")
# Removed with their content, possibly over several lines: comments, <script>/<style> (code, not prose).
_HIDDEN_OPEN_RE = re.compile(r"<!--|<(script|style)(?=[\s/>])", re.I)
_HIDDEN_CLOSE = {"": re.compile("-->"), "script": re.compile(r"</script\s*>", re.I),
                 "style": re.compile(r"</style\s*>", re.I)}
_CODE_SPAN_RE = re.compile(r"(?<![`\\])(`+)(?!`).*?(?<!`)\1(?!`)")
_PLACEHOLDER_RE = re.compile("\x00(\\d+)\x01")
_ANY_FENCE_RE = re.compile(r"^([ \t]*)(`{3,}|~{3,})(.*)$")
_LIST_ITEM_RE = re.compile(r"^([ \t]*)([*+-]|\d{1,9}[.)])([ \t]+|$)")
_ADMONITION_RE = re.compile(r"^([ \t]*)(?:!!!|\?\?\?\+?)[ \t]")
_BLANK_OK_SETEXT_RE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")


def _indent(line: str) -> int:
    n = 0
    for ch in line:
        if ch == " ":
            n += 1
        elif ch == "\t":
            n += 4 - n % 4
        else:
            break
    return n


def _label(s: str) -> str:
    return " ".join(s.casefold().split())


def _drop_hidden(line: str) -> tuple[str, re.Pattern[str] | None]:
    """Remove comments and <script>/<style> elements: (rest of the line, closing pattern of one left open)."""
    parts: list[str] = []
    pos = 0
    while True:
        m = _HIDDEN_OPEN_RE.search(line, pos)
        if m is None:
            parts.append(line[pos:])
            return "".join(parts), None
        start = m.end()
        if m[1]:
            start = line.find(">", start) + 1  # end of the <script ...> / <style ...> tag
            if not start:  # no ">" left on the line: not a tag, and no later one can be
                parts.append(line[pos:])
                return "".join(parts), None
        parts.append(line[pos:m.start()])
        closing = _HIDDEN_CLOSE[(m[1] or "").lower()]
        end = closing.search(line, start)
        if end is None:
            return "".join(parts), closing
        pos = end.end()


def _render_text(line: str, refs: set[str]) -> tuple[str, re.Pattern[str] | None]:
    """One line of prose (no code) -> (rendered line, closing pattern of a comment/script/style left open)."""
    spans: list[str] = []
    if "`" in line:
        def keep(m: re.Match[str]) -> str:
            spans.append(m[0])
            return f"\x00{len(spans) - 1}\x01"
        line = _CODE_SPAN_RE.sub(keep, line)
    hidden = None
    if "<" in line:
        line, hidden = _drop_hidden(line)
        line = _AUTOLINK_RE.sub(r"\1", line)
    if "[" in line:
        if "](" in line:
            line = _IMAGE_RE.sub(r"\1", line)
            line = _INLINE_LINK_RE.sub(r"\1", line)
        if refs:
            def ref(m: re.Match[str]) -> str:
                return m[2] if _label(m[3] or m[2]) in refs else m[0]

            def shortcut(m: re.Match[str]) -> str:
                return m[2] if _label(m[2]) in refs else m[0]
            if "][" in line:
                line = _REF_LINK_RE.sub(ref, line)
            line = _SHORTCUT_REF_RE.sub(shortcut, line)
    if "<" in line:
        line = _TAG_RE.sub("", line)
    if spans:
        line = _PLACEHOLDER_RE.sub(lambda m: spans[int(m[1])], line)
    return line, hidden


def render_inline(body: str) -> str:
    """Readable text of a Markdown body: links, images, reference definitions, comments and tags rendered away.

    Code (fenced, indented, inline spans) is kept byte for byte; a line that was not blank and is left empty is
    removed with its newline; every other line keeps its place and its markup (emphasis, lists, tables, `#`s).
    Expects normalised text (`normalize_text`: no NULs, LF newlines).
    """
    if "[" not in body and "<" not in body:
        return body
    refs = {_label(m[1]) for m in _REF_DEF_RE.finditer(body)} if "]:" in body else set()
    lines = body.split("\n")
    out: list[str] = []
    fence: tuple[str, int] | None = None  # (char, length) of the open code fence
    code_min: int | None = None  # indentation of the open indented code block
    hidden: re.Pattern[str] | None = None  # closing pattern of an open comment / <script> / <style>
    items: list[int] = []  # content indentation of the open list items / admonitions
    prev_blank = True  # the previous line was blank, a heading, or the start (an indented code block may start)
    for i, line in enumerate(lines):
        if fence is not None:
            out.append(line)
            m = _ANY_FENCE_RE.match(line)
            if m and m[2][0] == fence[0] and len(m[2]) >= fence[1] and not m[3].strip():
                fence = None
                prev_blank = True
            continue
        blank = not line.strip()
        if hidden is not None:
            if blank:
                out.append(line)
                continue
            end = hidden.search(line)
            if end is None:
                continue  # inside a comment / script / style: dropped
            hidden = None
            rest = line[end.end():]
            if rest.strip():
                rendered, hidden = _render_text(rest, refs)
                if rendered.strip():
                    out.append(rendered.rstrip())
            prev_blank = False
            continue
        if blank:
            out.append(line)
            prev_blank = True
            continue
        indent = _indent(line)
        if code_min is not None:
            if indent >= code_min:
                out.append(line)
                continue
            code_min = None
        if prev_blank:
            while items and indent < items[-1]:
                items.pop()
        base = items[-1] if items else 0
        if prev_blank and indent >= base + 4:
            code_min = base + 4
            out.append(line)
            continue
        m = _ANY_FENCE_RE.match(line)
        if m and not (m[2][0] == "`" and "`" in m[3]):
            fence = (m[2][0], len(m[2]))
            out.append(line)
            continue
        m = _LIST_ITEM_RE.match(line)
        if m:
            while items and items[-1] > indent:
                items.pop()
            gap = _indent(m[3]) if m[3] else 1
            items.append(indent + len(m[2]) + (gap if 1 <= gap <= 4 else 1))
        else:
            m = _ADMONITION_RE.match(line)
            if m:
                while items and items[-1] > indent:
                    items.pop()
                items.append(indent + 4)
        prev_blank = _ATX_RE.match(line) is not None
        if "[" not in line and "<" not in line:
            out.append(line)
            continue
        if refs and "]:" in line and _REF_DEF_RE.match(line):
            continue  # a link reference definition: not prose
        rendered, hidden = _render_text(line, refs)
        if rendered == line:
            out.append(line)
        elif rendered.strip():
            out.append(rendered.rstrip())
        elif i + 1 < len(lines) and _BLANK_OK_SETEXT_RE.match(lines[i + 1]):
            out.append("")  # dropping it would turn the previous line into a setext heading
        # else: a line that held only tags/comments/an empty image: removed with its newline
    return "\n".join(out)


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
    body = render_inline(body)
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
