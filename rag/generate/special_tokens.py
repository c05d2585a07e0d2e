"""Tokenizing a `Prompt` so that special tokens come from its template parts only.

Both backends' tokenizers can read special tokens out of text (llama.cpp `special=True`, ExLlamaV2
`encode_special_tokens=True`): the template needs that (``<|im_start|>`` must be one control token), but a
retrieved document that contains ``</s>`` or ``<|im_end|>`` must stay text, or it ends the turn.

`SpecialSplitter.runs` cuts the prompt into the units the tokenizer sees. Template parts are split at the model's
special-token spellings; everything between two special tokens, template and data text alike, is one text run,
encoded with special-token parsing off. That is how both tokenizers treat a whole string (they split at special
tokens first, then encode each stretch of text), so a prompt whose data holds no special-token spelling gets exactly
the ids it always got, and one whose data does gets those spellings as plain text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ctxqa.rag.types import Prompt


@dataclass(frozen=True)
class Run:
    """A unit to encode: one special token's spelling (`special`), or text encoded with special parsing off."""

    text: str
    special: bool


class SpecialSplitter:
    def __init__(self, specials: Iterable[str]) -> None:
        # Longest first, so "<|im_start|>" is never read as a shorter special that is its prefix.
        ordered = sorted({s for s in specials if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def runs(self, prompt: Prompt) -> list[Run]:
        out: list[Run] = []
        text: list[str] = []

        def close_text() -> None:
            joined = "".join(text)
            if joined:
                out.append(Run(joined, False))
            text.clear()

        for part in prompt.parts:
            if part.data or self._pattern is None:
                text.append(part.text)
                continue
            pos = 0
            for m in self._pattern.finditer(part.text):
                text.append(part.text[pos : m.start()])
                close_text()
                out.append(Run(m.group(), True))
                pos = m.end()
            text.append(part.text[pos:])
        close_text()
        return out
