"""Sentence-level verification of an answer against the passages it was given (pure, given an embedder).

    Verifier(embed, thresholds).verify(answer_text, passages, cited=None) -> Verification

Each sentence of the answer is a claim. Its evidence is the best-supporting unit among all passages: one
sentence, or two or three adjacent sentences of one passage (claims often merge what neighbouring sentences
say). Support is scored by `score.support` (coverage of the claim's words, numbers and names that must occur,
near-verbatim quotes, and the embedding cosine for paraphrases); the label follows the calibrated thresholds
(bench/verify_calibration.py on ClapNQ: `DEFAULT_THRESHOLDS`). Sentences with nothing to check (a question,
"Sure.", "Here is what the documents say:") are `neutral` and do not count.

Verdict (`grounding`): `supported` when every checked sentence is, `unsupported` when none is supported or
partly supported (or there is nothing to check), `partial` otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ctxqa.rag.text import content_tokens
from ctxqa.rag.types import Evidence, Grounding, Hit, SentenceCheck, SentenceLabel, Verification
from ctxqa.rag.verify import score as sc
from ctxqa.rag.verify.sentences import sentence_spans

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Thresholds:
    supported: float
    partial: float


# Chosen by bench/verify_calibration.py on ClapNQ dev (human answers against their own passage vs another
# record's passage); see the README's verification figures.
DEFAULT_THRESHOLDS = Thresholds(supported=0.55, partial=0.40)
MAX_WINDOW = 3  # sentences per evidence unit
_CANDIDATES = 8  # units fully scored per claim (after a cheap lexical + cosine pre-ranking)
_META_RE = re.compile(
    r"^\W*(?:sure|certainly|of course|ok(?:ay)?|yes|no|thanks?|thank you|great|here(?:'s| is| are)\b.*:?|"
    r"(?:based on|according to) (?:the )?(?:provided |given )?(?:input|context|text|documents?|information)\W*)\W*$",
    re.IGNORECASE)


@dataclass(frozen=True)
class Passage:
    """A text to check against: a retrieved chunk (with `hit`, whose document offset is `hit.char_start`) or
    plain text given to /v1/verify (`index` is its position in the request)."""

    text: str
    index: int
    hit: Hit | None = None
    block_ref: str | None = None

    @classmethod
    def of_hit(cls, hit: Hit, index: int, block_ref: str | None = None) -> Passage:
        return cls(hit.text, index, hit, block_ref)


@dataclass
class _Unit:
    passage: Passage
    start: int
    end: int
    sentences: tuple[int, ...]  # indexes into the sentence list (for the window's embedding)
    text: str = ""
    tokens: frozenset[str] = field(default_factory=frozenset)


def is_checkable(claim: str) -> bool:
    """A claim with something to check: at least one content word, not a question, not a pleasantry."""
    text = claim.strip()
    if not text or text.endswith("?") or _META_RE.match(text):
        return False
    return len(content_tokens(text)) >= 1


def verdict(labels: Sequence[SentenceLabel]) -> Grounding:
    counted = [label for label in labels if label != "neutral"]
    if not counted or all(label == "unsupported" for label in counted):
        return "unsupported"
    if all(label == "supported" for label in counted):
        return "supported"
    return "partial"


def _units(passages: Sequence[Passage]) -> tuple[list[_Unit], list[str]]:
    """Every window of 1..MAX_WINDOW adjacent sentences of each passage, and the passages' sentences."""
    units: list[_Unit] = []
    sent_texts: list[str] = []
    for p in passages:
        spans = sentence_spans(p.text)
        first = len(sent_texts)
        sent_texts.extend(p.text[a:b] for a, b in spans)
        for i in range(len(spans)):
            for w in range(1, MAX_WINDOW + 1):
                if i + w > len(spans):
                    break
                a, b = spans[i][0], spans[i + w - 1][1]
                text = p.text[a:b]
                units.append(_Unit(p, a, b, tuple(range(first + i, first + i + w)), text,
                                   frozenset(content_tokens(text))))
    return units, sent_texts


@dataclass
class PassageIndex:
    """The evidence units of a set of passages, with their sentence vectors (computed once per answer)."""

    passages: Sequence[Passage]
    units: list[_Unit]
    unit_vectors: np.ndarray | None  # one row per unit (a window: the normalised mean of its sentences)


class Verifier:
    def __init__(self, embed: Embed | None = None, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
        self.embed = embed
        self.thresholds = thresholds

    def label(self, score: float) -> SentenceLabel:
        if score >= self.thresholds.supported:
            return "supported"
        if score >= self.thresholds.partial:
            return "partial"
        return "unsupported"

    def index(self, passages: Sequence[Passage]) -> PassageIndex:
        units, sent_texts = _units(passages)
        vectors = None
        if self.embed is not None and units:
            sv = self.embed(sent_texts)
            uv = np.stack([sv[list(u.sentences)].mean(axis=0) for u in units])
            vectors = uv / np.maximum(np.linalg.norm(uv, axis=1, keepdims=True), 1e-12)
        return PassageIndex(passages, units, vectors)

    def verify(self, answer: str, passages: Sequence[Passage] | PassageIndex,
               cited: set[str] | None = None) -> Verification:
        """Check every sentence of `answer` against `passages`. `cited`: the block refs the model cited (None
        when it cited nothing), to report per sentence whether its evidence was cited."""
        idx = passages if isinstance(passages, PassageIndex) else self.index(passages)
        claims = [(a, b, answer[a:b]) for a, b in sentence_spans(answer)]
        checkable = [i for i, (_, _, text) in enumerate(claims) if is_checkable(text)]
        vecs = self._claim_vectors([claims[i][2] for i in checkable], idx)
        row = {i: r for r, i in enumerate(checkable)}
        out = [self._check(idx, text, a, b, cited, i in row, None if vecs is None else vecs[row[i]])
               if i in row else SentenceCheck(text, a, b, "neutral", 0.0)
               for i, (a, b, text) in enumerate(claims)]
        return Verification(verdict([s.label for s in out]), out)

    def check(self, idx: PassageIndex, text: str, start: int, end: int,
              cited: set[str] | None = None) -> SentenceCheck:
        """One sentence (`text`, at `start:end` of its answer) against an index: what streaming uses."""
        if not is_checkable(text):
            return SentenceCheck(text, start, end, "neutral", 0.0)
        vecs = self._claim_vectors([text], idx)
        return self._check(idx, text, start, end, cited, True, None if vecs is None else vecs[0])

    def support_of(self, claim: str, idx: PassageIndex) -> float:
        """The best support any unit of the index gives one claim (a cited block for a sentence)."""
        if not idx.units:
            return 0.0
        vecs = self._claim_vectors([claim], idx)
        return self._best(claim, idx, None if vecs is None else vecs[0])[1].score

    # -- internals ------------------------------------------------------------------------------------------
    def _claim_vectors(self, claims: list[str], idx: PassageIndex) -> np.ndarray | None:
        if self.embed is None or idx.unit_vectors is None or not claims:
            return None
        return np.asarray(self.embed(claims), dtype=np.float32)

    def _check(self, idx: PassageIndex, text: str, a: int, b: int, cited: set[str] | None, checkable: bool,
               vec: np.ndarray | None) -> SentenceCheck:
        if not idx.units:
            return SentenceCheck(text, a, b, "unsupported", 0.0)
        best_unit, best = self._best(text, idx, vec)
        ev = _evidence(best_unit) if best_unit is not None and best.score > 0 else None
        was_cited = None if cited is None or ev is None else ev.block_ref in cited
        return SentenceCheck(text, a, b, self.label(best.score), round(best.score, 4), ev, best.quote,
                             best.missing_numbers + best.missing_names, was_cited)

    def _best(self, claim: str, idx: PassageIndex, vec: np.ndarray | None) -> tuple[_Unit | None, sc.Support]:
        units = idx.units
        cos = None if vec is None or idx.unit_vectors is None else np.asarray(idx.unit_vectors @ vec, np.float64)
        ctoks = frozenset(content_tokens(claim))
        n = max(1, len(ctoks))
        proxy = np.array([len(ctoks & u.tokens) / n for u in units], dtype=np.float64)
        if cos is not None:
            proxy = 0.6 * proxy + 0.4 * np.clip((cos - 0.2) / 0.6, 0.0, 1.0)
        order = np.argsort(-proxy, kind="stable")[:_CANDIDATES]
        best_unit: _Unit | None = None
        best = sc.Support(0.0, 0.0, 0.0, (), (), False)
        for j in order.tolist():
            u = units[j]
            s = sc.support(claim, u.text, None if cos is None else float(cos[j]))
            # Higher score wins; on a tie the shorter unit (the more precise evidence).
            if best_unit is None or s.score > best.score + 1e-9 or (
                    abs(s.score - best.score) <= 1e-9 and (u.end - u.start) < (best_unit.end - best_unit.start)):
                best_unit, best = u, s
        return best_unit, best


def _evidence(u: _Unit) -> Evidence:
    p = u.passage
    h = p.hit
    if h is None:
        return Evidence(u.text, u.start, u.end, passage=p.index, block_ref=p.block_ref)
    return Evidence(u.text, h.char_start + u.start, h.char_start + u.end, passage=p.index, block_ref=p.block_ref,
                    chunk_id=h.chunk_id, document_id=h.document_id, source=h.source, title=h.title,
                    pages=h.pages_between(h.char_start + u.start, h.char_start + u.end), heading_path=h.heading_path)
