"""Sentences verified while an answer streams.

    live = LiveSentences(verifier, index)
    for delta in stream: for piece, check in live.feed(delta): ...
    final_checks = live.reuse(verifier.verify(final_answer_text, index, cited).sentences, cited)

The raw model text is parsed as it grows (the sources section and inline citations cut off, as `parse` does at
the end); every sentence that ends with its own punctuation and is followed by the start of another is complete
and is checked at once. A sentence ended by a line break waits for the final verification: where it ends may
still depend on the line being written. The final answer
reuses those checks for the same sentences at the same place, so a streamed sentence carries exactly the label
the final answer object gives it.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ctxqa.rag import citations as cit
from ctxqa.rag.types import SentenceCheck
from ctxqa.rag.verify.sentences import sentence_spans
from ctxqa.rag.verify.verifier import PassageIndex, Verifier

_ENDINGS = frozenset(".!?\n")
# A sentence that ends with its own punctuation (closing quotes or brackets allowed): its end cannot move.
_TERMINAL_RE = re.compile(r"""[.!?]+["'”’)\]]*$""")


class LiveSentences:
    def __init__(self, verifier: Verifier, index: PassageIndex) -> None:
        self.verifier = verifier
        self.index = index
        self.raw = ""
        self.checked: list[SentenceCheck] = []
        self.stopped = False  # the parse of text already checked changed: the final verification decides

    def feed(self, delta: str) -> list[tuple[str, SentenceCheck]]:
        """The sentences this delta completed, checked, in order; each with the answer text since the previous
        sentence's end up to its own (what a client appends)."""
        self.raw += delta
        if self.stopped or not any(ch in _ENDINGS for ch in delta):
            return []
        answer = cit.parse(self.raw).answer
        if any(answer[c.start:c.end] != c.text for c in self.checked):
            self.stopped = True
            return []
        done = self.checked[-1].end if self.checked else 0
        new = []
        for a, b in sentence_spans(answer)[:-1]:  # the last sentence may still grow
            if a < done:
                continue
            if not _TERMINAL_RE.search(answer, a, b):
                # Ended by a line break: where it ends may depend on the line being written (a list item, a
                # blank line, a fence); the final verification takes it, and everything after it.
                break
            check = self.verifier.check(self.index, answer[a:b], a, b)
            new.append((answer[done:b], check))
            self.checked.append(check)
            done = b
        return new

    def reuse(self, fresh: list[SentenceCheck], cited: set[str] | None) -> list[SentenceCheck]:
        """The final answer's checks, taking the streamed check wherever the same sentence sits at the same
        place (its embedding was computed alone; a batch's may differ in the last digits). Whether the model
        cited a sentence's evidence is known only once its sources are read: `cited` sets it."""
        by_span = {(c.start, c.end, c.text): c for c in self.checked}
        out = []
        for c in fresh:
            streamed = by_span.get((c.start, c.end, c.text))
            if streamed is None:
                out.append(c)
                continue
            ev = streamed.evidence
            out.append(replace(streamed, cited=None if cited is None or ev is None else ev.block_ref in cited))
        return out
