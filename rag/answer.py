"""The answer pipeline: retrieve → pack → render → generate → parse → resolve → verify → Answer.

`answer()` and `stream()` share `prepare()` and `finish()`, so a streamed request ends with exactly the Answer
the non-streaming call returns for the same greedy request. The CLI and the API both call this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from ctxqa.rag import citations as cit
from ctxqa.rag.config import Settings
from ctxqa.rag.generate.base import Completion, Generator, GenParams
from ctxqa.rag.profiles import Profile, get_profile
from ctxqa.rag.prompt import pack_prompt
from ctxqa.rag.retrieve.retriever import Retriever
from ctxqa.rag.types import Answer, Blocks, Hit, Prompt, Usage

NOT_FOUND = "I could not find this in the documents."
# Room kept for the template, instruction and BEGINCONTEXT lines when budgeting neighbour chunks.
PROMPT_OVERHEAD_TOKENS = 256


@dataclass
class AskOptions:
    collection: str | None = None
    k: int | None = None
    mode: str | None = None
    filters: Any = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    profile: str | None = None


@dataclass
class Prepared:
    questions: list[str]
    hits: list[Hit]
    prompt: Prompt  # the user turn is a data part: no special tokens are read out of retrieved text
    blocks: Blocks
    params: GenParams
    profile: Profile
    abstain: bool
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class AnswerEvent:
    """One event of a streamed answer: the sources first, then text deltas, then the final Answer."""

    kind: Literal["sources", "delta", "final"]
    hits: list[Hit] | None = None
    text: str | None = None
    answer: Answer | None = None


def merge_hits(per_question: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    """Interleave several questions' rankings (round robin), keeping each chunk once, so every question gets
    its best evidence into the prompt before any gets its second best."""
    out: list[Hit] = []
    seen: set[int] = set()
    depth = max((len(h) for h in per_question), default=0)
    for i in range(depth):
        for hits in per_question:
            if i < len(hits) and hits[i].chunk_id not in seen:
                seen.add(hits[i].chunk_id)
                out.append(hits[i])
    return out[: max(k, len(per_question))] if len(per_question) > 1 else out


class Answerer:
    def __init__(self, settings: Settings, retriever: Retriever, generator: Callable[[], Generator]) -> None:
        self.settings = settings
        self.retriever = retriever
        self._generator = generator

    @property
    def generator(self) -> Generator:
        return self._generator()

    def profile(self, name: str | None = None) -> Profile:
        return get_profile(name or self.settings.llm_profile or self._model_profile)

    @cached_property
    def _model_profile(self) -> str:
        """The profile for the configured model: from its own name (GGUF general.name) or its file name."""
        from ctxqa.rag.generate.inspect import configured_profile

        return configured_profile(self.settings).name

    # -- stages --------------------------------------------------------------------------------------------
    def prepare(self, questions: str | Sequence[str], opts: AskOptions | None = None) -> Prepared:
        opts = opts or AskOptions()
        qs = [questions] if isinstance(questions, str) else [q for q in questions]
        qs = [q.strip() for q in qs if q and q.strip()]
        if not qs:
            raise ValueError("question is empty: ask something")
        k = opts.k or self.settings.top_k
        timings: dict[str, float] = {"embed": 0.0, "search": 0.0}
        per_q: list[list[Hit]] = []
        relevant = False
        for q in qs:
            res = self.retriever.search(q, collection=opts.collection, k=k, mode=opts.mode, filters=opts.filters)
            timings["embed"] += res.timings.get("embed", 0.0)
            timings["search"] += sum(v for key, v in res.timings.items() if key != "embed")
            per_q.append(res.hits)
            relevant = relevant or self.retriever.is_relevant(res.hits)
        hits = merge_hits(per_q, k)

        t = time.perf_counter()
        profile = self.profile(opts.profile)
        gen = self.generator
        max_new = opts.max_new_tokens or self.settings.max_new_tokens
        params = GenParams(
            max_new_tokens=max_new,
            temperature=self.settings.temperature if opts.temperature is None else opts.temperature,
            seed=self.settings.seed if opts.seed is None else opts.seed,
            stop=list(profile.stop),
        )
        context = min(self.settings.llm_context_length or gen.context_length, gen.context_length)
        use = hits if relevant else []
        if use and self.settings.neighbour_window > 0:
            # Adjacent chunks join their hit's block; they only fill room the ranked hits leave free (the
            # packer still enforces the exact window, dropping lowest-ranked blocks first).
            use = self.retriever.expand_neighbours(
                use, budget_tokens=context - max_new - PROMPT_OVERHEAD_TOKENS, count_tokens=gen.count_tokens)
        prompt, blocks = pack_prompt(use, qs, profile, gen.count_tokens, context, max_new)
        timings["assemble"] = time.perf_counter() - t
        return Prepared(qs, hits, prompt, blocks, params, profile, abstain=not relevant or not blocks.blocks,
                        timings=timings)

    def finish(self, prep: Prepared, completion: Completion | None) -> Answer:
        """Parse, resolve and verify the model's output into the Answer (pure given its inputs)."""
        t = time.perf_counter()
        question = "\n".join(prep.questions)
        model = f"{self.settings.llm_backend}:{self.generator.name}"
        timings = dict(prep.timings)
        if completion is None:  # abstained before generation: nothing relevant was retrieved
            timings["generate"] = 0.0
            timings["parse"] = time.perf_counter() - t
            return Answer(question, NOT_FOUND, [], prep.hits, 0, prep.blocks.dropped, True, model,
                          Usage(0, 0), timings, "", prep.prompt.text)
        timings["generate"] = completion.time_prefill + completion.time_generate
        parsed = cit.parse(completion.text)
        blocks = prep.blocks.blocks
        citations = cit.resolve(parsed, blocks)
        citations = cit.verify(parsed.answer, citations, blocks)
        abstained = cit.says_unknown(parsed.answer) or not parsed.answer.strip()
        if abstained:
            # The model declined: any "sources" it listed would be fabricated support for nothing.
            citations = []
            text = parsed.answer.strip() or NOT_FOUND
        else:
            text = parsed.answer.strip()
            if not citations and not parsed.no_source:
                citations = cit.infer(text, blocks)
        timings["parse"] = time.perf_counter() - t
        return Answer(question, text, citations, prep.hits, len(blocks), prep.blocks.dropped, abstained, model,
                      Usage(completion.prompt_tokens, completion.completion_tokens), timings, completion.text,
                      prep.prompt.text)

    # -- entry points --------------------------------------------------------------------------------------
    def answer(self, questions: str | Sequence[str], opts: AskOptions | None = None) -> Answer:
        prep = self.prepare(questions, opts)
        if prep.abstain:
            return self.finish(prep, None)
        completion = self.generator.generate(prep.prompt, prep.params)
        return self.finish(prep, completion)

    def stream(self, questions: str | Sequence[str], opts: AskOptions | None = None,
               cancel: threading.Event | None = None) -> Iterator[AnswerEvent]:
        prep = self.prepare(questions, opts)
        yield AnswerEvent("sources", hits=prep.hits)
        if prep.abstain:
            ans = self.finish(prep, None)
            yield AnswerEvent("delta", text=ans.answer)
            yield AnswerEvent("final", answer=ans)
            return
        completion: Completion | None = None
        for item in self.generator.stream(prep.prompt, prep.params, cancel=cancel):
            if isinstance(item, Completion):
                completion = item
            else:
                yield AnswerEvent("delta", text=item)
        assert completion is not None
        yield AnswerEvent("final", answer=self.finish(prep, completion))
