"""`ctxqa ingest`: files and folders into a collection, incrementally, with progress and a per-file report."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ctxqa.cli.common import CollectionOpt, JsonOpt, context, err, fail, print_json
from ctxqa.ingest.added_meta import parse_meta_args
from ctxqa.rag.db import repo


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders.")],
    collection: CollectionOpt = None,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Glob of files to take (repeatable).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Glob of files to skip (repeatable).")] = None,
    meta: Annotated[Optional[list[str]], typer.Option("--meta", help="key=value metadata for every file.")] = None,
    password: Annotated[Optional[str], typer.Option("--password", help="Password for encrypted PDFs.")] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Remove documents whose files are gone.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Ingest files and folders (incremental: unchanged files are skipped)."""
    ctx = context()
    try:
        extra = parse_meta_args(meta or [])
    except ValueError as e:
        fail(str(e), 2)
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
            report = ctx.ingestor.ingest(paths, collection=collection, include=include or [],
                                         exclude=exclude or [], meta=extra, password=password, prune=prune,
                                         progress=on_progress)
    except (repo.EmbeddingMismatch, ValueError) as e:
        fail(str(e), 2)
    if json_out:
        print_json({"collection": report.collection, "summary": report.summary(), "timings": report.timings,
                    "results": [dataclasses.asdict(r) for r in report.results]})
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


def register(app: typer.Typer) -> None:
    app.command()(ingest)
