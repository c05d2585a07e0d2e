"""`ctxqa docs list|show|rm` and `ctxqa collections list|create|rm`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ctxqa.cli.common import CollectionOpt, JsonOpt, context, fail, out, print_json
from ctxqa.rag.db import repo
from ctxqa.rag.index.vector import INDEX_TYPES
from ctxqa.rag.originals import prune_unreferenced
from ctxqa.rag.views import public_metadata

docs_app = typer.Typer(help="Documents in a collection.", no_args_is_help=True)
coll_app = typer.Typer(help="Collections.", no_args_is_help=True)


@docs_app.command("list")
def docs_list(collection: CollectionOpt = None, limit: int = 100, offset: int = 0, json_out: JsonOpt = False) -> None:
    """List documents."""
    ctx = context()
    with ctx.db.session() as s:
        try:
            coll = repo.require_collection(s, collection or ctx.settings.default_collection)
        except repo.NotFound as e:
            fail(str(e), 2)
        docs, total = repo.list_documents(s, coll.id, offset=offset, limit=limit)
    if json_out:
        print_json({"total": total, "documents": [
            {"id": d.id, "source": d.source, "title": d.title, "status": d.status, "chunks": d.chunk_count,
             "pages": d.page_count, "error": d.error} for d in docs]})
        return
    t = Table("id", "source", "title", "status", "pages", "chunks", title=f"{total} documents")
    for d in docs:
        t.add_row(str(d.id), d.source, (d.title or "")[:50], d.status if d.status == "ingested" else
                  f"[red]{d.status}[/]", str(d.page_count or ""), str(d.chunk_count))
    out.print(t)


@docs_app.command("show")
def docs_show(doc_id: int, chunks: Annotated[bool, typer.Option("--chunks")] = False) -> None:
    """Show one document's metadata (and its chunks)."""
    ctx = context()
    with ctx.db.session() as s:
        d = repo.get_document(s, doc_id)
        if d is None:
            fail(f"no document with id {doc_id}", 2)
        info = {"id": d.id, "collection": d.collection.name, "source": d.source, "path": d.path, "title": d.title,
                "title_source": d.title_source, "date": d.date, "date_source": d.date_source, "period": d.period,
                "indexed_header": d.context, "status": d.status, "error": d.error, "media_type": d.media_type, "size": d.size,
                "sha256": d.sha256, "pages": d.page_count, "empty_pages": d.empty_pages, "chunks": d.chunk_count,
                "ingested_at": d.ingested_at, "metadata": public_metadata(d.meta)}
        if chunks:
            info["chunk_list"] = [{"id": c.id, "ordinal": c.ordinal, "pages": [c.page_start, c.page_end],
                                   "tokens": c.token_count, "headings": c.heading_path,
                                   "text": c.text[:200]} for c in d.chunks]
    print_json(info)


@docs_app.command("rm")
def docs_rm(doc_ids: list[int], collection: CollectionOpt = None) -> None:
    """Delete documents (from the database and the index)."""
    ctx = context()
    try:
        n = ctx.ingestor.delete_documents(collection or ctx.settings.default_collection, doc_ids)
    except repo.NotFound as e:
        fail(str(e), 2)
    out.print(f"removed {n} document(s)")
    if n < len(doc_ids):
        raise typer.Exit(1)


@coll_app.command("list")
def coll_list(json_out: JsonOpt = False) -> None:
    """List collections with their embedding model and sizes."""
    ctx = context()
    with ctx.db.session() as s:
        rows = repo.list_collections(s)
    if json_out:
        print_json([{"name": c.name, "embedding_model": c.embedding_model, "dim": c.embedding_dim,
                     "index_type": c.index_type, "documents": d, "chunks": n, "created_at": c.created_at}
                    for c, d, n in rows])
        return
    t = Table("name", "embedding model", "dim", "index", "documents", "chunks")
    for c, d, n in rows:
        t.add_row(c.name, c.embedding_model, str(c.embedding_dim), c.index_type, str(d), str(n))
    out.print(t)


@coll_app.command("create")
def coll_create(name: str, index_type: Annotated[str, typer.Option("--index-type")] = "auto") -> None:
    """Create an empty collection bound to the configured embedding model."""
    ctx = context()
    if index_type not in ("auto", *INDEX_TYPES):
        fail(f"--index-type must be one of auto, {', '.join(INDEX_TYPES)}", 2)
    with ctx.db.session() as s:
        if repo.get_collection(s, name):
            fail(f"collection {name!r} already exists", 2)
        try:
            repo.create_collection(s, name, ctx.embedder.name, ctx.embedder.dim, index_type)
        except ValueError as e:
            fail(str(e), 2)
    out.print(f"created collection {name}")


@coll_app.command("rm")
def coll_rm(name: str, yes: Annotated[bool, typer.Option("--yes", "-y")] = False) -> None:
    """Delete a collection, its documents and its index."""
    ctx = context()
    if not yes and not typer.confirm(f"delete collection {name!r} and all its documents?"):
        raise typer.Exit(1)
    with ctx.db.session() as s:
        try:
            coll = repo.require_collection(s, name)
        except repo.NotFound as e:
            fail(str(e), 2)
        cid = coll.id
        repo.delete_collection(s, coll)
    ctx.store.drop(cid)
    prune_unreferenced(ctx.settings, ctx.db)  # the kept PDF copies of its documents
    out.print(f"removed collection {name}")


def register(app: typer.Typer) -> None:
    app.add_typer(docs_app, name="docs")
    app.add_typer(coll_app, name="collections")
