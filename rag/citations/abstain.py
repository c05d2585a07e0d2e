"""Detect an answer that abstains ("I don't know", "not provided in the input") (pure)."""

from __future__ import annotations

import re

from ctxqa.rag.text import sentences

_DOCS = r"(?:input|context|text|documents?|information|passages?|blocks?|sources?)"
# Each alternative names the *documents* or the *speaker* as lacking the answer, so that ordinary negative facts
# ("The recipe does not contain nuts", "You cannot find them in winter") are not taken for abstentions.
_UNKNOWN_RE = re.compile(
    r"\bI\s+(?:do\s+not|don't|don’t)\s+know\b"
    r"|\b(?:I|we)\s+(?:cannot|can't|can’t|could\s+not|couldn't|am\s+unable\s+to|are\s+unable\s+to|"
    r"was\s+unable\s+to|am\s+not\s+able\s+to)\s+(?:answer|find|determine|say|tell|provide|confirm|locate)"
    r"|\b(?:cannot|can't|can’t|could\s+not)\s+be\s+(?:answered|determined|found)"
    r"|\bnot\s+(?:(?:provided|mentioned|stated|specified|given|included|found|covered|available|present|"
    r"addressed|discussed|described|contained|listed|answered)\s+)?(?:in|within|from)\s+the\s+"
    r"(?:provided\s+|given\s+)?" + _DOCS + r"|\b(?:input|context|text|documents?|information\s+provided|"
    r"provided\s+information|blocks?|passages?|sources?)\s+(?:does\s+not|doesn't|do\s+not|don't|did\s+not)\s+"
    r"(?:contain|provide|mention|say|specify|include|state|give|have|offer|discuss|address)"
    r"|\b(?:there\s+is|there's|there\s+are|contains?|has|have|provides?|gives?)\s+no\s+"
    r"(?:relevant\s+|specific\s+|such\s+)?(?:information|mention|data|details)\b"
    r"|^\W*no\s+(?:relevant\s+|specific\s+)?information\b"
    r"|\b(?:not\s+enough|insufficient)\s+information\b"
    r"|\bthere\s+is\s+nothing\s+(?:in|about)\b",
    re.IGNORECASE,
)


def says_unknown(answer_text: str) -> bool:
    """Whether the answer abstains ("I don't know", "not provided in the input", "cannot be answered from the
    given context", "no information about ...").

    Only the first sentence is checked: an answer that gives facts first and then notes a gap ("... The input
    does not say why.") has answered; an abstaining answer says so up front.
    """
    first = sentences(answer_text.strip())[:1]
    return bool(first) and bool(_UNKNOWN_RE.search(first[0]))
