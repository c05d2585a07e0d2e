"""`ctxqa` command line: thin wrappers that parse arguments, call the library and print with rich."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ctxqa.api.cli import register as register_api
from ctxqa.context import Context, apply_process_defaults
from ctxqa.rag.config import Settings
from ctxqa.rag.db import repo

app = typer.Typer(help="ctxqa: citation-backed answers over your own documents.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
docs_app = typer.Typer(help="Documents in a collection.", no_args_is_help=True)
coll_app = typer.Typer(help="Collections.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(docs_app, name="docs")
app.add_typer(coll_app, name="collections")

out = Console()
err = Console(stderr=True)

CollectionOpt = Annotated[Optional[str], typer.Option("--collection", "-c", help="Collection name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def _ctx() -> Context:
    try:
        return Context(Settings())
    except Exception as e:  # pydantic ValidationError, bad TOML...
        err.print(f"[red]error:[/] invalid settings: {e}")
        raise typer.Exit(2) from e


def _fail(msg: str, code: int = 1) -> None:
    err.print(f"[red]error:[/] {msg}")
    raise typer.Exit(code)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")


@app.command()
def config(json_out: JsonOpt = False) -> None:
    """Print the effective settings (defaults < ctxqa.toml < CTXQA_* env) and the embedding backend that runs."""
    from ctxqa.rag.embed.embedder import backend_choice

    settings = _ctx().settings
    eff = settings.effective()
    # `auto` is measured on this CPU on first use (progress on stderr), then read from the cache.
    choice = backend_choice(settings, progress=lambda m: err.print(m, markup=False, highlight=False))
    if json_out:
        _print_json({**eff, "embedding_backend_choice": choice.to_json()})
        return
    t = Table("setting", "value", "env var")
    for k, v in eff.items():
        t.add_row(k, str(v), f"CTXQA_{k.upper()}")
    when = f" (measured {choice.measured_at} in {choice.decided_s:.1f} s)" if choice.measured_at else ""
    t.add_row("embedding backend running", choice.reason + when, "")
    out.print(t)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending Alembic migrations."""
    from ctxqa.rag.db.session import Database

    settings = _ctx().settings
    d = Database(settings.db_url, auto_migrate=False)
    before, after = d.upgrade()
    out.print(f"database {settings.db_url}: {before or '(empty)'} → {after}")


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders.")],
    collection: CollectionOpt = None,
    include: Annotated[list[str], typer.Option("--include", help="Glob of files to take (repeatable).")] = [],
    exclude: Annotated[list[str], typer.Option("--exclude", help="Glob of files to skip (repeatable).")] = [],
    meta: Annotated[list[str], typer.Option("--meta", help="key=value metadata for every file.")] = [],
    password: Annotated[Optional[str], typer.Option("--password", help="Password for encrypted PDFs.")] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Remove documents whose files are gone.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Ingest files and folders (incremental: unchanged files are skipped)."""
    from ctxqa.ingest.pipeline import parse_meta_args

    ctx = _ctx()
    try:
        extra = parse_meta_args(meta)
    except ValueError as e:
        _fail(str(e), 2)
    show = not quiet and not json_out and err.is_terminal or os.environ.get("CTXQA_PROGRESS") == "1"
    progress = Progress(TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[pages]} pages · {task.fields[chunks]} chunks · "
                                   "{task.fields[rate]:.1f} chunks/s"), TimeElapsedColumn(),
                        TextColumn("{task.fields[current]}"), console=err, disable=not show)
    task = progress.add_task("ingest", total=None, pages=0, chunks=0, rate=0.0, current="")

    def on_progress(p: Any) -> None:
        progress.update(task, total=p.files_total, completed=p.files_done, pages=p.pages, chunks=p.chunks,
                        rate=p.chunks / p.elapsed if p.elapsed else 0.0, current=p.current[-50:])

    try:
        with progress:
            report = ctx.ingestor.ingest(paths, collection=collection, include=include, exclude=exclude,
                                         meta=extra, password=password, prune=prune, progress=on_progress)
    except (repo.EmbeddingMismatch, ValueError) as e:
        _fail(str(e), 2)
    if json_out:
        _print_json({"collection": report.collection, "summary": report.summary(), "timings": report.timings,
                     "results": [r.__dict__ for r in report.results]})
    else:
        s = report.summary()
        t = report.timings
        err.print(f"[bold]{report.collection}[/]: {s['added']} added, {s['updated']} updated, "
                  f"{s['unchanged']} unchanged, {s['removed']} removed, {s['skipped']} skipped, "
                  f"{s['failed']} failed · {report.pages} pages, {report.chunks} chunks in {t['total']:.1f}s "
                  f"(extract {t['extract']:.1f}s, chunk {t['chunk']:.1f}s, embed {t['embed']:.1f}s, "
                  f"store {t['store'] + t['index']:.1f}s)")
        for r in report.results:
            if r.status in ("failed", "skipped") or (r.status in ("added", "updated") and r.reason):
                colour = "red" if r.status == "failed" else "yellow"
                err.print(f"  [{colour}]{r.status}[/] {r.path}: {r.reason}")
    if report.failed:
        raise typer.Exit(1)


def _hit_json(h: Any) -> dict[str, Any]:
    return {"chunk_id": h.chunk_id, "score": h.score, "document_id": h.document_id, "source": h.source,
            "title": h.title, "pages": h.pages, "heading_path": list(h.heading_path), "text": h.text,
            "scores": h.scores}


@app.command()
def search(
    query: Annotated[str, typer.Argument()],
    k: Annotated[int, typer.Option("-k", help="Number of hits.")] = 5,
    collection: CollectionOpt = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="dense | lexical | hybrid")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Search a collection: top hits with score, source, title, page and a snippet."""
    ctx = _ctx()
    kwargs: dict[str, Any] = {"collection": collection, "k": k}
    if mode:
        kwargs["mode"] = mode
    try:
        res = ctx.retriever.search(query, **kwargs)
    except (repo.NotFound, repo.EmbeddingMismatch, ValueError) as e:
        _fail(str(e), 2)
    if json_out:
        _print_json({"query": query, "hits": [_hit_json(h) for h in res.hits], "timings": res.timings})
        return
    if not res.hits:
        out.print("no hits")
    for i, h in enumerate(res.hits, 1):
        page = f" p.{h.page_start}" + (f"-{h.page_end}" if h.page_end and h.page_end != h.page_start else "") \
            if h.page_start else ""
        snippet = " ".join(h.text.split())[:240]
        out.print(f"[bold]{i}.[/] [cyan]{h.score:.3f}[/] {h.source}{page} — {h.title or ''}")
        out.print(f"   {snippet}", highlight=False)


@docs_app.command("list")
def docs_list(collection: CollectionOpt = None, limit: int = 100, offset: int = 0, json_out: JsonOpt = False) -> None:
    """List documents."""
    ctx = _ctx()
    with ctx.db.session() as s:
        try:
            coll = repo.require_collection(s, collection or ctx.settings.default_collection)
        except repo.NotFound as e:
            _fail(str(e), 2)
        docs, total = repo.list_documents(s, coll.id, offset=offset, limit=limit)
    if json_out:
        _print_json({"total": total, "documents": [
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
    from ctxqa.rag.db.models import Document

    ctx = _ctx()
    with ctx.db.session() as s:
        d = s.get(Document, doc_id)
        if d is None:
            _fail(f"no document with id {doc_id}", 2)
        info = {"id": d.id, "collection": d.collection.name, "source": d.source, "path": d.path, "title": d.title,
                "status": d.status, "error": d.error, "media_type": d.media_type, "size": d.size,
                "sha256": d.sha256, "pages": d.page_count, "empty_pages": d.empty_pages, "chunks": d.chunk_count,
                "ingested_at": d.ingested_at, "metadata": {k: v for k, v in (d.meta or {}).items()
                                                           if not k.startswith("_")}}
        if chunks:
            info["chunk_list"] = [{"id": c.id, "ordinal": c.ordinal, "pages": [c.page_start, c.page_end],
                                   "tokens": c.token_count, "headings": c.heading_path,
                                   "text": c.text[:200]} for c in d.chunks]
    _print_json(info)


@docs_app.command("rm")
def docs_rm(doc_ids: list[int], collection: CollectionOpt = None) -> None:
    """Delete documents (from the database and the index)."""
    ctx = _ctx()
    try:
        n = ctx.ingestor.delete_documents(collection or ctx.settings.default_collection, doc_ids)
    except repo.NotFound as e:
        _fail(str(e), 2)
    out.print(f"removed {n} document(s)")
    if n < len(doc_ids):
        raise typer.Exit(1)


@coll_app.command("list")
def coll_list(json_out: JsonOpt = False) -> None:
    """List collections with their embedding model and sizes."""
    ctx = _ctx()
    with ctx.db.session() as s:
        rows = repo.list_collections(s)
    if json_out:
        _print_json([{"name": c.name, "embedding_model": c.embedding_model, "dim": c.embedding_dim,
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
    ctx = _ctx()
    if index_type not in ("auto", "flat", "hnsw", "ivf"):
        _fail("--index-type must be auto, flat, hnsw or ivf", 2)
    with ctx.db.session() as s:
        if repo.get_collection(s, name):
            _fail(f"collection {name!r} already exists", 2)
        try:
            repo.create_collection(s, name, ctx.embedder.name, ctx.embedder.dim, index_type)
        except ValueError as e:
            _fail(str(e), 2)
    out.print(f"created collection {name}")


@coll_app.command("rm")
def coll_rm(name: str, yes: Annotated[bool, typer.Option("--yes", "-y")] = False) -> None:
    """Delete a collection, its documents and its index."""
    ctx = _ctx()
    if not yes and not typer.confirm(f"delete collection {name!r} and all its documents?"):
        raise typer.Exit(1)
    with ctx.db.session() as s:
        try:
            coll = repo.require_collection(s, name)
        except repo.NotFound as e:
            _fail(str(e), 2)
        cid = coll.id
        s.delete(coll)
    ctx.store.drop(cid)
    out.print(f"removed collection {name}")


@app.command()
def stats(json_out: JsonOpt = False) -> None:
    """Collections, documents, chunks, pages and storage sizes."""
    from sqlalchemy import func, select

    from ctxqa.rag.db.models import Chunk, Document

    ctx = _ctx()
    with ctx.db.session() as s:
        rows = repo.list_collections(s)
        failed = s.scalar(select(func.count(Document.id)).where(Document.status == "failed")) or 0
        pages = s.scalar(select(func.coalesce(func.sum(Document.page_count), 0))) or 0
        tokens = s.scalar(select(func.coalesce(func.sum(Chunk.token_count), 0))) or 0
    files = list(ctx.settings.index_dir.glob("*")) if ctx.settings.index_dir.exists() else []
    info = {"database": ctx.settings.db_url, "collections": len(rows), "documents": sum(d for _, d, _ in rows),
            "failed_documents": failed, "chunks": sum(n for _, _, n in rows), "pdf_pages": int(pages),
            "chunk_tokens": int(tokens), "index_bytes": sum(f.stat().st_size for f in files if f.is_file())}
    if json_out:
        _print_json(info)
        return
    for k, v in info.items():
        out.print(f"{k:>18}: {v}")


@app.command()
def doctor(repair: Annotated[bool, typer.Option("--repair", help="Rebuild what is out of step.")] = False,
           json_out: JsonOpt = False) -> None:
    """Check that the database and every index agree; --repair rebuilds what does not."""
    ctx = _ctx()
    with ctx.db.session() as s:
        colls = [c for c, _, _ in repo.list_collections(s)]
    problems = 0
    report = []
    for c in colls:
        chk = ctx.store.check(c)
        entry = {"collection": c.name, "ok": chk.ok, "db_chunks": chk.db_chunks, "index_vectors": chk.index_vectors,
                 "db_generation": chk.db_generation, "index_generation": chk.index_generation,
                 "missing_in_index": chk.missing_in_index[:10], "stale_in_index": chk.stale_in_index[:10]}
        extra = getattr(ctx.store, "check_lexical", None)
        if extra is not None:
            lex = extra(c)
            entry["lexical_ok"] = lex.ok
            chk_ok = chk.ok and lex.ok
        else:
            chk_ok = chk.ok
        if not chk_ok:
            problems += 1
            if repair:
                ctx.store.rebuild(c)
                entry["repaired"] = True
        report.append(entry)
    if json_out:
        _print_json({"ok": problems == 0 or repair, "collections": report})
    else:
        for e in report:
            state = "[green]ok[/]" if e["ok"] and e.get("lexical_ok", True) else (
                "[yellow]repaired[/]" if e.get("repaired") else "[red]out of step[/]")
            out.print(f"{e['collection']}: {state} — {e['db_chunks']} chunks in database, {e['index_vectors']} "
                      f"vectors in index (generation db {e['db_generation']}, index {e['index_generation']})")
        if problems and not repair:
            out.print("run `ctxqa doctor --repair` (or `ctxqa reindex`) to rebuild from the stored vectors")
    if problems and not repair:
        raise typer.Exit(1)


@app.command()
def reindex(collection: CollectionOpt = None) -> None:
    """Rebuild indexes from the vectors stored in the database (no re-embedding)."""
    ctx = _ctx()
    with ctx.db.session() as s:
        colls = [c for c, _, _ in repo.list_collections(s) if collection is None or c.name == collection]
    if collection and not colls:
        _fail(f"collection {collection!r} does not exist", 2)
    for c in colls:
        idx = ctx.store.rebuild(c)
        out.print(f"{c.name}: rebuilt {idx.index_type} index with {idx.ntotal} vectors")


def _citation_line(i: int, c: Any) -> str:
    if not c.pages:
        pages = ""
    elif len(c.pages) == 1:
        pages = f", p. {c.pages[0]}"
    else:
        pages = f", pp. {c.pages[0]}-{c.pages[-1]}"
    where = c.source or ", ".join(f"{k}: {v}" for k, v in c.raw.items()) or "?"
    label = {"verified": "", "inferred": " [inferred]", "unverified": " [UNVERIFIED: matches no provided block]"}
    title = f" — {c.title}" if c.title and c.title != c.source else ""
    return f"[{i}] {where}{pages}{title}{label.get(c.status, '')}" + (
        f" (support {c.support:.2f})" if c.status != "unverified" else "")


def answer_json(a: Any) -> dict[str, Any]:
    return {
        "question": a.question, "answer": a.answer, "abstained": a.abstained, "model": a.model,
        "citations": [{"status": c.status, "block": c.block_ref, "chunk_ids": c.chunk_ids,
                       "document_id": c.document_id, "source": c.source, "title": c.title, "pages": c.pages,
                       "char_start": c.char_start, "char_end": c.char_end, "match": c.match,
                       "support": round(c.support, 4), "raw": c.raw} for c in a.citations],
        "retrieved": [_hit_json(h) for h in a.hits],
        "blocks_used": a.blocks_used, "blocks_dropped": a.blocks_dropped,
        "usage": {"prompt_tokens": a.usage.prompt_tokens, "completion_tokens": a.usage.completion_tokens},
        "timings": {k: round(v, 6) for k, v in a.timings.items()}, "raw_output": a.raw_output,
    }


@app.command()
def ask(
    question: Annotated[list[str], typer.Argument(help="One or more questions (answered together).")],
    collection: CollectionOpt = None,
    k: Annotated[Optional[int], typer.Option("-k", help="Chunks to retrieve.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Prompt profile (see `ctxqa models`).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature")] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="dense | lexical | hybrid")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they are generated.")] = False,
    show_prompt: Annotated[bool, typer.Option("--show-prompt", help="Print the prompt sent to the model.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Answer a question from the documents, with sources."""
    from ctxqa.rag.answer import AskOptions
    from ctxqa.rag.generate.base import GeneratorError

    ctx = _ctx()
    opts = AskOptions(collection=collection, k=k, mode=mode, max_new_tokens=max_new_tokens,
                      temperature=temperature, profile=model)
    try:
        if stream and not json_out:
            ans = None
            for ev in ctx.answerer.stream(question, opts):
                if ev.kind == "delta" and ev.text:
                    sys.stdout.write(ev.text)
                    sys.stdout.flush()
                elif ev.kind == "final":
                    ans = ev.answer
            sys.stdout.write("\n")
            assert ans is not None
        else:
            ans = ctx.answerer.answer(question, opts)
    except (repo.NotFound, repo.EmbeddingMismatch, GeneratorError, ValueError) as e:
        _fail(str(e), 2)
    if json_out:
        _print_json(answer_json(ans))
        return
    if show_prompt:
        err.print(ans.prompt, highlight=False, markup=False)
    if not stream:
        out.print(ans.answer, highlight=False, markup=False)
    if ans.citations:
        out.print("\n[bold]Sources[/]")
        for i, c in enumerate(ans.citations, 1):
            out.print(_citation_line(i, c), highlight=False, markup=False)
    elif ans.abstained:
        out.print("\n(no sources: not found in the documents)")
    t = ans.timings
    err.print(f"[dim]{ans.usage.prompt_tokens} prompt + {ans.usage.completion_tokens} completion tokens · "
              + " · ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items()) + "[/]")


@app.command()
def models(json_out: JsonOpt = False) -> None:
    """List prompt profiles and generation backends, and whether each can load here."""
    from ctxqa.rag.generate import backend_status
    from ctxqa.rag.profiles import PROFILES, profile_for_model

    ctx = _ctx()
    status = backend_status(ctx.settings)
    chosen = ctx.settings.llm_profile or profile_for_model(ctx.settings.llm_model)
    profiles = {name: p for name, p in PROFILES.items() if p.name == name}
    if json_out:
        _print_json({"configured": {"backend": ctx.settings.llm_backend, "model": ctx.settings.llm_model,
                                    "profile": chosen},
                     "backends": status,
                     "profiles": [{"name": n, "context_length": p.context_length, "rope_scale": p.rope_scale,
                                   "stop": list(p.stop), "description": p.description}
                                  for n, p in profiles.items()]})
        return
    out.print(f"configured: backend [bold]{ctx.settings.llm_backend}[/], model {ctx.settings.llm_model}, "
              f"profile [bold]{chosen}[/]")
    t = Table("backend", "can load here", "details")
    for b in status:
        ok = b.get("ready", False)
        t.add_row(str(b["backend"]) + (" *" if b.get("selected") else ""), "[green]yes[/]" if ok else "[red]no[/]",
                  str(b.get("reason") or b.get("model_path") or ""))
    out.print(t)
    t = Table("profile", "context", "rope", "stop strings", "description")
    for n, p in profiles.items():
        t.add_row(n + (" *" if n == chosen else ""), str(p.context_length), str(p.rope_scale),
                  ", ".join(repr(x) for x in p.stop), p.description)
    out.print(t)


# The API layer's commands (serve, keys) register themselves here, on top; the factory is this process's wiring.
register_api(app, app_factory="ctxqa.server:factory")


def main() -> None:
    apply_process_defaults()
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
