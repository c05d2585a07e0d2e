"""Operating a ctxqa installation: `config`, `db upgrade`, `stats`, `doctor`, `reindex`, `models`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ctxqa.cli.common import CollectionOpt, JsonOpt, context, err, fail, out, print_json
from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Collection
from ctxqa.rag.db.session import Database
from ctxqa.rag.embed.embedder import backend_choice
from ctxqa.rag.generate import GeneratorError, backend_status, resolve_model_path
from ctxqa.rag.generate.inspect import configured_profile, inspect_model
from ctxqa.rag.index.store import IndexStore
from ctxqa.rag.profiles import PROFILES

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


def config(json_out: JsonOpt = False) -> None:
    """Print the effective settings (defaults < ctxqa.toml < CTXQA_* env) and the embedding backend that runs."""
    settings = context().settings
    eff = settings.effective()
    # `auto` is measured on this CPU on first use (progress on stderr), then read from the cache.
    choice = backend_choice(settings, progress=lambda m: err.print(m, markup=False, highlight=False))
    if json_out:
        print_json({**eff, "embedding_backend_choice": choice.to_json()})
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
    settings = context().settings
    d = Database(settings.db_url, auto_migrate=False)
    before, after = d.upgrade()
    out.print(f"database {settings.effective()['database_url']}: {before or '(empty)'} → {after}")


def stats(json_out: JsonOpt = False) -> None:
    """Collections, documents, chunks, pages and storage sizes."""
    ctx = context()
    with ctx.db.session() as s:
        rows = repo.list_collections(s)
        totals = repo.totals(s)
    files = list(ctx.settings.index_dir.glob("*")) if ctx.settings.index_dir.exists() else []
    info = {"database": ctx.settings.db_url, "collections": len(rows), "documents": sum(d for _, d, _ in rows),
            "failed_documents": totals["failed_documents"], "chunks": sum(n for _, _, n in rows),
            "pdf_pages": totals["pdf_pages"], "chunk_tokens": totals["chunk_tokens"],
            "index_bytes": sum(f.stat().st_size for f in files if f.is_file())}
    if json_out:
        print_json(info)
        return
    for k, v in info.items():
        out.print(f"{k:>18}: {v}")


def _check(store: IndexStore, c: Collection) -> dict[str, Any]:
    vec, lex = store.check(c), store.check_lexical(c)
    return {"collection": c.name, "ok": vec.ok and lex.ok, "vector_ok": vec.ok, "lexical_ok": lex.ok,
            "db_chunks": vec.db_chunks, "index_vectors": vec.index_vectors, "lexical_rows": lex.index_vectors,
            "db_generation": vec.db_generation, "index_generation": vec.index_generation,
            "missing_in_index": vec.missing_in_index[:10], "stale_in_index": vec.stale_in_index[:10]}


def doctor(repair: Annotated[bool, typer.Option("--repair", help="Rebuild what is out of step.")] = False,
           json_out: JsonOpt = False) -> None:
    """Check that the database and every index agree; --repair rebuilds what does not, then checks again."""
    ctx = context()
    with ctx.db.session() as s:
        colls = [c for c, _, _ in repo.list_collections(s)]
    report = []
    for c in colls:
        entry = _check(ctx.store, c)
        if not entry["ok"] and repair:
            ctx.store.rebuild(c)
            # Look again, from the files just written: "repaired" is what the check finds now, not a promise.
            entry = {**_check(ctx.store, c), "repaired": True, "found": entry}
        report.append(entry)
    ok = all(e["ok"] for e in report)
    if json_out:
        print_json({"ok": ok, "collections": report})
    else:
        for e in report:
            state = ("[yellow]repaired[/]" if e.get("repaired") else "[green]ok[/]") if e["ok"] else (
                "[red]still out of step after repair[/]" if e.get("repaired") else "[red]out of step[/]")
            out.print(f"{e['collection']}: {state} — {e['db_chunks']} chunks in database, {e['index_vectors']} "
                      f"vectors in index (generation db {e['db_generation']}, index {e['index_generation']})")
        if not ok and not repair:
            out.print("run `ctxqa doctor --repair` (or `ctxqa reindex`) to rebuild from the stored vectors")
    if not ok:
        raise typer.Exit(1)


def reindex(collection: CollectionOpt = None) -> None:
    """Rebuild indexes from the vectors stored in the database (no re-embedding)."""
    ctx = context()
    with ctx.db.session() as s:
        colls = [c for c, _, _ in repo.list_collections(s) if collection is None or c.name == collection]
    if collection and not colls:
        fail(f"collection {collection!r} does not exist", 2)
    for c in colls:
        idx = ctx.store.rebuild(c)
        out.print(f"{c.name}: rebuilt {idx.index_type} index with {idx.ntotal} vectors")


def models(path: Annotated[Optional[str], typer.Argument(help="A GGUF file or GPTQ/EXL2 directory to describe.")] = None,
           json_out: JsonOpt = False) -> None:
    """List prompt profiles and generation backends, or describe the model at PATH (no weights loaded)."""
    ctx = context()
    if path is not None:
        try:
            info = inspect_model(resolve_model_path(path), ctx.settings, spec=path)
        except GeneratorError as e:
            fail(str(e), 2)
        if json_out:
            print_json(info.to_dict())
            return
        t = Table("field", "value", show_header=False)
        for field, value in info.rows():
            t.add_row(field, value, style="red" if field == "problem" else None)
        out.print(t)
        return
    status = backend_status(ctx.settings)
    chosen = ctx.settings.llm_profile or configured_profile(ctx.settings).name
    profiles = {name: p for name, p in PROFILES.items() if p.name == name}
    if json_out:
        print_json({"configured": {"backend": ctx.settings.llm_backend, "model": ctx.settings.llm_model,
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
                  escape(", ".join(repr(x) for x in p.stop)), escape(p.description))  # "[/INST]" is not markup
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command()(config)
    app.add_typer(db_app, name="db")
    app.command()(stats)
    app.command()(doctor)
    app.command()(reindex)
    app.command()(models)
