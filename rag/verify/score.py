"""How well one evidence text supports one claim (pure; the embedding cosine is passed in).

Four signals, combined into a support score in [0, 1]:

- **coverage**: the share of the claim's content words (lower-cased, stopwords out, lightly stemmed:
  `ctxqa.rag.text.content_tokens`) that the evidence contains. Numbers and names weigh double: they carry the
  facts a reader checks.
- **paraphrase**: the cosine of the claim's and the evidence's sentence embeddings (the bundled MiniLM), rescaled
  so that unrelated text scores 0 and a paraphrase near 1; 0 when no embedder is used.
- **facts**: every number (amounts, dates, percentages, versions: "1,000" = "1000", "35%" = 35) and every name
  (a capitalised word inside a sentence) of the claim must occur in the evidence. A missing number caps the
  score below the "unsupported" threshold whatever else overlaps: "1 GB" that no passage contains is not
  supported by a passage about gigabytes. A missing name halves the score's share it would carry.
- **quote**: a near-verbatim copy of (part of) the evidence, after normalising case, whitespace and punctuation,
  is a quote and scores 1.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from ctxqa.rag.text import STOPWORDS, content_tokens

# What a number looks like in a claim: 35, 1,000, 1.5, 3.2.1, 2023, 10-Q is a name-ish token, not a number.
_NUMBER_RE = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])|(?<![\w.])\d+(?=[%$€£]|[a-zA-Z]{1,3}\b)")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
                      "ninety": "90", "hundred": "100", "thousand": "1000", "dozen": "12"})
_WORD_RE = re.compile(r"[^\W_]+(?:[''’-][^\W_]+)*", re.UNICODE)
_NORM_RE = re.compile(r"[^\w]+", re.UNICODE)

# Score cap for a claim whose numbers the evidence does not hold (below any sensible "supported" threshold).
MISSING_NUMBER_CAP = 0.2
# Cosine of unrelated MiniLM sentence pairs sits around 0.1-0.2, paraphrases above 0.7.
_COS_FLOOR, _COS_CEIL = 0.2, 0.8
QUOTE_RATIO = 0.8
MIN_QUOTE_CHARS = 24


@dataclass(frozen=True)
class Support:
    score: float
    coverage: float
    paraphrase: float
    missing_numbers: tuple[str, ...]
    missing_names: tuple[str, ...]
    quote: bool


def normalize(text: str) -> str:
    """Case-folded words separated by single spaces (punctuation, quotes and spacing do not matter)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NORM_RE.sub(" ", text).split())


def _canon_number(raw: str) -> str:
    raw = raw.rstrip(".,")
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", raw):
        raw = raw.replace(",", "")
    if "." in raw and re.fullmatch(r"\d+\.\d+", raw):
        raw = raw.rstrip("0").rstrip(".") if "." in raw else raw
    return raw.lstrip("0") or "0"


@lru_cache(maxsize=4096)
def numbers(text: str) -> frozenset[str]:
    """Canonical numbers of a text: digits as written (thousands separators dropped, "1.50" = "1.5") and
    number words ("twelve" = "12")."""
    found = {_canon_number(m.group(0)) for m in _NUMBER_RE.finditer(text)}
    found |= {_NUMBER_WORDS[w] for w in (t.casefold() for t in _WORD_RE.findall(text)) if w in _NUMBER_WORDS}
    return frozenset(found)


@lru_cache(maxsize=4096)
def names(text: str) -> frozenset[str]:
    """Capitalised words that are not the first word of their sentence and not stopwords: the names a claim
    asserts ("Lyon", "NVIDIA", "Porto"), case-folded."""
    out: set[str] = set()
    first = True
    for m in _WORD_RE.finditer(text):
        word = m.group(0)
        prev = text[max(0, m.start() - 2):m.start()]
        if first or re.search(r"[.!?:]\s*$", prev):
            first = False
            continue
        if word[0].isupper() and not word.isdigit() and word.casefold() not in STOPWORDS and len(word) > 1:
            out.add(word.casefold())
    return frozenset(out)


@lru_cache(maxsize=8192)
def _tokens(text: str) -> frozenset[str]:
    return frozenset(content_tokens(text))


def _weighted_coverage(claim: str, evidence: str) -> float:
    ctoks = _tokens(claim)
    if not ctoks:
        return 0.0
    etoks = _tokens(evidence)
    heavy = {t for t in ctoks if any(ch.isdigit() for ch in t)} | {n for n in names(claim)}
    total = sum(2.0 if t in heavy else 1.0 for t in ctoks)
    got = sum(2.0 if t in heavy else 1.0 for t in ctoks if t in etoks)
    return got / total


def _trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


@lru_cache(maxsize=8192)
def _words(text: str) -> tuple[str, ...]:
    return tuple(normalize(text).split())


def is_quote(claim: str, evidence: str) -> bool:
    """A near-verbatim copy of (a stretch of) the evidence: after normalising case, spacing and punctuation,
    the claim is a substring of the evidence, or at least `QUOTE_RATIO` of its word trigrams occur in it (a word
    changed here and there). Linear in the lengths, unlike a character diff."""
    cw, ew = _words(claim), _words(evidence)
    if len(" ".join(cw)) < MIN_QUOTE_CHARS or len(cw) < 4:
        return False
    if " ".join(cw) in " ".join(ew):
        return True
    grams = _trigrams(list(cw))
    return bool(grams) and len(grams & _trigrams(list(ew))) / len(grams) >= QUOTE_RATIO


def paraphrase_score(cosine: float | None) -> float:
    if cosine is None:
        return 0.0
    return min(1.0, max(0.0, (cosine - _COS_FLOOR) / (_COS_CEIL - _COS_FLOOR)))


def support(claim: str, evidence: str, cosine: float | None = None, *, lexical_weight: float = 0.6) -> Support:
    """The support `evidence` gives `claim` (see the module docstring)."""
    cov = _weighted_coverage(claim, evidence)
    para = paraphrase_score(cosine)
    ev_numbers = numbers(evidence)
    missing_n = tuple(sorted(n for n in numbers(claim) if n not in ev_numbers))
    ev_words = {t.casefold() for t in _WORD_RE.findall(evidence)} | set(_tokens(evidence))
    missing_names = tuple(sorted(n for n in names(claim) if n not in ev_words and content_tokens(n) - ev_words))
    quote = not missing_n and cov >= 0.8 and is_quote(claim, evidence)
    if quote:
        return Support(1.0, cov, para, missing_n, missing_names, True)
    score = lexical_weight * cov + (1.0 - lexical_weight) * para if cosine is not None else cov
    if missing_names:
        share = len(missing_names) / max(1, len(names(claim)))
        score *= 1.0 - 0.5 * share
    if missing_n:
        score = min(score, MISSING_NUMBER_CAP)
    return Support(round(score, 6), cov, para, missing_n, missing_names, False)
