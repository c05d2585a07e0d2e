"""HTML via selectolax (lexbor): main text without boilerplate, headings -> sections, <head> metadata.

Encoding: BOM, UTF-16 sniffing, then the declared charset (<meta charset>, http-equiv, XML declaration),
then UTF-8, charset-normalizer and cp1252. Block elements become line breaks (paragraph-like ones a blank
line), table cells are joined with " | ", list items get a "- " bullet, <pre> keeps its layout and all other
whitespace is collapsed. Hidden elements (hidden, aria-hidden, display:none) are dropped.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any

from ctxqa.ingest.loaders.base import (
    LoadError,
    clean_inline,
    decode_text,
    iso_date,
    read_bytes,
    sniff_bom,
    sniff_utf16_without_bom,
)
from ctxqa.ingest.loaders.markdown import build_sections
from ctxqa.rag.types import LoadedDocument

SUFFIXES = (".html", ".htm", ".xhtml")

_DECLARED_RE = re.compile(
    rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)|<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""",
    re.I,
)
# Single-byte charsets that WHATWG maps to windows-1252 (and that are often mis-declared over UTF-8 bytes).
_AS_CP1252 = {"iso8859-1", "iso-8859-1", "latin-1", "latin1", "l1", "ascii", "us-ascii", "cp1252", "windows-1252",
              "iso_8859_1", "iso8859_1", "cp819"}

_DROP_ALWAYS = ("script", "style", "noscript", "template", "svg", "math", "canvas", "iframe", "object", "embed",
                "select", "button", "input", "textarea", "nav", "aside", "dialog", "head")
_HIDDEN_SELECTOR = ('[hidden], [aria-hidden="true"], [style*="display:none" i], [style*="display: none" i], '
                    '[style*="visibility:hidden" i], [style*="visibility: hidden" i]')

# Block elements: number of newlines they force around themselves (2 = blank line = paragraph boundary).
_BLOCK_BREAKS = {
    **dict.fromkeys(("p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "ul", "ol", "dl",
                     "section", "article", "main", "figure", "hr", "header", "footer", "address", "details",
                     "fieldset", "form", "center", "body"), 2),
    **dict.fromkeys(("div", "li", "tr", "dt", "dd", "caption", "figcaption", "summary", "legend", "thead", "tbody",
                     "tfoot", "option", "label"), 1),
}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_CELLS = ("td", "th")
_WS_RE = re.compile(r"[\s\u00a0\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]+")
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")

_META_FIELDS: dict[str, tuple[str, ...]] = {
    "description": ("description", "og:description", "twitter:description", "dc.description"),
    "author": ("author", "article:author", "dc.creator", "dcterms.creator", "byl", "parsely-author"),
    "date": ("article:published_time", "og:published_time", "datepublished", "date", "dc.date", "dc.date.issued",
             "dcterms.created", "dcterms.date", "pubdate", "publish-date", "publish_date", "sailthru.date",
             "parsely-pub-date", "citation_publication_date", "citation_date"),
    "modified": ("article:modified_time", "og:updated_time", "datemodified", "dcterms.modified", "last-modified"),
    "keywords": ("keywords", "news_keywords"),
    "og_title": ("og:title", "twitter:title", "dc.title"),
    "site_name": ("og:site_name", "application-name"),
    "url": ("og:url",),
}


def _norm_encoding(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_html(data: bytes) -> tuple[str, str]:
    """(text, encoding) of HTML bytes; see the module docstring for the order."""
    bom = sniff_bom(data)
    if bom:
        enc, n = bom
        return data[n:].decode(enc, errors="replace"), enc
    u16 = sniff_utf16_without_bom(data)
    if u16:
        return data.decode(u16, errors="replace"), u16
    m = _DECLARED_RE.search(data[:8192])
    declared = None
    if m:
        raw = (m[1] or m[2]).decode("ascii", "replace").lower()
        declared = "cp1252" if raw in _AS_CP1252 else _norm_encoding(raw)
        if declared and declared.startswith(("utf-16", "utf_16", "utf-32", "utf_32")):
            declared = "utf-8"  # a UTF-16 document would have had a BOM or NULs; WHATWG says utf-8 here
    if declared and declared not in ("utf-8",):
        if declared == "cp1252":
            try:
                text = data.decode("utf-8")
                if any(b > 127 for b in data[:200_000]):
                    return text, "utf-8"  # declared latin-1 but the bytes are valid UTF-8: mis-declared
            except UnicodeDecodeError:
                pass
        try:
            return data.decode(declared), declared
        except (UnicodeDecodeError, LookupError):
            pass
    return decode_text(data)


class _TextBuilder:
    """Accumulates output text with lazy block breaks, cell separators and collapsed spaces."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n = 0
        self.trailing_newlines = 0  # how many "\n" the output currently ends with
        self.line_has_content = False
        self.pending_break = 0
        self.pending_space = False
        self.pending_sep: str | None = None  # separator before the next text of this line ("" = glue)
        self.inline_depth = 0

    def _emit(self, s: str) -> None:
        self.parts.append(s)
        self.n += len(s)
        stripped = s.rstrip("\n")
        if stripped:
            self.trailing_newlines = len(s) - len(stripped)
            self.line_has_content = self.trailing_newlines == 0
        else:
            self.trailing_newlines += len(s)
            self.line_has_content = False

    def block(self, newlines: int) -> None:
        if self.inline_depth:  # inside a table cell rendered on one line
            self.pending_space = True
            return
        if self.n:
            self.pending_break = max(self.pending_break, newlines)
        self.pending_space = False
        self.pending_sep = None

    def cell(self, sep: str = " | ") -> None:
        if self.line_has_content and not self.pending_break:
            self.pending_sep = sep
        self.pending_space = False

    def flush_break(self) -> None:
        if self.pending_break and self.n:
            need = self.pending_break - self.trailing_newlines
            if need > 0:
                self._emit("\n" * need)
        self.pending_break = 0

    def _prefix(self) -> None:
        if self.pending_break and self.n:
            self.flush_break()
            self.pending_space = False
            self.pending_sep = None
        self.pending_break = 0
        if self.pending_sep is not None and self.line_has_content:
            if self.pending_sep.strip() or (self.pending_sep and not self.parts[-1].endswith(" ")):
                self._emit(self.pending_sep)
        elif self.pending_space and self.line_has_content and not self.parts[-1].endswith(" "):
            self._emit(" ")
        self.pending_sep = None
        self.pending_space = False

    def text(self, s: str) -> None:
        s = _WS_RE.sub(" ", _CONTROL_RE.sub("", s))
        if not s.strip():
            if s:
                self.pending_space = True
            return
        lead, trail = s[0] == " ", s[-1] == " "
        s = s.strip(" ")
        if lead:
            self.pending_space = True
        self._prefix()
        self._emit(s)
        self.pending_space = trail

    def raw(self, s: str) -> None:
        """Preformatted text: newlines and indentation kept, trailing spaces and controls dropped."""
        s = s.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
        s = _CONTROL_RE.sub("", s)
        s = re.sub(r"[ \t]+\n", "\n", s)
        if not s.strip():
            return
        if not self.line_has_content or self.pending_break:
            s = s.lstrip("\n")
        self._prefix()
        self._emit(s)

    def literal(self, s: str) -> None:
        """Text that is not collapsed (bullets)."""
        self._prefix()
        self._emit(s)

    def result(self) -> str:
        return "".join(self.parts).rstrip()


_CURRENCY = {"$", "€", "£", "¥", "US$", "C$", "A$"}
_INLINE_CELL_MAX = 2000  # a cell with more text than this (or a nested table) is a layout cell: keep its blocks


def _walk(root: Any, builder: _TextBuilder, headings: list[tuple[int, int, str]]) -> None:
    """Depth-first traversal with explicit enter/exit events (no recursion: deep documents exist)."""
    # stack entries: (node, exiting, inline_cell)
    stack: list[tuple[Any, bool, bool]] = [(root, False, False)]
    pre_depth = 0
    prev_cell = ""  # text of the previous non-empty cell of the current row
    while stack:
        node, exiting, inline_cell = stack.pop()
        tag = node.tag
        if exiting:
            if tag == "pre":
                pre_depth -= 1
            if inline_cell:
                builder.inline_depth -= 1
            brk = _BLOCK_BREAKS.get(tag)
            if brk:
                builder.block(brk)
            continue
        if tag == "-text":
            s = node.text_content
            if s:
                if pre_depth:
                    builder.raw(s)
                else:
                    builder.text(s)
            continue
        if tag is None or tag.startswith("-"):  # comments, doctype
            continue
        if tag == "br":
            builder.block(1)
            continue
        brk = _BLOCK_BREAKS.get(tag)
        if brk:
            builder.block(brk)
        inline = False
        if tag == "tr":
            prev_cell = ""
        elif tag in _CELLS:
            cell_text = clean_inline(node.text(deep=True) or "")
            if not cell_text:
                continue  # spacer cell: no separator, nothing to say
            if prev_cell in _CURRENCY:
                sep = " "  # "$ | 1,234" reads better as "$ 1,234"
            elif cell_text[0] in ")%":
                sep = ""  # "(1,234 | )" -> "(1,234)"
            else:
                sep = " | "
            prev_cell = cell_text
            builder.cell(sep)
            if len(cell_text) <= _INLINE_CELL_MAX and node.css_first("table, h1, h2, h3, h4, h5, h6, pre") is None:
                inline = True
                builder.inline_depth += 1
        elif tag == "li":
            builder.literal("- ")
        elif tag in _HEADINGS:
            title = clean_inline(node.text(deep=True) or "")
            if title and not builder.inline_depth:
                builder.flush_break()
                headings.append((builder.n, _HEADINGS[tag], title))
        elif tag == "pre":
            pre_depth += 1
        stack.append((node, True, inline))
        children = []
        child = node.child
        while child is not None:
            children.append(child)
            child = child.next
        for child in reversed(children):
            stack.append((child, False, False))


def _metadata(tree: Any) -> tuple[dict[str, Any], str | None]:
    """(metadata, <title>) from the document head."""
    meta: dict[str, Any] = {}
    for node in tree.css("meta"):
        attrs = node.attributes
        key = (attrs.get("property") or attrs.get("name") or attrs.get("itemprop") or attrs.get("http-equiv") or "")
        content = attrs.get("content")
        if not key or content is None:
            continue
        key = key.strip().lower()
        content = clean_inline(content)
        if not content:
            continue
        for field_name, keys in _META_FIELDS.items():
            if key in keys and field_name not in meta:
                meta[field_name] = content
    canonical = tree.css_first('link[rel="canonical" i]')
    if canonical is not None and canonical.attributes.get("href"):
        meta["url"] = canonical.attributes["href"].strip()
    html_node = tree.css_first("html")
    if html_node is not None and html_node.attributes.get("lang"):
        meta["lang"] = html_node.attributes["lang"].strip()
    if "date" in meta:
        meta["date"] = iso_date(meta["date"]) or meta["date"]
    else:
        t = tree.css_first("article time[datetime], main time[datetime]")
        if t is not None:
            d = iso_date(t.attributes.get("datetime"))
            if d:
                meta["date"] = d
    if "modified" in meta:
        meta["modified"] = iso_date(meta["modified"]) or meta["modified"]
    title_node = tree.css_first("head title") or tree.css_first("title")
    title = clean_inline(title_node.text(deep=True) or "") if title_node is not None else ""
    return meta, (title or None)


def _choose_root(tree: Any) -> Any:
    """<main> / a single <article> / [role=main] when it holds the bulk of the text, else <body>."""
    body = tree.body or tree.root
    body_len = len((body.text(deep=True) or "").strip()) if body is not None else 0
    candidates = tree.css("main") or []
    if not candidates:
        articles = tree.css("article")
        candidates = articles if len(articles) == 1 else []
    if not candidates:
        candidates = tree.css('[role="main"]')
    for cand in candidates[:1]:
        n = len((cand.text(deep=True) or "").strip())
        if n >= 200 or (body_len and n >= 0.5 * body_len):
            return cand, True
    return body, False


def parse_html(source: str) -> tuple[str, dict[str, Any], list, str | None]:
    """(text, metadata, sections, title) of decoded HTML."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(source)
    metadata, title = _metadata(tree)
    for sel in (",".join(_DROP_ALWAYS), _HIDDEN_SELECTOR):
        for node in tree.css(sel):
            node.decompose()
    root, is_main = _choose_root(tree)
    if root is None:
        return "", metadata, [], title
    for node in root.css("footer" if is_main else "header, footer"):
        node.decompose()
    builder = _TextBuilder()
    headings: list[tuple[int, int, str]] = []
    _walk(root, builder, headings)
    text = builder.result()
    headings = [(min(s, len(text)), lvl, t) for s, lvl, t in headings if s < len(text)]
    sections = build_sections(text, headings)
    if not title:
        title = metadata.get("og_title") or next((t for _, lvl, t in headings if lvl == 1), None)
    if title:
        metadata.setdefault("title", title)
    return text, metadata, sections, title


def load(path: Path, *, password: str | None = None) -> LoadedDocument:  # noqa: ARG001 - uniform signature
    path = Path(path)
    data = read_bytes(path)
    if not data.strip():
        raise LoadError(path, "empty", "the file is empty")
    source, encoding = decode_html(data)
    try:
        text, metadata, sections, title = parse_html(source)
    except LoadError:
        raise
    except Exception as e:  # noqa: BLE001 - parser failures become LoadError
        raise LoadError(path, "corrupt", f"cannot parse HTML: {type(e).__name__}: {e}") from e
    if not text.strip():
        raise LoadError(path, "empty", "the page holds no visible text")
    metadata["encoding"] = encoding
    doc = LoadedDocument(text=text, media_type="text/html", title=title, metadata=metadata, sections=sections)
    if encoding not in ("utf-8", "ascii"):
        doc.warnings.append(f"decoded as {encoding}")
    return doc
