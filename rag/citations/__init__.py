"""From the model's raw output to citations ctxqa can stand behind, in pure steps (see DESIGN.md):

- `parse(text) -> Parsed` (parse.py): split the answer from its sources section(s) and read each cited block's
  ``key: value`` lines into a group;
- `resolve(parsed, blocks) -> list[Citation]` (resolve.py): map each group to a block that was really in the
  prompt, or flag it ``unverified``; the key vocabulary and value normalisation are in keys.py;
- `verify(answer, citations, blocks)` and `infer(answer, blocks)` (support.py): a support score per citation, and
  attribution of an answer that cited nothing (``inferred``);
- `says_unknown(answer)` (abstain.py): the "I don't know / not in the input" abstention.
"""

from ctxqa.rag.citations.abstain import says_unknown
from ctxqa.rag.citations.keys import KEY_ALIASES, canonical_key
from ctxqa.rag.citations.parse import Parsed, parse
from ctxqa.rag.citations.resolve import resolve
from ctxqa.rag.citations.support import infer, verify

__all__ = ["KEY_ALIASES", "Parsed", "canonical_key", "infer", "parse", "resolve", "says_unknown", "verify"]
