"""What each index sees of a chunk (rag/chunk_text.py), and ingestion keeping it right across edits."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from ctxqa.ingest.chunk import chunk
from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Chunk
from ctxqa.rag.index.chunk_text import embedding_text, header_parts, lexical_text, window_lexical_text, window_text
from ctxqa.rag.types import LoadedDocument

TEXT = " ".join(f"Sentence {i} talks about topic {i % 7} and the widget number {i}." for i in range(120))


def test_header_parts_skip_what_the_chunk_starts_with() -> None:
    assert header_parts("body", "Guide", ["Install", "Linux"]) == ["Guide", "Install", "Linux"]
    assert header_parts("Guide\n\nbody", "Guide", ["Install"]) == ["Install"]
    assert header_parts("body", "  Two   words ", ["Two words", ""]) == ["Two words"]
    assert lexical_text("body", None, ()) == "body"


def test_window_text_stitches_overlapping_chunks_exactly(embedder) -> None:  # type: ignore[no-untyped-def]
    specs = chunk(LoadedDocument(text=TEXT, media_type="text/plain"), embedder.tokenizer, 40, 8, max_tokens=256)
    assert len(specs) > 6
    assert any(b.char_start < a.char_end for a, b in zip(specs, specs[1:]))  # they really overlap
    parts = [(sp.text, sp.char_start, sp.char_end) for sp in specs]
    for i in range(len(specs)):
        lo, hi = max(0, i - 2), min(len(specs), i + 3)
        got = window_text(parts[lo:hi])
        assert got == TEXT[specs[lo].char_start:specs[hi - 1].char_end]
    # A gap (skipped whitespace or markup) becomes a line break; a chunk inside the previous one adds nothing.
    assert window_text([("abc", 0, 3), ("xyz", 10, 13)]) == "abc\nxyz"
    assert window_text([("abcdef", 0, 6), ("cd", 2, 4), ("efgh", 4, 8)]) == "abcdefgh"
    text = window_lexical_text("cd", [("abcdef", 0, 6), ("cd", 2, 4)], "T", ["H"])
    assert text == "T\nH\nabcdef\ncd"


def test_embedding_text_fits_the_window_and_never_cuts_the_chunk(embedder) -> None:  # type: ignore[no-untyped-def]
    count = embedder.count_tokens
    body = " ".join(["alpha"] * 240)  # 242 word pieces with [CLS]/[SEP]
    assert count(body) == 242
    title = "A very long title " * 10
    got = embedding_text(body, title, ["Section"], count_tokens=count, max_tokens=256)
    assert got.endswith("\n" + body) and count(got) <= 256
    assert got.startswith("A very long title")  # shortened from the end, not dropped
    # No room at all: the chunk alone.
    full = " ".join(["alpha"] * 254)
    assert embedding_text(full, "Title", (), count_tokens=count, max_tokens=256) == full
    # Room to spare: the whole header, counted or not (the character bound skips the tokenizer).
    short = embedding_text("body text", "Guide", ["Install"], count_tokens=count, max_tokens=256, text_tokens=4)
    assert short == "Guide\nInstall\nbody text"
    calls: list[str] = []

    def counting(s: str) -> int:
        calls.append(s)
        return count(s)

    assert embedding_text("body", "T", (), count_tokens=counting, max_tokens=8, text_tokens=3) == "T\nbody"
    assert calls == []  # 3 + len("T\n") + 2 <= 8: cannot overflow, not counted
    assert embedding_text("body", "T", (), count_tokens=counting, max_tokens=6, text_tokens=3) == "T\nbody"
    assert calls == ["T\nbody"]


def _lex_text(ctx, chunk_id: int) -> str:  # type: ignore[no-untyped-def]
    """The chunk's lexical text as the database has it now; the index holds exactly its terms."""
    from ctxqa.rag.index.lexical import Tokenizer
    from ctxqa.rag.index.store import _documents_texts, _lexical_rows

    with ctx.db.session() as s:
        doc_id = s.get(Chunk, chunk_id).document_id
        text = _documents_texts(s, [doc_id], ctx.settings.lexical_window)[chunk_id]
        ids, terms = _lexical_rows(s, [chunk_id], ctx.settings.lexical_window, Tokenizer())
    assert ids == [chunk_id] and terms[0] == Tokenizer()(text)
    return text


def test_edits_move_windows_and_headers(tmp_path: Path, make_ctx) -> None:  # type: ignore[no-untyped-def]
    """A kept chunk (same text, same vector) whose neighbour changed is re-indexed lexically with its new window;
    a retitled document is re-embedded (its chunks were embedded under the old title)."""
    root = tmp_path / "docs"
    root.mkdir()
    paras = [f"Paragraph {i}: " + " ".join(f"word{i}x{j}" for j in range(10)) for i in range(6)]  # one chunk each
    f = root / "doc.md"

    def write(title: str, first: str) -> None:
        f.write_text(f"# {title}\n\n" + "\n\n".join([first, *paras[1:]]) + "\n", encoding="utf-8")

    write("Title One", paras[0])
    ctx = make_ctx(chunk_size=64, chunk_overlap=0, lexical_window=1)
    ctx.ingestor.ingest([root])
    with ctx.db.session() as s:
        rows = list(s.execute(select(Chunk.id, Chunk.ordinal, Chunk.text).order_by(Chunk.ordinal)))
    assert len(rows) == 6
    second = rows[1][0]
    assert "zebrafish" not in _lex_text(ctx, second)

    # Edit the first paragraph: the second chunk is kept (same id and vector) but its window now holds the edit.
    write("Title One", paras[0].replace("word0x5", "zebrafish"))
    r = ctx.ingestor.ingest([root])
    assert r.summary()["updated"] == 1 and r.chunks_embedded == 1
    with ctx.db.session() as s:
        assert s.get(Chunk, second) is not None
    assert "zebrafish" in _lex_text(ctx, second)
    hits = ctx.retriever.search("zebrafish", k=5, mode="lexical").hits
    assert [h.ordinal for h in hits] == [0, 1]  # the chunk holding the word first, its neighbour through its window
    # On disk too: a fresh process reading the saved BM25 file agrees with the database.
    with ctx.db.session() as s:
        coll = repo.require_collection(s, "default")
    assert ctx.store.check_lexical(coll).ok

    # Retitle: the chunks not starting with the title are embedded again (the header is part of what the
    # embedder saw), and their lexical text carries the new title.
    write("Title Two", paras[0].replace("word0x5", "zebrafish"))
    r = ctx.ingestor.ingest([root])
    assert r.chunks_embedded >= 5
    with ctx.db.session() as s:
        third = s.scalar(select(Chunk.id).where(Chunk.ordinal == 3))
    assert third != rows[3][0]  # a new row: its vector changed
    assert "Title Two" in _lex_text(ctx, third) and "Title One" not in _lex_text(ctx, third)
