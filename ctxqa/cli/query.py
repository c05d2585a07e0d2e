"""`ctxqa search` and `ctxqa ask`: the query side, printed for people or as the API's JSON views (--json)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ctxqa.cli.common import CollectionOpt, JsonOpt, context, err, fail, out, print_json
from ctxqa.rag.answer import AskOptions
from ctxqa.rag.db import repo
from ctxqa.rag.generate.base import GeneratorError
from ctxqa.rag.retrieve.options import Mode
from ctxqa.rag.types import Answer
from ctxqa.rag.views import (
    UNSUPPORTED_MARK,
    AnswerView,
    HitView,
    SearchView,
    SentenceView,
    evidence_text,
    pages_label,
    source_line,
)

ModeOpt = Annotated[Optional[Mode], typer.Option("--mode", help="dense | lexical | hybrid")]


def search(
    query: Annotated[str, typer.Argument()],
    k: Annotated[int, typer.Option("-k", help="Number of hits.")] = 5,
    collection: CollectionOpt = None,
    mode: ModeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Search a collection: top hits with score, source, title, page and a snippet."""
    ctx = context()
    coll = collection or ctx.settings.default_collection
    try:
        res = ctx.retriever.search(query, collection=coll, k=k, mode=mode)
    except (repo.NotFound, repo.EmbeddingMismatch, ValueError) as e:
        fail(str(e), 2)
    if json_out:
        print_json(SearchView.from_result(query, coll, res.hits, res.timings).model_dump(mode="json"))
        return
    if not res.hits:
        out.print("no hits")
    for i, h in enumerate(res.hits, 1):
        snippet = " ".join(h.text.split())[:240]
        out.print(f"[bold]{i}.[/] [cyan]{h.score:.3f}[/] {h.source}{pages_label(h.pages)} — {h.title or ''}",
                  highlight=False)
        out.print(f"   {snippet}", highlight=False, markup=False)


def ask(
    question: Annotated[list[str], typer.Argument(help="One or more questions (answered together).")],
    collection: CollectionOpt = None,
    k: Annotated[Optional[int], typer.Option("-k", help="Chunks to retrieve.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Prompt profile (see `ctxqa models`).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature")] = None,
    mode: ModeOpt = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they are generated.")] = False,
    quote: Annotated[bool, typer.Option("--quote", help="Answer with the documents' own sentences (no model).")] = False,
    show_prompt: Annotated[bool, typer.Option("--show-prompt", help="Print the prompt sent to the model.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Answer a question from the documents, with sources."""
    ctx = context()
    coll = collection or ctx.settings.default_collection
    opts = AskOptions(collection=coll, k=k, retrieval=mode, max_new_tokens=max_new_tokens,
                      temperature=temperature, profile=model, mode="quote" if quote else None)
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
            if ans is None:
                fail("the answer stream ended without a final answer", 1)
        else:
            ans = ctx.answerer.answer(question, opts)
    except (repo.NotFound, repo.EmbeddingMismatch, GeneratorError, ValueError) as e:
        fail(str(e), 2)
    if json_out:
        print_json(AnswerView.from_answer(ans, coll).model_dump(mode="json"))
        return
    if show_prompt:
        err.print(ans.prompt, highlight=False, markup=False)
    if not stream:
        out.print(styled_answer(ans))
    print_verdict(ans, streamed=stream)
    if ans.citations:
        out.print("\n[bold]Sources[/]")
        for i, c in enumerate(ans.citations, 1):
            support = f" (support {c.support:.2f})" if c.status != "unverified" else ""
            out.print(source_line(i, c) + support, highlight=False, markup=False)
    elif ans.abstained:
        out.print("\n(no sources: not found in the documents)")
    evidence = evidence_text(ans)
    if evidence:
        out.print("")
        out.print(evidence, highlight=False, markup=False)
    t = ans.timings
    err.print(f"[dim]{ans.usage.prompt_tokens} prompt + {ans.usage.completion_tokens} completion tokens · "
              + " · ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items()) + "[/]")


_STYLE = {"unsupported": "bold red", "partial": "yellow"}


def styled_answer(ans: Answer) -> Text:
    """The answer with unsupported sentences in red and followed by "[unsupported]", partly supported ones in
    yellow: distinct on a terminal and in plain text alike."""
    text = Text()
    pos = 0
    for s in ans.sentences:
        style = _STYLE.get(s.label)
        if style is None:
            continue
        text.append(ans.answer[pos:s.start])
        text.append(ans.answer[s.start:s.end], style=style)
        text.append(f" {UNSUPPORTED_MARK}" if s.label == "unsupported" else " [partly supported]", style=style)
        pos = s.end
    text.append(ans.answer[pos:])
    return text


def print_verdict(ans: Answer, *, streamed: bool) -> None:
    """One line when the documents do not (fully) support the answer; after a stream, the sentences at fault."""
    counted = [s for s in ans.sentences if s.label != "neutral"]
    bad = [s for s in counted if s.label != "supported"]
    if ans.replaced:
        out.print(f"\n[bold yellow]warning:[/] the model's answer was not supported by the documents "
                  f"({ans.replaced}); shown instead: {'a quote from them' if ans.mode == 'quote' else 'not found'}")
    elif ans.grounding in ("unsupported", "partial"):
        out.print(f"\n[bold red]warning:[/] {len(bad)} of {len(counted)} sentences are not (fully) supported by the "
                  f"documents — check them against the passages below")
        if streamed:
            for s in bad:
                out.print(Text(f"  {UNSUPPORTED_MARK if s.label == 'unsupported' else '[partly supported]'} "
                               f"{s.text}", style=_STYLE[s.label]))


def verify(
    answer: Annotated[str, typer.Argument(help="The answer to check; '-' reads it from stdin.")],
    passage: Annotated[Optional[list[str]], typer.Option("--passage", "-p", help="A passage to check against "
                                                         "(repeatable); '@FILE' reads one from a file.")] = None,
    question: Annotated[Optional[str], typer.Option("--question", "-q", help="Check against what this question "
                                                    "retrieves instead.")] = None,
    collection: CollectionOpt = None,
    k: Annotated[Optional[int], typer.Option("-k", help="Chunks to retrieve (with --question).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check any answer sentence by sentence, with the scorer `ask` uses: against given passages, or against what
    a question retrieves. Exit code 1 unless every sentence is supported."""
    text = sys.stdin.read() if answer == "-" else answer
    passages = None
    if passage is not None:
        passages = []
        for item in passage:
            if item.startswith("@"):
                try:
                    passages.append(Path(item[1:]).read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError) as e:
                    fail(f"cannot read passage file {item[1:]!r}: {e}", 2)
            else:
                passages.append(item)
    ctx = context()
    opts = AskOptions(collection=collection or ctx.settings.default_collection, k=k)
    try:
        check, hits = ctx.answerer.verify(text, passages=passages, question=question, opts=opts)
    except (repo.NotFound, repo.EmbeddingMismatch, ValueError) as e:
        fail(str(e), 2)
    if json_out:
        print_json({"grounding": check.grounding, "sentences": [SentenceView.from_check(c).model_dump(mode="json")
                                                                for c in check.sentences],
                    "chunks": [HitView.from_hit(h).model_dump(mode="json") for h in hits]})
    else:
        for c in check.sentences:
            style = _STYLE.get(c.label, "green" if c.label == "supported" else "dim")
            out.print(Text(f"[{c.label}] {c.score:.2f} ", style=style) + Text(c.text))
            if c.evidence is not None and c.label != "neutral":
                ev = c.evidence
                where = f"passage {ev.passage + 1}" if ev.source is None and ev.passage is not None else \
                    f"{ev.source}{pages_label(ev.pages)}"
                out.print(Text(f"    ← {where}: \"{ev.text[:160]}\"", style="dim"))
            if c.missing:
                out.print(Text(f"    not in any passage: {', '.join(c.missing)}", style="red"))
        out.print(f"\ngrounding: [bold]{check.grounding}[/]")
    if check.grounding != "supported":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(search)
    app.command()(ask)
    app.command()(verify)
