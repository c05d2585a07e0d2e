"""What identifies a document, found in the document itself (pure): a title worth showing, its date and period,
and the lines that tell it apart from its siblings. Both indexes see these lines with every chunk.

A folder of quarterly filings is the hard case this serves: every filing of a company talks about the same
things, and what tells them apart is on the first page ("For the quarterly period ended July 30, 2023", "NVIDIA
CORPORATION") or in the file name ("2023 Q2 NVDA.pdf"), while the PDF's Title field is an accession number.

- Title: the document's own title when it is worth showing; not an identifier ("0001045810-23-000175", a hash),
  another tool's file name ("Microsoft Word - report.docx", "Document1"), "untitled" or the like. Else the first
  page: the organisation and the document type ("NVIDIA CORPORATION FORM 10-Q"), or its first heading lines.
  Else the file name's stem.
- Date: metadata (front matter, a sidecar, `--meta date=`, or the PDF's "for the period ending ..." subject), the
  first page ("for the quarterly period ended ...", "published ..."), the file name, else the file's own date.
- Period: the calendar quarter a quarterly report covers (rag/periods.py), from the same places.

`CONTEXT_VERSION` changes when these rules, or what a loader reads from a file, do: documents are then read again
on the next ingest, and only chunks whose embedded text changed are embedded again. (2: PDF hyphens that PDFium
reports as U+FFFE are kept as "-", no longer dropped.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any, Literal

from ctxqa.rag.periods import dates_in, period_ended, quarter_label, quarter_of_period, quarters_in
from ctxqa.rag.types import LoadedDocument

CONTEXT_VERSION = 2
Provenance = Literal["metadata", "first page", "file name", "file date"]

_TOOL_TITLE_RE = re.compile(
    r"^(?:untitled\b.*|microsoft (?:word|powerpoint|excel) - .*|document\s*\d*|slide\s*\d+|powerpoint presentation|"
    r"presentation\d*|book\d*|untitled document|new document|draft|\W*)$", re.I)
_FILE_NAME_RE = re.compile(r"\.(?:docx?|pdf|xlsx?|pptx?|txt|html?|rtf|odt|indd|qxd|tex|md)$", re.I)
_HEXISH_RE = re.compile(r"\b[0-9a-f]{12,}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-", re.I)
# Legal-entity words, companies first: a cover page names its regulator too ("SECURITIES AND EXCHANGE COMMISSION").
_COMPANY_RE = re.compile(
    r"\b(?:CORPORATION|CORP|INCORPORATED|INC|LTD|LIMITED|LLC|L\.L\.C|PLC|COMPANY|GROUP|HOLDINGS|AG|SE|N\.V|S\.A|"
    r"GMBH)\b\.?")
_ORGANISATION_RE = re.compile(r"\b(?:BANK|TRUST|UNIVERSITY|INSTITUTE|FOUNDATION|ASSOCIATION|AGENCY|MINISTRY|"
                              r"DEPARTMENT|COMMISSION|COUNCIL|OFFICE)\b")
_FORM_RE = re.compile(r"^\s*(FORM\s+[\w-]+|(?:ANNUAL|QUARTERLY|INTERIM|SEMI-ANNUAL)\s+REPORT)\b", re.I)
_BOILERPLATE_RE = re.compile(
    r"^(?:table of contents|contents|united states|securities and exchange commission|washington, d\.?c\.?.*|"
    r"\(mark one\)|page \d+.*|\d+|or)$", re.I)
_PUBLISHED_RE = re.compile(r"\b(?:published|publication date|dated|date|issued|released|last updated|updated)\b[:\s]",
                           re.I)
_YEARISH_RE = re.compile(r"(?<!\d)(?:19|20)\d{2}(?!\d)|\bQ[1-4]\b", re.I)
FIRST_PAGE_CHARS = 3000


@dataclass(frozen=True)
class DocContext:
    title: str
    title_source: Provenance
    date: date | None
    date_source: Provenance | None
    period: str | None  # "2023 Q2": the calendar quarter a quarterly report covers
    lines: tuple[str, ...] = ()  # what tells the document apart, besides its title

    @property
    def header(self) -> str:
        """What both indexes see of the document with each of its chunks: the title, then the other lines."""
        parts = [self.title]
        for line in self.lines:
            if line.lower() not in " ".join(parts).lower():
                parts.append(line)
        return " · ".join(parts)


def worth_showing(title: str | None) -> bool:
    """A title a reader would recognise the document by (see the module docstring)."""
    t = " ".join((title or "").split())
    if len(t) < 3 or _TOOL_TITLE_RE.match(t) or _FILE_NAME_RE.search(t) or _HEXISH_RE.search(t):
        return False
    letters = sum(ch.isalpha() for ch in t)
    return letters >= 3 and letters / len(t.replace(" ", "")) >= 0.5


def first_page(doc: LoadedDocument) -> str:
    if doc.pages:
        p = doc.pages[0]
        return doc.text[p.start:p.end][:FIRST_PAGE_CHARS]
    return doc.text[:FIRST_PAGE_CHARS]


def _lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def _entity(lines: list[str]) -> str | None:
    """An organisation's name, as printed on a cover page: an all-capitals line with a legal-entity word (a
    company's before any other organisation's)."""
    caps = []
    for line in lines[:60]:
        letters = [ch for ch in line if ch.isalpha()]
        if 3 <= len(line) <= 80 and letters and sum(ch.isupper() for ch in letters) / len(letters) > 0.9 \
                and not _BOILERPLATE_RE.match(line) and "EXCHANGE COMMISSION" not in line:
            caps.append(line)
    for rx in (_COMPANY_RE, _ORGANISATION_RE):
        for line in caps:
            if rx.search(line):
                return line.strip(" ,.")
    return None


def _form(lines: list[str]) -> str | None:
    for line in lines[:30]:
        m = _FORM_RE.match(line)
        if m:
            return " ".join(m.group(1).split()).upper()
    return None


def _heading(lines: list[str]) -> str | None:
    """The first line that reads like a title: a few words, mostly capitalised, not a sentence or boilerplate."""
    for line in lines[:15]:
        words = line.split()
        if not 2 <= len(words) <= 16 or line.endswith((".", ",", ";")) or _BOILERPLATE_RE.match(line):
            continue
        caps = sum(w[:1].isupper() or not w[:1].isalpha() for w in words) / len(words)
        if caps >= 0.6 and worth_showing(line):
            return line
    return None


def _period_line(page: str) -> tuple[str, date] | None:
    m = re.search(r"[^\n]*\b(?:period|quarter|year|months)\s+end(?:ed|ing)\b[^\n]*", page, re.I)
    if not m:
        return None
    end = period_ended(m.group(0))
    if end is None:
        return None
    return " ".join(m.group(0).split()).strip(" ☒☐☑"), end


def _published(page: str) -> date | None:
    for m in _PUBLISHED_RE.finditer(page):
        ds = dates_in(page[m.end(): m.end() + 60])
        if ds:
            return ds[0]
    return None


def _quarter_end(year: int, quarter: int) -> date:
    return date(year, 3 * quarter, 1) + timedelta(days=31) - timedelta(days=(date(year, 3 * quarter, 1)
                                                                              + timedelta(days=31)).day)


def _iso(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str | int) and str(value).strip():
        ds = dates_in(str(value))
        if ds:
            return ds[0]
        m = re.fullmatch(r"\s*((?:19|20)\d{2})(?:-(\d{1,2}))?\s*", str(value))
        if m:
            return date(int(m.group(1)), int(m.group(2) or 1), 1)
    return None


def document_context(doc: LoadedDocument, source: str, user_meta: dict[str, Any], mtime: datetime) -> DocContext:
    """The document's title, date, period and identifying lines (see the module docstring)."""
    stem = PurePosixPath(source).stem
    page = first_page(doc)
    lines = _lines(page)
    meta = {**doc.metadata, **user_meta}

    # Title.
    own = user_meta.get("title") or doc.title or doc.metadata.get("title")
    entity, form = _entity(lines), _form(lines)
    title_source: Provenance
    if worth_showing(own):
        title, title_source = " ".join(str(own).split()), "metadata"
    elif entity or form:
        title, title_source = " ".join(x for x in (entity, form) if x), "first page"
    elif (heading := _heading(lines)) is not None:
        title, title_source = heading, "first page"
    else:
        title, title_source = stem, "file name"

    # Date and period.
    found = _period_line(page)
    quarterly = found is not None and re.search(r"quarter|three months", found[0], re.I) is not None
    named = quarters_in(stem) | quarters_in(title)
    day: date | None = None
    date_source: Provenance | None = None
    # What the user says first, then the period a report covers, then what the file's metadata says.
    if (d := _iso(user_meta.get("date"))) is not None:
        day, date_source = d, "metadata"
    elif (d := period_ended(str(meta.get("subject") or ""))) is not None:
        day, date_source = d, "metadata"
    elif found is not None:
        day, date_source = found[1], "first page"
    elif (d := _iso(doc.metadata.get("date"))) is not None:
        day, date_source = d, "metadata"
    elif (d := _published(page)) is not None:
        day, date_source = d, "first page"
    elif dates_in(stem):
        day, date_source = dates_in(stem)[0], "file name"
    elif named:
        y, q = max(named)
        day, date_source = _quarter_end(y, q), "file name"
    else:
        day, date_source = mtime.date(), "file date"
    # A quarter the file name or the title names is how the user files the document (often the company's own
    # fiscal quarter): it wins over the calendar quarter computed from the period's dates.
    period = None
    if named:
        period = quarter_label(*max(named))
    elif quarterly and found is not None:
        period = quarter_label(*quarter_of_period(found[1]))
    elif date_source == "metadata" and re.search(r"period ending", str(meta.get("subject") or ""), re.I) and day:
        period = quarter_label(*quarter_of_period(day))

    extra: list[str] = []
    if found is not None:
        extra.append(found[0] + (f" ({period})" if period and period not in found[0] else ""))
    elif period:
        extra.append(period)
    if entity and entity not in title:
        extra.append(entity)
    if title_source != "file name" and stem not in title and _YEARISH_RE.search(stem):
        extra.append(stem)  # a file name that names the period or the company is what users search by
    return DocContext(title[:1000], title_source, day, date_source, period, tuple(extra))
