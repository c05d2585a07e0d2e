"""The answer pipeline: retrieve → pack → render → generate → parse → resolve → verify → policy → Answer.

Two modes. `generate` asks the model in the context-obedient format; every sentence of its answer is then
checked against the blocks it was given (rag/verify), the model's citations are checked against the sentences,
and an answer the blocks do not support is flagged, replaced by the not-found answer, or replaced by a quote
answer (`Settings.unsupported`: flag | abstain | quote). `quote` needs no model at all: the answer is the
retrieved passages' own sentences that best answer each question, quoted verbatim with their citations.

`answer()` and `stream()` share `prepare()` and `finish()`, so a streamed request ends with exactly the Answer
the non-streaming call returns for the same greedy request. The CLI and the API both call this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

from ctxqa.rag import citations as cit
from ctxqa.rag.config import Settings
from ctxqa.rag.errors import InvalidInput
from ctxqa.rag.generate.base import Completion, Generator, GenParams
from ctxqa.rag.profiles import Profile, get_profile
from ctxqa.rag.prompt import pack_prompt
from ctxqa.rag.retrieve.retriever import Retriever
from ctxqa.rag.types import Answer, Blocks, Citation, Hit, Prompt, SentenceCheck, Usage, Verification
from ctxqa.rag.verify.embed_cache import CachedEmbed
from ctxqa.rag.verify.live import LiveSentences
from ctxqa.rag.verify.quote import Quote, select_quotes
from ctxqa.rag.verify.verifier import Passage, Verifier

NOT_FOUND = "I could not find this in the documents."
# Room kept for the template, instruction and BEGINCONTEXT lines when budgeting neighbour chunks.
PROMPT_OVERHEAD_TOKENS = 256
AnswerMode = Literal["generate", "quote"]


@dataclass
class AskOptions:
    collection: str | None = None
    k: int | None = None
    retrieval: str | None = None  # dense | lexical | hybrid (None: Settings.retrieval_mode)
    filters: Any = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    profile: str | None = None
    mode: AnswerMode | None = None  # None: quote when the backend is "quote", else generate


@dataclass
class Prepared:
    questions: list[str]
    hits: list[Hit]
    per_question: list[list[Hit]]
    relevant: list[bool]  # per question: did retrieval find anything relevant enough to answer from?
    mode: AnswerMode
    prompt: Prompt = field(default_factory=lambda: Prompt(()))  # user turn = data parts: no special tokens
    blocks: Blocks = field(default_factory=lambda: Blocks([], 0, 0))
    params: GenParams | None = None
    profile: Profile | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def abstain(self) -> bool:
        """Nothing to answer from: no relevant hit for any question, or no block fitted the prompt."""
        if not any(self.relevant):
            return True
        return self.mode == "generate" and not self.blocks.blocks


@dataclass
class AnswerEvent:
    """One event of a streamed answer: the sources first, then text deltas, each sentence checked as soon as it is
    complete (`sentence`, with `text`: the answer text since the previous sentence up to the end of this one),
    then the final Answer."""

    kind: Literal["sources", "delta", "sentence", "final"]
    hits: list[Hit] | None = None
    text: str | None = None
    sentence: SentenceCheck | None = None
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


def passages_of(blocks: Blocks) -> list[Passage]:
    """The chunks the model was given, as verification passages (each knows its block)."""
    out: list[Passage] = []
    for b in blocks.blocks:
        for h in b.hits:
            out.append(Passage.of_hit(h, len(out), b.ref))
    return out


def _quote_text(questions: list[str], quotes: list[list[Quote]], numbers: dict[int, int]) -> tuple[str, list[tuple[int, int, Quote]]]:
    """The quote answer's text ("sentence [1] sentence [2]", a heading per question when there are several)
    and where each quoted sentence sits in it."""
    parts: list[str] = []
    spans: list[tuple[int, int, Quote]] = []
    pos = 0
    for qi, (question, qs) in enumerate(zip(questions, quotes)):
        if len(questions) > 1:
            head = f"{question}\n"
            parts.append(head)
            pos += len(head)
        if not qs:
            parts.append(NOT_FOUND)
            pos += len(NOT_FOUND)
        for i, q in enumerate(qs):
            if i:
                parts.append(" ")
                pos += 1
            spans.append((pos, pos + len(q.text), q))
            marker = f" [{numbers[q.evidence.chunk_id or 0]}]"
            parts.append(q.text + marker)
            pos += len(q.text) + len(marker)
        if qi < len(questions) - 1:
            parts.append("\n\n")
            pos += 2
    return "".join(parts), spans


class Answerer:
    def __init__(self, settings: Settings, retriever: Retriever, generator: Callable[[], Generator],
                 verifier: Verifier | None = None) -> None:
        self.settings = settings
        self.retriever = retriever
        self._generator = generator
        # One cache of sentence vectors for the live check, the final check, the cited blocks and the quotes.
        self.embed_sentences = CachedEmbed(retriever.embedder.encode)
        if verifier is None:
            verifier = Verifier(self.embed_sentences if settings.verify_paraphrase else None)
        self.verifier = verifier

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

    def mode(self, opts: AskOptions) -> AnswerMode:
        if opts.mode is not None:
            if opts.mode not in ("generate", "quote"):
                raise InvalidInput(f"mode must be generate or quote; got {opts.mode!r}", field="mode")
            return opts.mode
        return "quote" if self.settings.llm_backend == "quote" else "generate"

    # -- stages --------------------------------------------------------------------------------------------
    def prepare(self, questions: str | Sequence[str], opts: AskOptions | None = None) -> Prepared:
        opts = opts or AskOptions()
        qs = [questions] if isinstance(questions, str) else [q for q in questions]
        qs = [q.strip() for q in qs if q and q.strip()]
        if not qs:
            raise InvalidInput("question is empty: ask something", field="question")
        mode = self.mode(opts)
        k = opts.k or self.settings.top_k
        timings: dict[str, float] = {"embed": 0.0, "search": 0.0}
        per_q: list[list[Hit]] = []
        relevant: list[bool] = []
        for q in qs:
            res = self.retriever.search(q, collection=opts.collection, k=k, mode=opts.retrieval, filters=opts.filters)
            timings["embed"] += res.timings.get("embed", 0.0)
            timings["search"] += sum(v for key, v in res.timings.items() if key != "embed")
            per_q.append(res.hits)
            relevant.append(self.retriever.is_relevant(res.hits))
        hits = merge_hits(per_q, k)
        prep = Prepared(qs, hits, per_q, relevant, mode, timings=timings)
        if mode == "quote" or not any(relevant):
            return prep  # no prompt: the model is never loaded for a quote answer or an abstention

        t = time.perf_counter()
        profile = self.profile(opts.profile)
        gen = self.generator
        max_new = opts.max_new_tokens or self.settings.max_new_tokens
        overrides = {k: v for k, v in (("temperature", opts.temperature), ("seed", opts.seed)) if v is not None}
        params = GenParams.from_settings(self.settings, max_new_tokens=max_new, stop=list(profile.stop), **overrides)
        context = min(self.settings.llm_context_length or gen.context_length, gen.context_length)
        use = hits
        if self.settings.neighbour_window > 0:
            # Adjacent chunks join their hit's block; they only fill room the ranked hits leave free (the
            # packer still enforces the exact window, dropping lowest-ranked blocks first).
            use = self.retriever.expand_neighbours(
                use, budget_tokens=context - max_new - PROMPT_OVERHEAD_TOKENS, count_tokens=gen.count_tokens)
        prep.prompt, prep.blocks = pack_prompt(use, qs, profile, gen.count_tokens, context, max_new)
        prep.params, prep.profile = params, profile
        timings["assemble"] = time.perf_counter() - t
        return prep

    def _model_name(self, prep: Prepared) -> str:
        if prep.mode == "quote":
            return "quote"
        return f"{self.settings.llm_backend}:{self.generator.name}"

    def abstained(self, prep: Prepared) -> Answer:
        """The not-found answer, before any generation: nothing relevant was retrieved."""
        timings = {**prep.timings, "generate": 0.0}
        return Answer(question="\n".join(prep.questions), answer=NOT_FOUND, citations=[], hits=prep.hits,
                      blocks_used=0, blocks_dropped=prep.blocks.dropped, abstained=True,
                      model=self._model_name(prep), timings=timings, grounding="abstained", mode=prep.mode)

    def quote(self, prep: Prepared) -> Answer:
        """A quote answer: the best sentences of each question's relevant hits, verbatim, each cited."""
        t = time.perf_counter()
        per_question = [select_quotes(q, hits, self.embed_sentences, limit=self.settings.quote_sentences)
                        if rel else [] for q, hits, rel in zip(prep.questions, prep.per_question, prep.relevant)]
        if not any(per_question):
            ans = self.abstained(prep)
            ans.timings["quote"] = time.perf_counter() - t
            return ans
        hit_of = {h.chunk_id: h for hits in prep.per_question for h in hits}
        numbers: dict[int, int] = {}
        citations: list[Citation] = []
        for qs in per_question:
            for q in qs:
                cid = q.evidence.chunk_id or 0
                if cid not in numbers:
                    numbers[cid] = len(numbers) + 1
                    h = hit_of[cid]
                    citations.append(Citation(status="verified", raw={}, chunk_ids=[cid], document_id=h.document_id,
                                              source=h.source, title=h.title, pages=h.pages,
                                              char_start=h.char_start, char_end=h.char_end, match="quote",
                                              support=1.0, supports_answer=True))
        text, spans = _quote_text(prep.questions, per_question, numbers)
        sentences = [SentenceCheck(q.text, a, b, "supported", 1.0, q.evidence, quote=True) for a, b, q in spans]
        timings = {**prep.timings, "generate": 0.0, "quote": time.perf_counter() - t}
        return Answer(question="\n".join(prep.questions), answer=text, citations=citations, hits=prep.hits,
                      blocks_used=0, blocks_dropped=0, abstained=False, model="quote", timings=timings,
                      grounding="supported", sentences=sentences, mode="quote")

    def best_evidence(self, prep: Prepared) -> list[SentenceCheck]:
        """The passages that answer the question best (quote mode's choice), shown beside an answer the
        documents do not support."""
        out: list[SentenceCheck] = []
        for q, hits, rel in zip(prep.questions, prep.per_question, prep.relevant):
            if rel:
                out.extend(SentenceCheck(x.text, 0, 0, "supported", x.relevance, x.evidence, quote=True)
                           for x in select_quotes(q, hits, self.embed_sentences,
                                                  limit=self.settings.quote_sentences))
        return out

    def finish(self, prep: Prepared, completion: Completion | None, live: LiveSentences | None = None) -> Answer:
        """Parse, resolve and verify the model's output, then apply the unsupported-answer policy."""
        if completion is None:
            return self.abstained(prep)
        t = time.perf_counter()
        question = "\n".join(prep.questions)
        timings = dict(prep.timings)
        timings["generate"] = completion.time_prefill + completion.time_generate
        parsed = cit.parse(completion.text)
        blocks = prep.blocks.blocks
        citations = cit.resolve(parsed, blocks)
        usage = Usage(completion.prompt_tokens, completion.completion_tokens)
        text = parsed.answer.strip()
        if cit.says_unknown(text) or not text:
            # The model declined: any "sources" it listed would be fabricated support for nothing.
            timings["parse"] = time.perf_counter() - t
            return Answer(question, text or NOT_FOUND, [], prep.hits, len(blocks), prep.blocks.dropped, True,
                          self._model_name(prep), usage, timings, completion.text, prep.prompt.text,
                          grounding="abstained", mode="generate")
        timings["parse"] = time.perf_counter() - t
        t = time.perf_counter()
        index = live.index if live is not None else self.verifier.index(passages_of(prep.blocks))
        cited = {c.block_ref for c in citations if c.status == "verified" and c.block_ref} or None
        check = self.verifier.verify(text, index, cited)
        sentences = live.reuse(check.sentences, cited) if live is not None else check.sentences
        check = Verification(check.grounding, sentences)
        citations = self._check_citations(citations, check, prep)
        if not citations and not parsed.no_source:
            citations = _inferred(check, prep)
        timings["verify"] = time.perf_counter() - t
        ans = Answer(question, text, citations, prep.hits, len(blocks), prep.blocks.dropped, False,
                     self._model_name(prep), usage, timings, completion.text, prep.prompt.text,
                     grounding=check.grounding, sentences=check.sentences, mode="generate")
        return self._apply_policy(ans, prep)

    def _check_citations(self, citations: list[Citation], check: Verification, prep: Prepared) -> list[Citation]:
        """Each cited block against the answer's sentences: its support is the best it gives any checked
        sentence; a block that supports none is marked (`supports_answer=False`), never silently trusted."""
        claims = [s.text for s in check.sentences if s.label != "neutral"]
        by_ref = {b.ref: b for b in prep.blocks.blocks}
        out = []
        for c in citations:
            block = by_ref.get(c.block_ref or "")
            if c.status == "unverified" or block is None:
                out.append(replace(c, support=0.0, supports_answer=None if c.status == "unverified" else False))
                continue
            idx = self.verifier.index([Passage.of_hit(h, i, block.ref) for i, h in enumerate(block.hits)])
            best = max((self.verifier.support_of(claim, idx) for claim in claims), default=0.0)
            out.append(replace(c, support=round(best, 4), supports_answer=best >= self.verifier.thresholds.supported))
        return out

    def _apply_policy(self, ans: Answer, prep: Prepared) -> Answer:
        if ans.grounding == "supported":
            return ans
        policy = self.settings.unsupported
        if policy == "quote" and ans.grounding == "unsupported":
            quoted = self.quote(prep)
            quoted.timings = {**ans.timings, "quote": quoted.timings.get("quote", 0.0)}
            quoted.model, quoted.usage, quoted.raw_output, quoted.prompt = ans.model, ans.usage, ans.raw_output, ans.prompt
            quoted.replaced = "unsupported"
            return quoted
        ans.evidence = self.best_evidence(prep)
        if policy == "abstain" and ans.grounding == "unsupported":
            ans.replaced, ans.answer, ans.abstained = "unsupported", NOT_FOUND, True
            ans.citations, ans.sentences, ans.grounding = [], [], "abstained"
        return ans

    # -- verifying any answer --------------------------------------------------------------------------------
    def verify(self, answer: str, *, passages: Sequence[str] | None = None, question: str | None = None,
               opts: AskOptions | None = None) -> tuple[Verification, list[Hit]]:
        """Check `answer` with the pipeline's own scorer: against the given `passages`, or against what `question`
        retrieves (in `opts.collection`). Returns the verification and the hits checked against (none for
        given passages)."""
        if not answer or not answer.strip():
            raise InvalidInput("the answer is empty: give the text to check", field="answer")
        if (passages is None) == (question is None):
            raise InvalidInput("give either passages to check against, or a question to retrieve them",
                               field="passages" if passages is not None else "question")
        if passages is not None:
            if not passages or not any(p.strip() for p in passages):
                raise InvalidInput("give at least one non-empty passage", field="passages")
            return self.verifier.verify(answer, [Passage(text, i) for i, text in enumerate(passages)]), []
        assert question is not None
        opts = opts or AskOptions()
        if not question.strip():
            raise InvalidInput("question is empty: ask something", field="question")
        res = self.retriever.search(question, collection=opts.collection, k=opts.k or self.settings.top_k,
                                    mode=opts.retrieval, filters=opts.filters)
        hits = res.hits if self.retriever.is_relevant(res.hits) else []
        return self.verifier.verify(answer, [Passage.of_hit(h, i) for i, h in enumerate(hits)]), res.hits

    # -- entry points --------------------------------------------------------------------------------------
    def answer(self, questions: str | Sequence[str], opts: AskOptions | None = None) -> Answer:
        prep = self.prepare(questions, opts)
        if prep.abstain:
            return self.abstained(prep)
        if prep.mode == "quote":
            return self.quote(prep)
        assert prep.params is not None
        completion = self.generator.generate(prep.prompt, prep.params)
        return self.finish(prep, completion)

    def stream(self, questions: str | Sequence[str], opts: AskOptions | None = None,
               cancel: threading.Event | None = None) -> Iterator[AnswerEvent]:
        prep = self.prepare(questions, opts)
        yield AnswerEvent("sources", hits=prep.hits)
        if prep.abstain or prep.mode == "quote":
            ans = self.abstained(prep) if prep.abstain else self.quote(prep)
            yield AnswerEvent("delta", text=ans.answer)
            yield from _sentence_events(ans, 0)
            yield AnswerEvent("final", answer=ans)
            return
        assert prep.params is not None
        live = LiveSentences(self.verifier, self.verifier.index(passages_of(prep.blocks)))
        completion: Completion | None = None
        for item in self.generator.stream(prep.prompt, prep.params, cancel=cancel):
            if isinstance(item, Completion):
                completion = item
            else:
                yield AnswerEvent("delta", text=item)
                for piece, s in live.feed(item):
                    yield AnswerEvent("sentence", text=piece, sentence=s)
        assert completion is not None
        ans = self.finish(prep, completion, live)
        if ans.replaced is None:  # the sentences the stream had not completed yet (the last one, at least)
            yield from _sentence_events(ans, live.checked[-1].end if live.checked else 0)
        yield AnswerEvent("final", answer=ans)


def _sentence_events(ans: Answer, done: int) -> Iterator[AnswerEvent]:
    """`sentence` events for the answer's sentences that end after `done`, each with its text since the
    previous one."""
    for s in ans.sentences:
        if s.end > done:
            yield AnswerEvent("sentence", text=ans.answer[done:s.end], sentence=s)
            done = s.end


def _inferred(check: Verification, prep: Prepared) -> list[Citation]:
    """The model cited nothing: ctxqa attributes the answer to the blocks that support its sentences
    (`inferred`), in prompt order, each with the best support it gives."""
    best: dict[str, float] = {}
    for s in check.sentences:
        if s.label == "supported" and s.evidence is not None and s.evidence.block_ref:
            best[s.evidence.block_ref] = max(best.get(s.evidence.block_ref, 0.0), s.score)
    out = []
    for b in prep.blocks.blocks:
        if b.ref in best:
            first = b.hits[0]
            out.append(Citation(status="inferred", raw={}, block_ref=b.ref, chunk_ids=b.chunk_ids,
                                document_id=b.document_id, source=first.source, title=first.title,
                                pages=sorted({p for h in b.hits for p in h.pages}),
                                char_start=min(h.char_start for h in b.hits), char_end=max(h.char_end for h in b.hits),
                                support=round(best[b.ref], 4), supports_answer=True))
    return out
