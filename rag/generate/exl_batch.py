"""Batched generation for ExLlamaV2 without paged attention (no flash-attn), and the request plumbing both of
ExLlamaV2's modes share.

exllamav2's dynamic generator needs flash-attn >= 2.5.7 to run jobs concurrently; without it (no binary wheel
exists) it runs one job at a time, so 16 users each get 1/16 of the throughput. Decoding is memory-bound: one
forward pass over a batch of 16 rows reads the weights once, like a single row. `StaticBatcher` therefore runs
up to `rows` requests as one batch with a batch-sized cache (one row of `seq_len` slots per request):

- prompts are left-padded to the longest; an additive mask hides the padding, so a request's greedy output is
  the same alone or batched (up to the kernels' fp16 rounding). Per-row position offsets give every row the
  positions it has alone (RoPE scores depend on relative positions only, so this keeps positions inside the
  sin/cos table rather than changing results), as exllamav2's own batched generate_simple does. The mask
  is -65504, not -inf: a padded row whose whole prefill chunk is
  padding would otherwise softmax over nothing but -inf, turn its padded K/V into NaN, and 0 x NaN poisons the
  real tokens that later ignore them;
- all rows decode in lockstep; a finished row idles (pad tokens) until the batch ends;
- requests that arrive while a batch runs wait in order and form the next batch (`take`), as many as fit
  (longest prompt + most new tokens <= seq_len, at most `rows`); an idle batcher gathers a burst of arrivals
  for a few milliseconds before it starts.

`model` is an `ExLlamaV2` (or anything with its `forward(input_ids, cache, input_mask=, preprocess_only=,
position_offsets=)` contract) and `cache` an `ExLlamaV2Cache` with `batch_size >= rows` and `current_seq_len`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ctxqa.rag.generate.base import FinishReason, GenParams

log = logging.getLogger(__name__)

PAD_MASK = -65504.0  # the most negative fp16 number: masks a key without ever making a softmax row all -inf


@dataclass
class Finished:
    """How a request ended, in the `Completion` contract's terms (first token counted in `time_prefill`)."""

    reason: FinishReason
    new_tokens: int
    time_prefill: float
    time_generate: float


@dataclass
class GenRequest:
    """One submitted request. The generator thread puts ("text", str) items on `out`, then ("done", Finished)
    or ("error", Exception)."""

    ids: list[int]
    params: GenParams
    cancel: threading.Event | None
    out: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    abandoned: threading.Event = field(default_factory=threading.Event)
    token_ids: list[int] = field(default_factory=list)
    t_submit: float = field(default_factory=time.perf_counter)
    job: Any = None  # paged mode: the exllamav2 job

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)

    def cancelled(self) -> bool:
        return self.abandoned.is_set() or (self.cancel is not None and self.cancel.is_set())

    def finish(self, reason: FinishReason, t_prefill: float = 0.0, t_generate: float = 0.0) -> None:
        self.out.put(("done", Finished(reason, len(self.token_ids), t_prefill, t_generate)))


class PieceDecoder:
    """Incremental text of one row, as exllamav2's dynamic generator produces it: each token's piece, held back
    while it ends in an incomplete UTF-8 character (U+FFFD), then the held tokens decoded together."""

    def __init__(self, pieces: Sequence[str], decode: Callable[[list[int]], str]) -> None:
        self._pieces, self._decode = pieces, decode
        self._held_ids: list[int] = []
        self._held = ""

    def feed(self, token: int) -> str:
        self._held += self._pieces[token] if 0 <= token < len(self._pieces) else ""
        self._held_ids.append(token)
        if "\ufffd" in self._held:
            decoded = self._decode(self._held_ids)
            if "\ufffd" in decoded and len(self._held_ids) < 5:
                return ""
            self._held = decoded
        return self.flush()

    def flush(self) -> str:
        text, self._held, self._held_ids = self._held, "", []
        return text


def sample(logits: torch.Tensor, params: GenParams, generator: torch.Generator | None) -> int:
    """One token from a row of logits (float32, the tokenizer's vocabulary only)."""
    if params.greedy:
        return int(torch.argmax(logits))
    x = logits / params.temperature
    if params.top_k > 0 and params.top_k < x.numel():
        kth = torch.topk(x, params.top_k).values[-1]
        x = torch.where(x < kth, torch.full_like(x, float("-inf")), x)
    if params.top_p < 1.0:
        order = torch.argsort(x, descending=True)
        probs = torch.softmax(x[order], dim=-1)
        drop = torch.cumsum(probs, dim=-1) - probs > params.top_p  # keep the smallest prefix reaching top_p
        x = x.clone()
        x[order[drop]] = float("-inf")
    return int(torch.multinomial(torch.softmax(x, dim=-1), 1, generator=generator))


class StaticBatcher:
    def __init__(
        self,
        model: Any,
        cache: Any,
        *,
        pieces: Sequence[str],
        decode: Callable[[list[int]], str],
        eos_ids: set[int],
        pad_id: int,
        rows: int,
        seq_len: int,
    ) -> None:
        if getattr(cache, "batch_size", rows) < rows:
            raise ValueError(f"cache has {cache.batch_size} rows, fewer than the batch size {rows}")
        self.model, self.cache = model, cache
        self.pieces, self.decode = pieces, decode
        self.eos_ids, self.pad_id = eos_ids, pad_id
        self.rows, self.seq_len = rows, seq_len
        self.closing = threading.Event()
        # Requests that arrive together (a burst of users, one client's parallel calls) reach the queue a few
        # milliseconds apart, one tokenization after another: an idle batcher waits for the next one while they
        # keep coming (gaps under gather_gap_s, at most gather_max_s in all) so the burst forms one batch.
        self.gather_gap_s, self.gather_max_s = 0.003, 0.025
        self.peak_batch = 0  # the most requests generated together so far (tests and benchmarks read it)
        self.batches = 0

    # --- scheduling -----------------------------------------------------------------------------------------

    def serve(self, inbox: queue.Queue[GenRequest | None]) -> None:
        """The generator thread: batches from `inbox` until the None sentinel."""
        waiting: deque[GenRequest] = deque()
        while True:
            items: list[GenRequest | None] = []
            if not waiting:  # idle: sleep until a request arrives, then gather the burst it belongs to
                items.append(inbox.get())
                deadline = time.perf_counter() + self.gather_max_s
                while items[-1] is not None and len(items) < self.rows:
                    left = min(self.gather_gap_s, deadline - time.perf_counter())
                    if left <= 0:
                        break
                    try:
                        items.append(inbox.get(timeout=left))
                    except queue.Empty:
                        break
            while True:
                try:
                    items.append(inbox.get_nowait())
                except queue.Empty:
                    break
            if any(r is None for r in items):  # close(): answer everyone, then stop
                for req in [*waiting, *(r for r in items if r is not None)]:
                    req.finish("cancelled")
                return
            waiting.extend(r for r in items if r is not None)
            for req in [r for r in waiting if r.cancelled()]:
                waiting.remove(req)
                req.finish("cancelled")
            if not waiting:
                continue
            batch = self.take(waiting)
            try:
                self.run(batch)
            except Exception as exc:  # a CUDA error fails this batch; the next one starts from a clean cache
                log.exception("ExLlamaV2 batched generation failed")
                for req in batch:
                    req.out.put(("error", exc))

    def take(self, waiting: deque[GenRequest]) -> list[GenRequest]:
        """The next batch: waiting requests in arrival order, while they fit one cache row each."""
        batch: list[GenRequest] = []
        longest = most_new = 0
        while waiting and len(batch) < self.rows:
            req = waiting[0]
            n, m = max(longest, len(req.ids)), max(most_new, req.params.max_new_tokens)
            if batch and n + m > self.seq_len:
                break  # it waits for the next batch (order is kept: nobody overtakes it)
            batch.append(waiting.popleft())
            longest, most_new = n, m
        return batch

    # --- one batch ------------------------------------------------------------------------------------------

    def inputs(self, batch: Sequence[GenRequest]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Left-padded ids [B, P], the additive padding mask [B, P] (fp16) and position offsets [B] (int32),
        or None for both when no row is padded."""
        width = max(len(r.ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        pads = [width - len(r.ids) for r in batch]
        for i, req in enumerate(batch):
            ids[i, pads[i]:] = torch.tensor(req.ids, dtype=torch.long)
        if not any(pads):
            return ids, None, None
        mask = torch.zeros((len(batch), width), dtype=torch.float16)
        for i, pad in enumerate(pads):
            mask[i, :pad] = PAD_MASK
        return ids, mask, torch.tensor([-p for p in pads], dtype=torch.int32)

    def run(self, batch: list[GenRequest]) -> None:
        self.batches += 1
        self.peak_batch = max(self.peak_batch, len(batch))
        ids, mask, offsets = self.inputs(batch)
        t0 = time.perf_counter()
        self.cache.current_seq_len = 0
        if ids.shape[-1] > 1:
            self.model.forward(ids[:, :-1], self.cache, input_mask=mask, preprocess_only=True, position_offsets=offsets)
        last = ids[:, -1:].clone()
        vocab = len(self.pieces)
        rngs = [None if r.params.greedy else torch.Generator().manual_seed(r.params.seed) for r in batch]
        decoders = [PieceDecoder(self.pieces, self.decode) for _ in batch]
        t_first: list[float | None] = [None] * len(batch)
        active = [True] * len(batch)

        def end(i: int, reason: FinishReason, now: float) -> None:
            active[i] = False
            tail = decoders[i].flush()
            if tail and reason != "cancelled":
                batch[i].out.put(("text", tail))
            started = t_first[i]
            first = started if started is not None else now
            batch[i].finish(reason, first - t0, now - first)

        while any(active):
            logits = self.model.forward(last, self.cache, input_mask=mask, position_offsets=offsets)
            rows = logits[:, -1, :vocab].float().cpu()
            now = time.perf_counter()
            for i, req in enumerate(batch):
                if not active[i]:
                    continue
                if req.cancelled() or self.closing.is_set():
                    end(i, "cancelled", now)
                    continue
                token = sample(rows[i], req.params, rngs[i])
                req.token_ids.append(token)
                if t_first[i] is None:
                    t_first[i] = now
                if token in self.eos_ids:
                    end(i, "stop", now)
                    continue
                text = decoders[i].feed(token)
                if text:
                    req.out.put(("text", text))
                if len(req.token_ids) >= req.params.max_new_tokens:
                    end(i, "length", now)
                else:
                    last[i, 0] = token
            for i in range(len(batch)):
                if not active[i]:
                    last[i, 0] = self.pad_id  # idle rows still take a slot; their output is ignored
