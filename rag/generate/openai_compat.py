"""Remote generation: an OpenAI-compatible `/v1/completions` server (llama.cpp's server, llama-cpp-python's,
vLLM, TabbyAPI...), selected with `CTXQA_LLM_BACKEND=openai`.

Design notes
- ctxqa renders the context-obedient prompt itself (`rag.profiles`) and sends the finished text to the plain
  completions endpoint, not chat/completions: a server-side chat template would wrap it a second time.
  `CTXQA_LLM_MODEL` is the served model's name: it goes into each request and picks the prompt profile.
- Every request streams (Server-Sent Events); `generate` consumes the stream as for every backend, so streamed
  and non-streamed answers are the same text.
- Stop strings go to the server (so it stops early) and through `StopFilter` here too: the stream never shows a
  prefix of a stop string, and servers that cap the number of stop strings still stop where ctxqa would.
- Cancellation closes the response, which closes the connection: the engines stop generating for a client that
  went away (llama-cpp-python's server checks after every token).
- Nothing is contacted at construction. A replica starts while the server is down; each request that cannot
  reach it fails with a `GeneratorError` naming the setting to check (the API answers 503 with Retry-After),
  and the next request after the server is back works, without a restart.
- Token counts come from `rag.generate.remote_tokens` (a local tokenizer file, the server's tokenize endpoint,
  or an estimate from `usage`); the context length from the settings (`CTXQA_LLM_CONTEXT_LENGTH`, else the
  prompt profile's).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ctxqa.rag.generate.base import Completion, FinishReason, Generator, GeneratorError, GenParams, StopFilter
from ctxqa.rag.generate.remote_tokens import FileTokenizer, ServerTokenizer, TokenCounter, UsageEstimate, cached
from ctxqa.rag.types import Prompt

if TYPE_CHECKING:
    from ctxqa.rag.config import Settings

log = logging.getLogger(__name__)

# OpenAI's API takes at most 4 stop strings; the rest are applied here (StopFilter), so nothing is lost.
MAX_SERVER_STOPS = 4
_COUNTER_MODES = ("auto", "server", "usage")
_DONE: dict[str, Any] = {}  # what `_events` yields for `data: [DONE]` (compared by identity)


def normalise_base_url(url: str) -> str:
    """The OpenAI base URL, ending in /v1 (added when missing): `http://host:8080` → `http://host:8080/v1`."""
    url = (url or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise GeneratorError(f"llm_base_url (CTXQA_LLM_BASE_URL) must be an http:// or https:// URL, e.g. "
                             f"http://127.0.0.1:8080/v1; got {url!r}")
    return url if url.endswith("/v1") else url + "/v1"


@dataclass(frozen=True)
class RemotePrompt:
    """What `_encode` hands `_stream`: the prompt text (sent as text) and its token count (its len)."""

    text: str
    n_tokens: int

    def __len__(self) -> int:
        return self.n_tokens


class OpenAICompatGenerator(Generator):
    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        context_length: int,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        timeout: float = 120.0,
        tokenizer: str = "auto",
        concurrency: int = 4,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.root = self.base_url.removesuffix("/v1")  # the engines' tokenize endpoints live beside /v1
        if not model:
            raise GeneratorError("llm_model (CTXQA_LLM_MODEL) must name the model the server serves")
        if context_length < 1:
            raise GeneratorError(f"llm_context_length (CTXQA_LLM_CONTEXT_LENGTH) must be positive, got {context_length}")
        self.model = model
        self.name = model
        self.context_length = int(context_length)
        self.max_concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.extra_body = dict(extra_body or {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # `timeout` bounds each wait for bytes (connect has its own): the first token of a long prompt only has
        # to arrive within it, not the whole answer.
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(self.timeout, connect=float(connect_timeout)),
            limits=httpx.Limits(max_connections=self.max_concurrency + 2,
                                max_keepalive_connections=self.max_concurrency + 2))
        self._tokenizer_spec = tokenizer or "auto"
        self._counter: TokenCounter | None = None
        self._count: Callable[[str], Sequence[int]] | None = None
        self._usage: UsageEstimate | None = None
        self._counter_lock = threading.Lock()
        if self._tokenizer_spec not in _COUNTER_MODES:  # a local file: load it now, so a bad path fails at start
            self._set_counter(FileTokenizer(Path(self._tokenizer_spec).expanduser()))

    @classmethod
    def from_settings(cls, settings: Settings, context_length: int | None = None) -> OpenAICompatGenerator:
        if not settings.llm_base_url:
            raise GeneratorError("llm_backend=openai needs llm_base_url (CTXQA_LLM_BASE_URL): the OpenAI-compatible "
                                 "server's base URL, e.g. CTXQA_LLM_BASE_URL=http://127.0.0.1:8080/v1")
        model = settings.llm_model
        if model.startswith("bundled:"):
            raise GeneratorError(
                f"llm_backend=openai sends llm_model (CTXQA_LLM_MODEL) as the model name of each request and picks "
                f"the prompt template from it, but it is still the default {model!r}: set it to the name the server "
                f"serves (GET {normalise_base_url(settings.llm_base_url)}/models lists them)")
        n_ctx = settings.llm_context_length or context_length
        if not n_ctx:
            from ctxqa.rag.profiles import get_profile, profile_for_model

            profile = get_profile(settings.llm_profile or profile_for_model(model))
            n_ctx = profile.context_length
            log.info("openai backend: context length %d from profile %s (set CTXQA_LLM_CONTEXT_LENGTH to the "
                     "server's)", n_ctx, profile.name)
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else None
        return cls(settings.llm_base_url, model=model, context_length=n_ctx, api_key=key,
                   connect_timeout=settings.llm_connect_timeout, timeout=settings.llm_timeout,
                   tokenizer=settings.llm_tokenizer, concurrency=settings.llm_concurrency,
                   extra_body=settings.llm_request_extra)

    # --- token counting ---------------------------------------------------------------------------------------

    @property
    def counter_kind(self) -> str | None:
        """How tokens are counted ("file", "server", "usage"); None until the first count chose."""
        return self._counter.kind if self._counter is not None else None

    def _set_counter(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._count = cached(counter.encode) if counter.kind == "server" else counter.encode
        self._usage = counter if isinstance(counter, UsageEstimate) else None

    def _counter_fn(self) -> Callable[[str], Sequence[int]]:
        with self._counter_lock:
            if self._count is None:
                # Chosen at first use, not at start-up: probing needs the server. A probe that cannot reach it
                # raises (the request fails) and the next request probes again.
                self._set_counter(self._choose_counter())
            assert self._count is not None
            return self._count

    def _choose_counter(self) -> TokenCounter:
        if self._tokenizer_spec in ("auto", "server"):
            server = ServerTokenizer(self._post_root, self.model)
            if server.probe():
                return server
            if self._tokenizer_spec == "server":
                raise GeneratorError(
                    f"the generation server at {self.root} has no tokenize endpoint (/extras/tokenize, /tokenize); "
                    f"set llm_tokenizer (CTXQA_LLM_TOKENIZER) to the model's .gguf or tokenizer.json, or to 'usage'")
            log.warning("openai backend: %s has no tokenize endpoint; estimating prompt tokens from its usage "
                        "(set CTXQA_LLM_TOKENIZER to the model's tokenizer file to count exactly)", self.root)
        return UsageEstimate(self._prompt_tokens_by_usage)

    def _encode(self, prompt: Prompt) -> RemotePrompt:
        # The server tokenizes the text itself: which spellings it reads as special tokens is its own business
        # (the prompt packer has already neutralised the context-obedient markers inside retrieved text).
        text = prompt.text
        return RemotePrompt(text, len(self._counter_fn()(text)))

    def _prompt_tokens_by_usage(self, text: str) -> int | None:
        """The server's own count of `text`, from the usage of a one-token completion (None: it sends none)."""
        url = f"{self.base_url}/completions"
        body = {**self.extra_body, "model": self.model, "prompt": text, "max_tokens": 1, "temperature": 0.0}
        with self._errors(url):
            r = self._http.post(url, json=body)
        if r.status_code != 200:
            raise self._status_error(r, url)
        usage = _json_or_none(r.text)
        usage = usage.get("usage") if isinstance(usage, dict) else None
        n = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return n if isinstance(n, int) and n > 0 else None

    # --- HTTP -------------------------------------------------------------------------------------------------

    def _post_root(self, path: str, body: dict[str, Any]) -> httpx.Response:
        url = f"{self.root}{path}"
        with self._errors(url):
            return self._http.post(url, json=body)

    @contextlib.contextmanager
    def _errors(self, url: str) -> Iterator[None]:
        """httpx's transport errors as GeneratorErrors that say what to check."""
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise GeneratorError(
                f"cannot reach the generation server at {url} ({exc or type(exc).__name__}): is it running, and is "
                f"llm_base_url (CTXQA_LLM_BASE_URL={self.base_url}) right?") from exc
        except httpx.TimeoutException as exc:
            raise GeneratorError(
                f"the generation server at {url} sent nothing for {self.timeout:g} s (llm_timeout, "
                f"CTXQA_LLM_TIMEOUT): it is hung or overloaded; raise the timeout if long prompts need longer") from exc
        except httpx.HTTPError as exc:
            raise GeneratorError(f"the connection to the generation server at {url} failed: "
                                 f"{type(exc).__name__}: {exc}") from exc

    def _status_error(self, r: httpx.Response, url: str) -> GeneratorError:
        body = _json_or_none(r.text)
        err = body.get("error", body.get("detail")) if isinstance(body, dict) else None
        message = err.get("message", err) if isinstance(err, dict) else err
        message = str(message if message is not None else r.text)[:300]
        hint = ""
        if r.status_code in (401, 403):
            hint = "; set llm_api_key (CTXQA_LLM_API_KEY) to a key the server accepts"
        elif r.status_code == 404:
            hint = (f"; llm_base_url (CTXQA_LLM_BASE_URL) must be the server's OpenAI base URL (…/v1) and "
                    f"llm_model (CTXQA_LLM_MODEL={self.model}) a model it serves")
        return GeneratorError(f"the generation server answered HTTP {r.status_code} for {url}: {message}{hint}")

    def _garbage(self, url: str, what: str) -> GeneratorError:
        return GeneratorError(f"the generation server at {url} did not answer like an OpenAI completions server "
                              f"(got {what[:200]!r}); is llm_base_url (CTXQA_LLM_BASE_URL={self.base_url}) right?")

    # --- generation -------------------------------------------------------------------------------------------

    def _request(self, prompt: str, params: GenParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            **self.extra_body,
            "model": self.model,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "stream": True,
            "stream_options": {"include_usage": True},  # engines that support it report exact usage at the end
        }
        if params.stop:
            body["stop"] = params.stop[:MAX_SERVER_STOPS]
        if params.top_k:
            body["top_k"] = params.top_k  # not OpenAI's, but llama.cpp's and vLLM's; only sent when asked for
        return body

    def _stream(
        self, encoded: RemotePrompt, n_prompt: int, params: GenParams, cancel: threading.Event | None
    ) -> Iterator[str | Completion]:
        if cancel is not None and cancel.is_set():
            yield Completion("", n_prompt, 0, "cancelled", 0.0, 0.0)
            return
        url = f"{self.base_url}/completions"
        stopper = StopFilter(params.stop)
        parts: list[str] = []
        # Without `usage`: stream events that carry text (one per sampled token on llama.cpp's servers and vLLM),
        # plus the token that ended the answer when the server stopped it (EOS or a stop string).
        chunks = 0
        finish: FinishReason | None = None
        usage: dict[str, Any] = {}
        t0 = time.perf_counter()
        t_first: float | None = None
        ended = False  # the server said [DONE]
        with self._errors(url), self._http.stream("POST", url, json=self._request(encoded.text, params)) as r:
            if r.status_code != 200:
                r.read()
                raise self._status_error(r, url)
            if "text/event-stream" in r.headers.get("content-type", ""):
                events: Iterable[dict[str, Any]] = self._events(r, url)
            else:  # a server that ignores `stream`: one whole completion object
                events = [self._whole(r, url)]
            for obj in events:
                if obj is _DONE:
                    ended = True
                    break
                if isinstance(obj.get("usage"), dict):
                    usage = obj["usage"]
                choice = _first_choice(obj, lambda what: self._garbage(url, what))
                if choice is None:
                    continue
                t_first = t_first or time.perf_counter()
                text = _text(choice, lambda what: self._garbage(url, what))
                chunks += 1 if text else 0
                delta = stopper.feed(text)
                if delta:
                    parts.append(delta)
                    yield delta
                if stopper.stopped:
                    finish = "stop"
                    break  # closing the response stops the server too
                if choice.get("finish_reason"):
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
                    chunks += 1 if finish == "stop" else 0
                elif cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
        if finish is None and not ended:
            raise GeneratorError(f"the generation server at {url} ended the stream before the completion finished "
                                 f"(no finish_reason, no [DONE]); see its log")
        if not stopper.stopped:
            tail = stopper.flush()
            if tail:
                parts.append(tail)
                yield tail
        t_end = time.perf_counter()
        t_first = t_first or t_end
        prompt_tokens = usage.get("prompt_tokens")
        if isinstance(prompt_tokens, int) and prompt_tokens > 0:
            if self._usage is not None:
                self._usage.observe(len(encoded.text), prompt_tokens)
        else:
            prompt_tokens = n_prompt
        completion_tokens = usage.get("completion_tokens")
        yield Completion(
            text="".join(parts),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens if isinstance(completion_tokens, int) else chunks,
            finish_reason=finish or "stop",
            time_prefill=t_first - t0,
            time_generate=t_end - t_first,
        )

    def _events(self, r: httpx.Response, url: str) -> Iterator[dict[str, Any]]:
        """The JSON objects of an OpenAI completions stream, up to `data: [DONE]`."""
        for data in sse_data(r.iter_lines()):
            if data.strip() == "[DONE]":
                yield _DONE
                return
            obj = _json_or_none(data)
            if not isinstance(obj, dict):
                raise self._garbage(url, data)
            if obj.get("error"):
                err = obj["error"]
                raise GeneratorError(f"the generation server reported an error mid-stream: "
                                     f"{(err.get('message', err) if isinstance(err, dict) else err)!s:.300}")
            yield obj

    def _whole(self, r: httpx.Response, url: str) -> dict[str, Any]:
        raw = r.read().decode("utf-8", errors="replace")
        obj = _json_or_none(raw)
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list) or not obj["choices"]:
            raise self._garbage(url, raw)
        choice = obj["choices"][0]
        if isinstance(choice, dict) and not choice.get("finish_reason"):
            choice["finish_reason"] = "stop"
        return obj

    def close(self) -> None:
        self._http.close()


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each Server-Sent Event (several data lines joined by newlines); comments and other fields
    (event:, id:, retry:) skipped."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _first_choice(obj: dict[str, Any], garbage: Callable[[str], GeneratorError]) -> dict[str, Any] | None:
    choices = obj.get("choices")
    if choices is None or choices == []:
        return None  # e.g. the final usage-only event
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise garbage(json.dumps(obj))
    return choices[0]


def _text(choice: dict[str, Any], garbage: Callable[[str], GeneratorError]) -> str:
    text = choice.get("text")
    if text is None:
        return ""
    if not isinstance(text, str):
        raise garbage(json.dumps(choice))
    return text


def status_row(settings: Settings) -> dict[str, Any]:
    """The `ctxqa models` row of this backend: when selected, asks the server which models it serves."""
    import importlib.metadata

    reasons: list[str] = []
    reachable, detail = False, "remote server"
    url = settings.llm_base_url
    if not url:
        reasons.append("set llm_base_url (CTXQA_LLM_BASE_URL) to an OpenAI-compatible server's base URL")
    elif settings.llm_backend == "openai":
        try:
            base = normalise_base_url(url)
            key = settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else None
            r = httpx.get(f"{base}/models", timeout=settings.llm_connect_timeout,
                          headers={"Authorization": f"Bearer {key}"} if key else {})
            body = _json_or_none(r.text)
            ids = [m.get("id") for m in body.get("data", [])] if isinstance(body, dict) else []
            reachable = r.status_code == 200
            detail = f"serves: {', '.join(str(i) for i in ids) or '?'}" if reachable else f"HTTP {r.status_code}"
            if not reachable:
                reasons.append(f"GET {base}/models answered HTTP {r.status_code}")
        except (GeneratorError, httpx.HTTPError) as exc:
            reasons.append(f"cannot reach {url}: {exc}")
    if settings.llm_backend == "openai" and settings.llm_model.startswith("bundled:"):
        reasons.append("set llm_model (CTXQA_LLM_MODEL) to the served model's name")
    return {
        "backend": "openai", "selected": settings.llm_backend == "openai", "importable": True,
        "version": importlib.metadata.version("httpx"), "gpu": False, "gpu_detail": detail,
        "model": settings.llm_model, "model_path": url, "model_exists": reachable,
        "ready": not reasons, "reason": "; ".join(reasons) if reasons else "ok",
    }
