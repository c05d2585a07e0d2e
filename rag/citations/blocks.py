"""What a citation of a block says: its pages, its span, and the citation object itself."""

from __future__ import annotations

from collections.abc import Sequence

from ctxqa.rag.citations.keys import canonical_key, pages_of
from ctxqa.rag.types import Block, Citation


def block_pages(block: Block) -> list[int]:
    return sorted({p for h in block.hits for p in h.pages})



def citation_for(group: dict[str, str], block: Block, match: str) -> Citation:
    pages = block_pages(block)
    cited_key = next((k for k, v in group.items() if canonical_key(k, v) == "page"), None)
    if cited_key is not None:
        cited = sorted(set(pages_of(group[cited_key])))
        if cited and set(cited) <= set(pages):
            pages = cited
    first = block.hits[0]
    return Citation(
        status="verified",
        raw=dict(group),
        block_ref=block.ref,
        chunk_ids=block.chunk_ids,
        document_id=block.document_id,
        source=first.source,
        title=first.title,
        pages=pages,
        char_start=min(h.char_start for h in block.hits),
        char_end=max(h.char_end for h in block.hits),
        match=match,
    )



def block_of(cit: Citation, blocks: Sequence[Block]) -> Block | None:
    for b in blocks:
        if cit.block_ref is not None and b.ref == cit.block_ref:
            return b
    if cit.chunk_ids:
        for b in blocks:
            if set(cit.chunk_ids) <= set(b.chunk_ids):
                return b
    return None

