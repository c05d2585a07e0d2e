"""Token counting for a model that runs on another server (the `openai` backend).

The prompt packer must count tokens exactly as the serving engine will feed them, or a prompt it thinks fits
overflows the server's context. In order of preference (`CTXQA_LLM_TOKENIZER`):

- a local copy of the served model's tokenizer: a `.gguf` file (llama.cpp, vocabulary only) or a Hugging Face
  `tokenizer.json`; no network round trip per count;
- the server's own tokenize endpoint, probed once: llama-cpp-python's `POST /extras/tokenize`, then `POST
  /tokenize` (llama.cpp's server and vLLM; one body carries both engines' field names);
- neither: an estimate from the server's `usage` (prompt tokens per character, learnt from a one-token
  completion of the first text counted and from every answer whose usage comes back), with a safety margin.

Every counter returns a sized container of the text's tokens ("BOS included", as the engine adds it): exact
counters return the ids, the estimate a `range` of the estimated length.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import httpx

from ctxqa.rag.generate.base import GeneratorError

log = logging.getLogger(__name__)

# The estimate counts this much over the largest tokens-per-character ratio seen: a prompt packed to the estimate
# must still fit when the real count comes out higher (markup and numbers tokenize denser than prose).
USAGE_MARGIN = 1.15
# Before anything was learnt (the calibration request failed), assume one token per this many characters:
# conservative for English BPE vocabularies (~4 characters per token).
FALLBACK_CHARS_PER_TOKEN = 2.5


class TokenCounter(Protocol):
    kind: str  # "file", "server" or "usage", for logs and `ctxqa models`

    def encode(self, text: str) -> Sequence[int]: ...


class FileTokenizer:
    """The served model's tokenizer from a local file: `.gguf` (llama.cpp vocabulary only) or `tokenizer.json`."""

    kind = "file"

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise GeneratorError(
                f"tokenizer file not found: {path}; set llm_tokenizer (CTXQA_LLM_TOKENIZER) to the served model's "
                f".gguf or tokenizer.json, or to 'auto' (the server's tokenize endpoint, else its usage)")
        self.path = path
        self._encode: Callable[[str], Sequence[int]]
        if path.suffix.lower() == ".gguf":
            try:
                import llama_cpp
            except ImportError as exc:
                raise GeneratorError(f"llm_tokenizer={path} is a GGUF file, which needs llama-cpp-python "
                                     f"(pip install 'ctxqa[gguf]'), or use its tokenizer.json ({exc})") from exc
            try:
                vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            except (ValueError, RuntimeError, OSError) as exc:
                raise GeneratorError(f"llama.cpp could not read the tokenizer of {path}: {exc}") from exc
            # Exactly how llama.cpp's servers tokenize a text prompt: BOS when the model asks for it, special
            # tokens parsed (the chat templates write them as text).
            self._encode = lambda text: vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        else:
            try:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(path))
            except Exception as exc:  # noqa: BLE001 - the library raises plain Exception on a bad file
                raise GeneratorError(f"could not read {path} as a Hugging Face tokenizer.json: {exc}; set "
                                     f"llm_tokenizer (CTXQA_LLM_TOKENIZER) to a .gguf or tokenizer.json") from exc
            self._encode = lambda text: tok.encode(text, add_special_tokens=True).ids

    def encode(self, text: str) -> Sequence[int]:
        return self._encode(text)


# (path, body) per engine, tried in order; the first that answers 200 with a token list is kept.
_PROBES: tuple[tuple[str, Callable[[str, str], dict[str, Any]]], ...] = (
    ("/extras/tokenize", lambda text, model: {"input": text, "model": model}),  # llama-cpp-python
    # llama.cpp's server reads content/add_special, vLLM prompt/add_special_tokens/model; each ignores the rest.
    ("/tokenize", lambda text, model: {"content": text, "add_special": True, "prompt": text,
                                       "add_special_tokens": True, "model": model}),
)


class ServerTokenizer:
    """The server's tokenize endpoint. `probe()` finds it (None: the server has none)."""

    kind = "server"

    def __init__(self, post: Callable[[str, dict[str, Any]], httpx.Response], model: str) -> None:
        self._post = post
        self.model = model
        self.path: str | None = None
        self._body: Callable[[str, str], dict[str, Any]] | None = None

    def probe(self) -> bool:
        for path, body in _PROBES:
            r = self._post(path, body("", self.model))
            if r.status_code == 200 and isinstance(_tokens(r), list):
                self.path, self._body = path, body
                log.info("openai backend: counting tokens with the server's %s", path)
                return True
        return False

    def encode(self, text: str) -> Sequence[int]:
        assert self.path is not None and self._body is not None, "probe() first"
        r = self._post(self.path, self._body(text, self.model))
        tokens = _tokens(r) if r.status_code == 200 else None
        if not isinstance(tokens, list):
            raise GeneratorError(f"the generation server's {self.path} answered HTTP {r.status_code} without a "
                                 f"token list: {r.text[:200]!r}")
        return tokens


def _tokens(r: httpx.Response) -> Any:
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("tokens") if isinstance(body, dict) else None


class UsageEstimate:
    """Tokens estimated from the characters, at the largest tokens-per-character ratio the server's `usage` has
    shown, plus `USAGE_MARGIN`. `calibrate(text)` asks the server for one exact count (a one-token completion)."""

    kind = "usage"

    def __init__(self, calibrate: Callable[[str], int | None]) -> None:
        self._calibrate = calibrate
        self._ratio: float | None = None
        self._lock = threading.Lock()

    def observe(self, chars: int, tokens: int) -> None:
        if chars <= 0 or tokens <= 0:
            return
        with self._lock:
            self._ratio = max(self._ratio or 0.0, tokens / chars)

    def encode(self, text: str) -> Sequence[int]:
        if self._ratio is None and len(text) >= 64:  # a short text says little about the ratio
            n = self._calibrate(text)
            if n is not None:
                self.observe(len(text), n)
        ratio = self._ratio or 1.0 / FALLBACK_CHARS_PER_TOKEN
        return range(math.ceil(len(text) * ratio * USAGE_MARGIN) + 1)


def cached(encode: Callable[[str], Sequence[int]], size: int = 256) -> Callable[[str], Sequence[int]]:
    """Remember recent exact counts (a round trip each): the packer counts the final prompt, `stream` again."""

    @lru_cache(maxsize=size)
    def run(text: str) -> tuple[int, ...]:
        return tuple(encode(text))

    return run
