"""The backend-neutral generation contract.

Every backend takes an already-rendered prompt string plus explicit `GenParams` (the prompt template and its
stop strings live in `rag.profiles`, not here) and returns a `Completion`, either at once (`generate`) or as a
stream of text deltas that ends with the `Completion` (`stream`).

Shared rules, implemented once here so the backends cannot drift apart:
- the prompt is encoded exactly once, by the model's own tokenizer; `count_tokens` uses the same encoding, so
  what the prompt packer counts is what the model is fed (BOS included);
- a prompt is a `str` (all template: special-token spellings such as ``<|im_start|>`` become special tokens) or a
  `Prompt` whose data parts (retrieved text, the question) are always plain text (`special_tokens.token_runs`);
- prompt tokens + `max_new_tokens` must fit the context window, or `ContextOverflowError` is raised *before*
  any work is queued;
- stop strings are cut from the output, and the stream never emits a prefix of a stop string that could still
  turn into one (`StopFilter` holds it back);
- `generate` is literally "consume `stream`", so greedy `generate` and `stream` give the same text.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ctxqa.rag.types import Prompt

if TYPE_CHECKING:
    from ctxqa.rag.config import Settings

FinishReason = Literal["stop", "length", "cancelled"]


class GeneratorError(RuntimeError):
    """The backend cannot be configured or loaded; the message says what to do about it."""


class ContextOverflowError(ValueError):
    """Prompt tokens + max_new_tokens exceed the model's context window."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length
        super().__init__(
            f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{prompt_tokens + max_new_tokens} exceeds the context length ({context_length}); "
            f"shorten the prompt (fewer/smaller input blocks) or lower max_new_tokens"
        )


@dataclass
class GenParams:
    """Sampling parameters for one request. temperature 0 means greedy (deterministic) decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k truncation
    seed: int = 0
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        # Empty stop strings would match everywhere; drop them rather than stop at once.
        self.stop = [s for s in self.stop if s]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> GenParams:
        values: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "seed": settings.seed,
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class Completion:
    """The result of one request.

    `completion_tokens` counts every token the model sampled, including the EOS/stop token that ended the
    request (it occupied a decode step and a cache slot). `time_prefill` runs from the start of prompt
    processing to the first sampled token; `time_generate` from there to the end.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    time_prefill: float
    time_generate: float

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: the first token is attributed to prefill, the remaining ones to `time_generate`."""
        if self.completion_tokens <= 1 or self.time_generate <= 0:
            return 0.0
        return (self.completion_tokens - 1) / self.time_generate

    @property
    def prefill_tokens_per_second(self) -> float:
        if self.time_prefill <= 0:
            return 0.0
        return self.prompt_tokens / self.time_prefill


class StopFilter:
    """Cuts generated text at the first stop string and holds back anything that may still become one.

    `feed` returns the text that is safe to emit now. Once a stop string is complete, `stopped` is True and the
    stop string plus everything after it is discarded. `flush` releases held-back text when generation ends for
    another reason (length, EOS, cancellation): a partial stop string at the very end is real output.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return buf[:cut]
        # Longest suffix of buf that is a proper prefix of some stop string: it must wait for more text.
        hold = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self._held = buf[len(buf) - hold :]
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self._held = ("" if self.stopped else self._held), ""
        return out


class Generator(ABC):
    """A loaded model that turns a rendered prompt into a `Completion`.

    Subclasses implement `_encode` (the model's own tokenizer, BOS included, exactly as fed) and `_stream`
    (the decode loop, yielding text deltas and finally the `Completion`); this class adds the context check,
    `count_tokens` and `generate` on top so every backend behaves the same.
    """

    name: str
    context_length: int
    # How many requests this generator runs at once (the API starts that many queue workers). A backend that
    # batches concurrent requests sets it to its batch size; one that serialises them keeps 1.
    max_concurrency: int = 1

    @abstractmethod
    def _encode(self, prompt: Prompt) -> Any:
        """Token ids exactly as the model will be fed (any sized container: list, tensor); special tokens only
        from the prompt's template parts."""

    @abstractmethod
    def _stream(
        self, encoded: Any, n_prompt: int, params: GenParams, cancel: threading.Event | None
    ) -> Iterator[str | Completion]:
        """Decode loop; must yield non-empty text deltas, then exactly one Completion as the last item."""

    def count_tokens(self, text: str | Prompt) -> int:
        return _length(self._encode(Prompt.of(text)))

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.context_length:
            raise ContextOverflowError(prompt_tokens, max_new_tokens, self.context_length)

    def stream(
        self, prompt: str | Prompt, params: GenParams, cancel: threading.Event | None = None
    ) -> Iterator[str | Completion]:
        """Text deltas, then the `Completion` (whose text is the concatenation of the deltas).

        Not a generator function itself: the prompt is encoded and checked against the context window right
        here, so an overflow raises at call time rather than on the first `next()`.
        """
        encoded = self._encode(Prompt.of(prompt))
        n_prompt = _length(encoded)
        self.check_fits(n_prompt, params.max_new_tokens)
        return self._stream(encoded, n_prompt, params, cancel)

    def generate(self, prompt: str | Prompt, params: GenParams) -> Completion:
        # Built on `stream` on purpose: one decode path means streamed and non-streamed answers cannot differ.
        for item in self.stream(prompt, params):
            if isinstance(item, Completion):
                return item
        raise GeneratorError(f"{self.name}: the stream ended without a Completion (backend bug)")

    def close(self) -> None:  # noqa: B027 - optional hook; most backends free memory here
        """Release the model. The instance must not be used afterwards."""

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _length(encoded: Any) -> int:
    shape = getattr(encoded, "shape", None)  # torch tensors of shape (1, n)
    if shape is not None:
        return int(shape[-1])
    return len(encoded)
