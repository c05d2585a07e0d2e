"""Filters: validation, per-document matching, and resolution to chunk ids against a real SQLite database."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from pydantic import ValidationError

from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Chunk, Document
from ctxqa.rag.db.repo import allowed_chunk_ids, allowed_document_ids
from ctxqa.rag.db.session import Database
from ctxqa.rag.retrieve.filters import Filters, document_date, value_matches


def test_validation_and_coercion() -> None:
    assert Filters.coerce(None) is None
    assert Filters.coerce({}) is None  # empty: no restriction
    f = Filters.coerce({"source_prefix": "docs/", "date_from": "2024-01-02T10:00:00Z", "document_ids": [3, 1]})
    assert f is not None and f.date_from == date(2024, 1, 2) and f.document_ids == (3, 1)
    assert Filters.coerce(f) is f
    with pytest.raises(ValidationError):
        Filters.coerce({"source": "x"})  # unknown key
    with pytest.raises(ValidationError):
        Filters.coerce({"date_from": "not a date"})
    with pytest.raises(ValidationError):
        Filters.coerce({"date_from": "2024-02-01", "date_to": "2024-01-01"})
    with pytest.raises(ValidationError):
        Filters.coerce({"metadata": {"a": {"nested": 1}}})
    with pytest.raises(ValidationError):
        Filters.coerce({"document_ids": ["x"]})
    assert Filters(metadata={"a": 1}).key() != Filters(metadata={"a": 2}).key()


def test_matches() -> None:
    meta = {"author": "Ada", "year": "2020", "tags": ["ml", "nlp"], "draft": False, "date": "2021-06-30"}
    m = lambda **kw: Filters(**kw).matches(document_id=7, source="docs/guide/intro.md", meta=meta)  # noqa: E731
    assert m(source_prefix="docs/") and not m(source_prefix="guide/")
    assert m(source_glob="docs/*.md") and m(source_glob="*/intro.*") and not m(source_glob="*.pdf")
    assert not m(source_glob="Docs/*")  # case-sensitive, like paths
    assert m(document_ids=(1, 7)) and not m(document_ids=(1, 2))
    assert m(metadata={"author": "Ada"}) and not m(metadata={"author": "ada"})
    assert m(metadata={"year": 2020})  # "2020" stored, 2020 asked
    assert m(metadata={"tags": "nlp"}) and not m(metadata={"tags": "cv"})  # list membership
    assert m(metadata={"author": ["Bob", "Ada"]})  # any of
    assert m(metadata={"draft": False}) and m(metadata={"draft": "false"}) and not m(metadata={"draft": 0})
    assert not m(metadata={"missing": "x"})
    assert m(date_from=date(2021, 6, 30), date_to=date(2021, 6, 30))
    assert not m(date_from=date(2021, 7, 1))
    assert m(metadata={"author": "Ada"}, source_prefix="docs/", date_to=date(2022, 1, 1))
    assert not m(metadata={"author": "Ada"}, source_prefix="nope/")


def test_document_date() -> None:
    mtime = datetime(2019, 3, 4, 12, tzinfo=UTC)
    assert document_date({"date": "2021-02-03"}, mtime) == date(2021, 2, 3)
    assert document_date({"date": "2021-02-03T10:00:00"}, None) == date(2021, 2, 3)
    assert document_date({"date": "2021-05"}, None) == date(2021, 5, 1)
    assert document_date({"date": 1999}, None) == date(1999, 1, 1)
    assert document_date({"date": "someday"}, mtime) == date(2019, 3, 4)  # unparseable: the file's date
    assert document_date({}, mtime) == date(2019, 3, 4)
    assert document_date({}, None) is None
    assert not Filters(date_from=date(2000, 1, 1)).matches(document_id=1, source="a", meta={}, mtime=None)


def test_value_matches() -> None:
    assert value_matches(1, 1) and value_matches("1", 1) and value_matches(1.0, 1)
    assert not value_matches(True, 1) and not value_matches(1, True)
    assert value_matches(["a", "b"], ["c", "b"])


@pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)
def test_allowed_ids_from_the_database(tmp_path, database) -> None:  # type: ignore[no-untyped-def]
    db = Database(database or f"sqlite:///{tmp_path / 'f.db'}")
    with db.session() as s:
        coll = repo.create_collection(s, "c", "m", 4)
        other = repo.create_collection(s, "other", "m", 4)
        ids = {}
        specs = [("docs/a.md", {"lang": "en", "date": "2024-01-10"}, "ingested", coll.id),
                 ("docs/b_c.md", {"lang": "fr"}, "ingested", coll.id),
                 ("docs%x.md", {"lang": "en"}, "ingested", coll.id),  # LIKE wildcards are escaped
                 ("notes/c.txt", {"lang": "en", "date": "2023-12-31"}, "ingested", coll.id),
                 ("docs/failed.md", {"lang": "en"}, "failed", coll.id),
                 ("docs/a.md", {"lang": "en"}, "ingested", other.id)]
        for n, (source, meta, status, cid) in enumerate(specs):
            d = Document(collection_id=cid, source=source, sha256="0" * 64, media_type="text/plain", size=1,
                         meta=meta, status=status, mtime=datetime(2020, 1, 1, tzinfo=UTC))
            s.add(d)
            s.flush()
            ids[(source, cid)] = d.id
            for o in range(2):
                s.add(Chunk(document_id=d.id, collection_id=cid, ordinal=o, text=f"t{n}{o}", char_start=0,
                            char_end=1, token_count=1, meta={}, heading_path=[], embedding=b"\0" * 16))
        s.flush()
        a, bc, pct, notes = (ids[("docs/a.md", coll.id)], ids[("docs/b_c.md", coll.id)],
                             ids[("docs%x.md", coll.id)], ids[("notes/c.txt", coll.id)])
        assert allowed_document_ids(s, coll.id, Filters(source_prefix="docs/")) == sorted([a, bc])
        assert allowed_document_ids(s, coll.id, Filters(source_prefix="docs%")) == [pct]
        assert allowed_document_ids(s, coll.id, Filters(source_prefix="docs/b_")) == [bc]
        assert allowed_document_ids(s, coll.id, Filters(metadata={"lang": "en"})) == sorted([a, pct, notes])
        assert allowed_document_ids(s, coll.id, Filters(date_from=date(2024, 1, 1))) == [a]
        # documents without a date metadata fall back to their mtime (2020-01-01)
        assert allowed_document_ids(s, coll.id, Filters(date_to=date(2020, 1, 1))) == sorted([bc, pct])
        assert allowed_document_ids(s, coll.id, Filters(document_ids=(a, ids[("docs/a.md", other.id)]))) == [a]
        chunks = allowed_chunk_ids(s, coll.id, Filters(source_glob="notes/*"))
        assert chunks is not None and len(chunks) == 2
        assert allowed_chunk_ids(s, coll.id, None) is None
        assert allowed_chunk_ids(s, coll.id, Filters(source_prefix="zzz")).tolist() == []
    db.dispose()
