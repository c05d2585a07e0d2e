"""Word-level text primitives shared by citation support, abstention and verification: content tokens
(lower-cased, stopwords out, lightly stemmed) and a plain sentence split."""

from __future__ import annotations

import re

STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from as is are was were be been being it its
    this that these those there here which who whom whose what when where why how not no nor so than too very can
    could should would may might must will shall do does did done have has had having i you he she we they them
    his her their our your my me us him also just about into over under out up down any all some such only own
    same both each few more most other s t according input text context block source sources based provided""".split()
)
_TOKEN_RE = re.compile(r"[^\W_]+", re.UNICODE)
SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")


def _stem(tok: str) -> str:
    """A deliberately tiny stemmer: plural/possessive endings only (blueberries ~ blueberry, cats ~ cat)."""
    if len(tok) > 4 and tok.endswith("ies"):
        return tok[:-3] + "y"
    if len(tok) > 3 and tok.endswith("s") and not tok.endswith(("ss", "us", "is")):
        return tok[:-1]
    return tok


def content_tokens(text: str) -> set[str]:
    """Lower-cased word tokens without stopwords, single letters excepted digits, lightly stemmed."""
    toks = (t.casefold() for t in _TOKEN_RE.findall(text))
    return {_stem(t) for t in toks if t not in STOPWORDS and (len(t) > 1 or t.isdigit())}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_RE.split(text) if s.strip()]
