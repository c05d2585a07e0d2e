"""Periods: the dates, quarters and years a text names (pure).

Used on both sides of retrieval:
- ingestion reads a document's own period from its first page ("For the quarterly period ended July 30, 2023"),
  its metadata ("for the period ending 2023-07-30") or its file name ("2023 Q2 NVDA.pdf");
- retrieval reads what a question asks about ("in the Q2 2023 10-Q", "the second quarter of fiscal 2023", "for
  the quarter ended July 1, 2023", "in 2022") and whether it wants the newest document ("latest", "most recent").

A quarterly period is labelled by the calendar quarter its middle falls in: a quarter ended July 30, 2023 (May to
July) is "2023 Q2", one ended October 29, 2023 is "2023 Q3", one ended April 1, 2023 is "2023 Q1". That is how
filings are commonly named by their quarter whatever the company's fiscal calendar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta

_MONTHS = {m: i for i, m in enumerate(
    "january february march april may june july august september october november december".split(), 1)}
_MONTHS.update({m[:3]: i for m, i in list(_MONTHS.items())})
_MONTHS["sept"] = 9
_MONTH_RE = r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
_ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4}
_YEAR = r"((?:19|20)\d{2})"

# Dates written out: "July 30, 2023", "30 July 2023", "2023-07-30", "07/30/2023".
_DATE_RES = [
    (re.compile(rf"\b{_MONTH_RE}\s+(\d{{1,2}}),?\s+{_YEAR}\b", re.I), "mdy"),
    (re.compile(rf"\b(\d{{1,2}})\s+{_MONTH_RE},?\s+{_YEAR}\b", re.I), "dmy"),
    (re.compile(rf"\b{_YEAR}-(\d{{1,2}})-(\d{{1,2}})\b"), "iso"),
    (re.compile(rf"\b(\d{{1,2}})/(\d{{1,2}})/{_YEAR}\b"), "us"),
]
_MONTH_YEAR_RE = re.compile(rf"\b{_MONTH_RE}\s+{_YEAR}\b", re.I)
# "Q2 2023", "2023 Q2", "Q2 FY2023", "Q2'23", "2Q23", "2023-Q2"
_QUARTER_RES = [
    re.compile(rf"\bQ([1-4])\s*(?:of\s+)?(?:FY\s?|fiscal\s+(?:year\s+)?)?'?{_YEAR}\b", re.I),
    re.compile(rf"\b{_YEAR}\s*[-/ ]?\s*Q([1-4])\b", re.I),
    re.compile(r"\bQ([1-4])\s*'(\d{2})\b", re.I),
    re.compile(r"\b([1-4])Q\s*'?(\d{2})\b", re.I),
]
_ORDINAL_QUARTER_RE = re.compile(
    rf"\b(first|second|third|fourth|1st|2nd|3rd|4th)\s+(?:fiscal\s+)?quarter\s+(?:of\s+)?(?:(?:fiscal\s+(?:year\s+)?|FY\s?)?{_YEAR})?",
    re.I)
_PERIOD_ENDED_RE = re.compile(
    rf"\b(?:quarter(?:ly period)?|period|three months|six months|nine months|fiscal year|year)\s+end(?:ed|ing)\s+(?:on\s+)?"
    rf"((?:{_MONTH_RE}\s+\d{{1,2}},?\s+{_YEAR})|(?:{_YEAR}-\d{{1,2}}-\d{{1,2}})|(?:\d{{1,2}}\s+{_MONTH_RE},?\s+{_YEAR}))",
    re.I)
_YEAR_RE = re.compile(rf"(?<![\w$.,-]){_YEAR}(?![\w%.,-]|\.\d)")
_RECENT_RE = re.compile(
    r"\b(?:latest|most\s+recent|newest|last\s+(?:quarter|filing|report|10-?[qk])|recent\s+(?:quarter|filing|report)|"
    r"current\s+(?:quarter|period|filing|report|year|fiscal))\b", re.I)


def _mk(y: int, m: int, d: int) -> date | None:
    try:
        return date(y, m, d)
    except ValueError:
        return None


def dates_in(text: str) -> list[date]:
    """Every full date written in `text`, in order of appearance."""
    found: list[tuple[int, date]] = []
    for rx, kind in _DATE_RES:
        for m in rx.finditer(text):
            g = m.groups()
            if kind == "mdy":
                d = _mk(int(g[2]), _MONTHS[g[0].lower().rstrip(".")[:3]], int(g[1]))
            elif kind == "dmy":
                d = _mk(int(g[2]), _MONTHS[g[1].lower().rstrip(".")[:3]], int(g[0]))
            elif kind == "iso":
                d = _mk(int(g[0]), int(g[1]), int(g[2]))
            else:
                d = _mk(int(g[2]), int(g[0]), int(g[1]))
            if d is not None:
                found.append((m.start(), d))
    return [d for _, d in sorted(found, key=lambda x: x[0])]


def period_ended(text: str) -> date | None:
    """The end of the reporting period a document states ("for the quarterly period ended July 30, 2023")."""
    m = _PERIOD_ENDED_RE.search(text)
    if not m:
        return None
    ds = dates_in(m.group(1))
    return ds[0] if ds else None


def quarter_of_period(end: date) -> tuple[int, int]:
    """(year, quarter) of a three-month period that ends on `end`, by the calendar quarter of its middle."""
    mid = end - timedelta(days=45)
    return mid.year, (mid.month - 1) // 3 + 1


def quarter_label(year: int, quarter: int) -> str:
    return f"{year} Q{quarter}"


def quarters_in(text: str) -> set[tuple[int, int]]:
    """(year, quarter) pairs named as quarters: "Q2 2023", "2023 Q2", "Q2'23", "second quarter of 2023"."""
    out: set[tuple[int, int]] = set()
    for i, rx in enumerate(_QUARTER_RES):
        for m in rx.finditer(text):
            a, b = m.group(1), m.group(2)
            if i == 0:
                out.add((int(b), int(a)))
            elif i == 1:
                out.add((int(a), int(b)))
            else:
                out.add((2000 + int(b), int(a)))
    for m in _ORDINAL_QUARTER_RE.finditer(text):
        if m.group(2):
            out.add((int(m.group(2)), _ORDINALS[m.group(1).lower()]))
    return out


@dataclass(frozen=True)
class PeriodQuery:
    """What a question asks about in time."""

    quarters: frozenset[tuple[int, int]] = frozenset()
    dates: frozenset[date] = frozenset()
    months: frozenset[tuple[int, int]] = frozenset()  # (year, month) named without a day
    years: frozenset[int] = frozenset()
    recent: bool = False  # "latest", "most recent": the newest matching document

    @property
    def empty(self) -> bool:
        return not (self.quarters or self.dates or self.months or self.years or self.recent)


def parse_question(text: str) -> PeriodQuery:
    quarters = quarters_in(text)
    ended = period_ended(text)  # "for the quarter ended July 1, 2023": that quarter
    if ended is not None:
        quarters.add(quarter_of_period(ended))
    dates = set(dates_in(text))
    months: set[tuple[int, int]] = set()
    for m in _MONTH_YEAR_RE.finditer(text):
        months.add((int(m.group(2)), _MONTHS[m.group(1).lower().rstrip(".")[:3]]))
    # A bare year counts when no finer period names it ("in 2022", "fiscal 2023").
    years = {int(m.group(1)) for m in _YEAR_RE.finditer(text)}
    years -= {y for y, _ in quarters} | {d.year for d in dates} | {y for y, _ in months}
    return PeriodQuery(frozenset(quarters), frozenset(dates), frozenset(months), frozenset(years),
                       bool(_RECENT_RE.search(text)))


@dataclass(frozen=True)
class DocumentPeriod:
    """What a document covers: the end of its reporting period (or its date) and its quarter, when known."""

    date: date | None = None
    quarter: tuple[int, int] | None = None
    names: frozenset[tuple[int, int]] = field(default_factory=frozenset)  # quarters its title/file name names


def match(q: PeriodQuery, doc: DocumentPeriod) -> float:
    """How well a document's period matches what the question names: 1 (the quarter, the date, or a month/year
    that holds it), 0.5 (only the year), 0 (nothing to go by, or a different period)."""
    quarters = set(doc.names) | ({doc.quarter} if doc.quarter else set())
    if q.quarters and quarters & q.quarters:
        return 1.0
    d = doc.date
    if d is not None:
        if any(abs((d - x).days) <= 7 for x in q.dates):  # "the quarter ended July 1" vs a report dated June 30
            return 1.0
        if (d.year, d.month) in q.months:
            return 1.0
        if d.year in q.years or any(y == d.year for y, _ in q.quarters):
            return 0.5
    if quarters and any(y in q.years for y, _ in quarters):
        return 0.5
    return 0.0


def document_period(day: str | None, period: str | None, source: str, title: str | None) -> DocumentPeriod:
    """A document's period from its stored fields: its date (ISO), its quarter ("2023 Q2"), and the quarters its
    file name and title name."""
    d = None
    if day:
        try:
            d = date.fromisoformat(day[:10])
        except ValueError:
            d = None
    quarter = None
    if period:
        m = re.fullmatch(r"(\d{4}) Q([1-4])", period)
        if m:
            quarter = (int(m.group(1)), int(m.group(2)))
    return DocumentPeriod(d, quarter, frozenset(quarters_in(source) | quarters_in(title or "")))
