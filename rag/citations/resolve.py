"""Resolve each parsed group to a block that was really in the prompt, or flag it ``unverified`` (pure).

Groups are never dropped silently."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ctxqa.rag.citations.blocks import block_pages, citation_for
from ctxqa.rag.citations.keys import REF_RE, canonical_key, norm, norm_url, pages_of, path_match, strip_md
from ctxqa.rag.citations.parse import Parsed, dedupe
from ctxqa.rag.citations.support import support
from ctxqa.rag.types import Block, Citation


def _key_match(key: str, cited: str, block: Block) -> bool | None:
    """Tolerant comparison of one cited pair with a block; None when the block has nothing to compare with."""
    ctx = block.context
    if key == "block":
        m = REF_RE.match(strip_md(cited))
        return m is not None and f"B{int(m.group(1))}" == block.ref
    if key == "page":
        pages = block_pages(block)
        cited_pages = pages_of(cited)
        if not pages or not cited_pages:
            return None
        return set(cited_pages) <= set(pages)
    if key == "url":
        target = ctx.get("url") or ctx.get("source")
        if not target:
            return None
        a, b = norm_url(cited), norm_url(target)
        if a == b:
            return True
        # A URL cut short (truncated output) neither confirms nor refutes.
        return None if len(a) >= 4 and b.startswith(a) else False
    if key == "source":
        # Models put a path, a URL or the title under "source"; any of them identifies the block.
        if "source" in ctx and path_match(cited, ctx["source"]):
            return True
        if "url" in ctx and norm_url(cited) == norm_url(ctx["url"]):
            return True
        if "title" in ctx and norm(cited) == norm(ctx["title"]):
            return True
        return False if ("source" in ctx or "url" in ctx) else None
    if key == "title":
        if "title" not in ctx:
            return None
        a, b = norm(cited), norm(ctx["title"])
        if a == b:
            return True
        short, long_ = (a, b) if len(a) < len(b) else (b, a)
        return len(short) >= 8 and short in long_  # a shortened title still names the document
    if key == "date":
        if "date" not in ctx:
            return None
        a, b = norm(cited), norm(ctx["date"])
        return a == b or (len(a) >= 10 and b.startswith(a)) or (len(b) >= 10 and a.startswith(b))
    if key not in ctx:
        return None
    return norm(cited) == norm(ctx[key])


# Keys that name a document: if one of them contradicts a block, the group cannot be citing that block.
_STRONG_KEYS = frozenset({"block", "source", "url", "title"})


@dataclass
class _Score:
    block: Block
    matched: int
    mismatched: int
    strong_mismatch: bool
    unknown: int
    exact: bool


def _score(group: dict[str, str], block: Block) -> _Score:
    matched = mismatched = unknown = 0
    strong_mismatch = False
    exact = all(block.context.get(k) == v for k, v in group.items())
    for raw_key, value in group.items():
        key = canonical_key(raw_key, value)
        # A block ref was already tried (and names no block of the prompt): it neither confirms nor refutes.
        ok = None if key == "block" else _key_match(key, value, block)
        if ok is None:
            unknown += 1
        elif ok:
            matched += 1
        else:
            mismatched += 1
            strong_mismatch = strong_mismatch or key in _STRONG_KEYS
    return _Score(block, matched, mismatched, strong_mismatch, unknown, exact)



def _refs_in(group: dict[str, str]) -> list[str] | None:
    """Block refs named by the group's block key ("B1", "B1, B3"), or None when it names none."""
    for k, v in group.items():
        if canonical_key(k, v) == "block":
            refs = [f"B{int(n)}" for n in re.findall(r"(?:\bblock\s*|\bb\s*)(\d{1,4})\b", v, re.IGNORECASE)]
            if not refs and re.fullmatch(r"\s*\d{1,4}\s*", v):
                refs = [f"B{int(v)}"]
            return refs or None
    return None


def _pick(candidates: list[_Score], answer: str) -> Block | None:
    """Break a tie between equally good blocks by which one supports the answer best; None if still tied."""
    if len(candidates) == 1:
        return candidates[0].block
    ranked = sorted(candidates, key=lambda s: support(answer, s.block), reverse=True)
    top, second = support(answer, ranked[0].block), support(answer, ranked[1].block)
    if top > second:
        return ranked[0].block
    # Same support: blocks of one document are interchangeable as a citation of it (take the best-ranked one);
    # blocks of different documents are genuinely ambiguous.
    if len({s.block.document_id for s in candidates}) == 1:
        return candidates[0].block
    return None


def _resolve_group(group: dict[str, str], blocks: Sequence[Block], answer: str) -> list[Citation]:
    by_ref = {b.ref: b for b in blocks}
    refs = _refs_in(group)
    if refs:
        found = [by_ref[r] for r in refs if r in by_ref]
        if found:
            # Refs we never gave ("block: B1, B9") are kept, flagged, rather than silently dropped.
            missing = [Citation(status="unverified", raw={"block": r}) for r in refs if r not in by_ref]
            return [citation_for(group, b, "ref") for b in found] + missing
        # A block ref we never gave: fall through, the other keys may still identify a block.

    scores = [_score(group, b) for b in blocks]
    exact = [s for s in scores if s.exact]
    if exact:
        block = _pick(exact, answer)
        if block is not None:
            return [citation_for(group, block, "exact")]
    tolerant = [s for s in scores if s.matched and not s.mismatched and not s.unknown]
    if tolerant:
        block = _pick(tolerant, answer)
        if block is not None:
            return [citation_for(group, block, "tolerant")]
    partial = [s for s in scores if s.matched and not s.strong_mismatch and s.matched > s.mismatched]
    if partial:
        best = max((s.matched, -s.mismatched) for s in partial)
        top = [s for s in partial if (s.matched, -s.mismatched) == best]
        block = _pick(top, answer)
        if block is not None:
            return [citation_for(group, block, "partial")]
        return [Citation(status="unverified", raw=dict(group), match="ambiguous")]
    return [Citation(status="unverified", raw=dict(group))]


def resolve(parsed: Parsed, blocks: list[Block]) -> list[Citation]:
    """Map every cited group to the block(s) it names, in this order of trust:

    1. ``ref``: the group's ``block: Bn`` names a block of the prompt (several refs give several citations);
    2. ``exact``: every pair equals the block's BEGINCONTEXT pair byte-for-byte;
    3. ``tolerant``: every pair matches after normalisation (case, whitespace, quotes, URL scheme/www/trailing
       slash, source path suffix at a "/" boundary, cited page inside the block's pages, ISO date prefix);
    4. ``partial``: some pairs match, more match than contradict, and no document-naming key (block, source,
       url, title) contradicts; the block with the most matching pairs wins.
    Ties between blocks go to the block whose text best supports the answer; blocks of the same document with
    equal support resolve to the best-ranked one; otherwise the citation is ambiguous and flagged
    ``unverified`` with ``match="ambiguous"``. A group that matches nothing is ``unverified`` with its raw pairs.
    Identical groups are deduplicated; groups resolving to the same block with non-conflicting pairs are merged.
    """
    out: list[Citation] = []
    for group in dedupe(parsed.groups):
        for cit in _resolve_group(group, blocks, parsed.answer):
            twin = next(
                (
                    c
                    for c in out
                    if cit.status == "verified"
                    and c.status == "verified"
                    and c.block_ref == cit.block_ref
                    and all(c.raw.get(k, v) == v for k, v in cit.raw.items())
                ),
                None,
            )
            if twin is not None:
                twin.raw.update(cit.raw)
                if twin.pages != cit.pages:
                    twin.pages = sorted(set(twin.pages) | set(cit.pages))
                continue
            out.append(cit)
    return out
