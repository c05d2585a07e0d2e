"""The `openai` backend against a real OpenAI-compatible server: llama-cpp-python's own `llama_cpp.server`
serving the bundled SmolLM2 GGUF on 127.0.0.1 (scripts/llama_server.py), compared with the in-process llama.cpp
backend on the same file.

Failure cases use real conditions: a port nobody listens on (down), the real server stopped with SIGSTOP (hung:
it accepts connections and answers nothing), and `BrokenServer`, an HTTP server that answers with canned
garbage (the one stand-in here: no real engine misbehaves on demand).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from ctxqa.rag.config import Settings
from ctxqa.rag.generate import Completion, GeneratorError, GenParams, backend_status, load_generator
from ctxqa.rag.generate.openai_compat import OpenAICompatGenerator, normalise_base_url, sse_data
from ctxqa.rag.generate.remote_tokens import USAGE_MARGIN
from ctxqa.rag.profiles import get_profile, render
from tests.rag.generate.llama_server import (
    MODEL_ALIAS,
    SAME_AS_IN_PROCESS,
    BrokenServer,
    Canned,
    LlamaServer,
    free_port,
    gguf_path,
    server_missing,
    start_llama_server,
    wait_for,
)

KEY = "test-secret-key"
CHATML = get_profile("chatml")
STOP = list(CHATML.stop)

CONTEXT_PROMPT = render(CHATML, """BEGININPUT
BEGINCONTEXT
source: backups.md
ENDCONTEXT
Nightly backups of the production database are kept for 35 days in the eu-west bucket.
ENDINPUT
BEGININPUT
BEGINCONTEXT
source: oncall.md
ENDCONTEXT
The on-call engineer answers pages within 15 minutes, day and night.
ENDINPUT
BEGININSTRUCTION
How long are backups kept? Source?
Don't make up answers if you don't know.
ENDINSTRUCTION""")
PLAIN_PROMPTS = [
    render(CHATML, "What is the capital of France? Answer in one sentence."),
    render(CHATML, "List three colours of the rainbow."),
]
STORY = render(CHATML, "Write a long story about a dragon who learns to cook. Use many sentences.")

pytestmark = pytest.mark.skipif(server_missing() is not None, reason=str(server_missing()))


@pytest.fixture(autouse=True)
def _no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXQA_CONFIG", str(tmp_path / "absent.toml"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    srv = start_llama_server(tmp_path_factory.mktemp("llama-server"), api_key=KEY)
    yield srv
    srv.stop()


def remote(server: LlamaServer, **kw) -> OpenAICompatGenerator:  # type: ignore[no-untyped-def]
    kw.setdefault("api_key", KEY)
    kw.setdefault("extra_body", SAME_AS_IN_PROCESS)
    return OpenAICompatGenerator(server.base_url, model=MODEL_ALIAS, context_length=2048, **kw)


@pytest.fixture(scope="module")
def gen(server: LlamaServer) -> Iterator[OpenAICompatGenerator]:
    g = remote(server)
    yield g
    g.close()


@pytest.fixture(scope="module")
def local() -> Iterator:
    from ctxqa.rag.generate.llama_cpp import LlamaCppGenerator

    g = LlamaCppGenerator(gguf_path(), context_length=2048)
    yield g
    g.close()


def streamed(g, prompt: str, params: GenParams, cancel: threading.Event | None = None
             ) -> tuple[list[str], Completion]:  # type: ignore[no-untyped-def]
    items = list(g.stream(prompt, params, cancel=cancel))
    assert isinstance(items[-1], Completion) and all(isinstance(x, str) and x for x in items[:-1])
    return items[:-1], items[-1]


# --- the real server ------------------------------------------------------------------------------------------


def test_streamed_equals_generated_and_in_process(gen: OpenAICompatGenerator, local) -> None:  # type: ignore[no-untyped-def]
    params = GenParams(max_new_tokens=48, stop=STOP)
    for prompt in [CONTEXT_PROMPT, *PLAIN_PROMPTS]:
        whole = gen.generate(prompt, params)
        deltas, final = streamed(gen, prompt, params)
        assert whole.text.strip(), prompt
        assert "".join(deltas) == final.text == whole.text
        assert final.finish_reason == whole.finish_reason
        # Same GGUF, same rendered prompt, greedy, no repeat penalty: the text the in-process backend writes.
        here = local.generate(prompt, params)
        assert whole.text == here.text
        assert whole.prompt_tokens == local.count_tokens(prompt)
        # No usage in llama-cpp-python's stream: counted from the events, EOS included, as in-process counts.
        assert whole.completion_tokens == here.completion_tokens


def test_token_counts_match_the_model_tokenizer(server: LlamaServer, gen: OpenAICompatGenerator, local) -> None:  # type: ignore[no-untyped-def]
    texts = [CONTEXT_PROMPT, "naïve café — ünïcode 東京", "", STORY]
    assert [gen.count_tokens(t) for t in texts] == [local.count_tokens(t) for t in texts]
    assert gen.counter_kind == "server"  # llama-cpp-python's /extras/tokenize
    with remote(server, tokenizer=str(gguf_path())) as from_file:
        assert from_file.counter_kind == "file"
        assert [from_file.count_tokens(t) for t in texts] == [local.count_tokens(t) for t in texts]
    # Without a tokenizer: learnt from the server's usage, never below the real count (the packer must not overflow).
    with remote(server, tokenizer="usage") as estimated:
        for t in [CONTEXT_PROMPT, STORY, CONTEXT_PROMPT * 3]:
            exact, guess = local.count_tokens(t), estimated.count_tokens(t)
            assert exact <= guess <= exact * USAGE_MARGIN * 1.5 + 2, (exact, guess)
        assert estimated.counter_kind == "usage"


def test_stop_strings_and_max_tokens(gen: OpenAICompatGenerator) -> None:
    free = gen.generate(PLAIN_PROMPTS[0], GenParams(max_new_tokens=48, stop=STOP))
    words = free.text.split()
    assert len(words) >= 4, free.text
    stop = " " + words[2]  # a stop string the model will write: everything from it on is cut
    cut = free.text[: free.text.index(stop)]
    deltas, final = streamed(gen, PLAIN_PROMPTS[0], GenParams(max_new_tokens=48, stop=[*STOP, stop]))
    assert final.text == "".join(deltas) == cut
    assert final.finish_reason == "stop"
    assert not any(stop in d for d in deltas)

    deltas, final = streamed(gen, STORY, GenParams(max_new_tokens=5))
    assert final.finish_reason == "length"
    assert final.completion_tokens == 5
    assert len(deltas) <= 5


def test_cancel_closes_the_stream_and_the_server_stops(server: LlamaServer, gen: OpenAICompatGenerator) -> None:
    cancel = threading.Event()
    before = server.log_text().count("Disconnected from client")
    got: list[str] = []
    final = None
    for item in gen.stream(STORY, GenParams(max_new_tokens=1500), cancel=cancel):
        if isinstance(item, Completion):
            final = item
        else:
            got.append(item)
            if len(got) == 3:
                cancel.set()
    assert final is not None and final.finish_reason == "cancelled"
    assert len(got) == 3 and final.text == "".join(got)
    # llama-cpp-python's server notices the closed connection and stops generating (it logs it).
    wait_for(lambda: server.log_text().count("Disconnected from client") > before, "the server to see the close")
    assert gen.generate(PLAIN_PROMPTS[1], GenParams(max_new_tokens=16, stop=STOP)).text  # and serves the next one
    # A request cancelled before it is sent never reaches the server.
    cancel = threading.Event()
    cancel.set()
    _, final = streamed(gen, STORY, GenParams(max_new_tokens=8), cancel=cancel)
    assert final.finish_reason == "cancelled" and final.text == ""


def test_wrong_key_is_a_clear_error(server: LlamaServer) -> None:
    with remote(server, api_key="wrong", tokenizer=str(gguf_path())) as g:
        with pytest.raises(GeneratorError, match=r"HTTP 401.*CTXQA_LLM_API_KEY"):
            g.generate(PLAIN_PROMPTS[0], GenParams(max_new_tokens=4))


def test_hung_server_times_out_then_recovers(server: LlamaServer) -> None:
    with remote(server, timeout=2.0) as g:
        g.count_tokens("probe")  # the tokenize endpoint is found while the server answers
        server.pause()
        try:
            with pytest.raises(GeneratorError, match=r"sent nothing for 2 s .*CTXQA_LLM_TIMEOUT"):
                g.generate(PLAIN_PROMPTS[0], GenParams(max_new_tokens=4))
        finally:
            server.resume()
        assert g.generate(PLAIN_PROMPTS[0], GenParams(max_new_tokens=8, stop=STOP)).text


# --- servers that are down or broken --------------------------------------------------------------------------


def test_down_server_is_a_clear_error_per_request() -> None:
    port = free_port()
    g = OpenAICompatGenerator(f"http://127.0.0.1:{port}", model=MODEL_ALIAS, context_length=2048)  # no contact yet
    with g:
        for call in (lambda: g.count_tokens("hello"), lambda: g.generate("hello", GenParams(max_new_tokens=4))):
            with pytest.raises(GeneratorError, match=rf"cannot reach .*127\.0\.0\.1:{port}.*CTXQA_LLM_BASE_URL"):
                call()


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


CHUNK = {"choices": [{"text": "Hello", "index": 0, "finish_reason": None}]}


@pytest.mark.parametrize(("canned", "message"), [
    (Canned(200, "text/html", b"<html><body>It works!</body></html>"), r"did not answer like an OpenAI .*It works"),
    (Canned(200, "text/event-stream", sse(CHUNK, b"{not json")), r"did not answer like an OpenAI .*not json"),
    (Canned(200, "text/event-stream", sse({"choices": "nope"})), r"did not answer like an OpenAI"),
    (Canned(200, "text/event-stream", sse(CHUNK)), r"ended the stream before the completion finished"),
    (Canned(200, "text/event-stream", sse(CHUNK, {"error": {"message": "CUDA out of memory"}})),
     r"error mid-stream: CUDA out of memory"),
    (Canned(500, "application/json", b'{"error": {"message": "model is loading"}}'), r"HTTP 500 .*model is loading"),
    (Canned(404, "text/plain", b"Not Found"), r"HTTP 404 .*CTXQA_LLM_BASE_URL.*CTXQA_LLM_MODEL"),
])
def test_garbage_is_a_clear_error(canned: Canned, message: str) -> None:
    broken = BrokenServer(canned)
    try:
        with OpenAICompatGenerator(broken.base_url, model="m", context_length=512, tokenizer=str(gguf_path())) as g:
            with pytest.raises(GeneratorError, match=message):
                g.generate("hello", GenParams(max_new_tokens=4))
    finally:
        broken.close()


def test_a_whole_json_answer_is_accepted() -> None:
    """A server that ignores `stream` and sends one completion object still gives the answer."""
    body = json.dumps({"choices": [{"text": "Paris.<|im_end|> more", "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()
    broken = BrokenServer(Canned(200, "application/json", body))
    try:
        with OpenAICompatGenerator(broken.base_url, model="m", context_length=512, tokenizer=str(gguf_path())) as g:
            c = g.generate("hello", GenParams(max_new_tokens=4, stop=STOP))
        assert (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) == ("Paris.", "stop", 7, 3)
    finally:
        broken.close()


def test_tokenizer_modes_without_a_tokenize_endpoint() -> None:
    broken = BrokenServer(Canned(404, "text/plain", b"Not Found"))
    try:
        with OpenAICompatGenerator(broken.base_url, model="m", context_length=512, tokenizer="server") as g:
            with pytest.raises(GeneratorError, match=r"no tokenize endpoint.*CTXQA_LLM_TOKENIZER"):
                g.count_tokens("hello")
        with OpenAICompatGenerator(broken.base_url, model="m", context_length=512) as g:  # auto: falls back
            assert g.count_tokens("hello") >= 1 and g.counter_kind == "usage"
    finally:
        broken.close()


# --- settings -------------------------------------------------------------------------------------------------


def test_settings_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match="CTXQA_LLM_BASE_URL"):
        load_generator(Settings(llm_backend="openai", llm_model="smollm2"))
    with pytest.raises(ValidationError, match=r"CTXQA_LLM_BASE_URL.*http://"):
        Settings(llm_backend="openai", llm_base_url="127.0.0.1:8080")
    with pytest.raises(GeneratorError, match=r"CTXQA_LLM_MODEL.*bundled:smollm2"):
        load_generator(Settings(llm_backend="openai", llm_base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(GeneratorError, match=r"tokenizer file not found.*CTXQA_LLM_TOKENIZER"):
        load_generator(Settings(llm_backend="openai", llm_base_url="http://127.0.0.1:9", llm_model="smollm2",
                                llm_tokenizer=str(tmp_path / "missing.json")))
    assert normalise_base_url("http://h:8080/") == "http://h:8080/v1" == normalise_base_url("http://h:8080/v1")


def test_load_generator_from_settings(server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXQA_LLM_BACKEND", "openai")
    monkeypatch.setenv("CTXQA_LLM_BASE_URL", server.root)
    monkeypatch.setenv("CTXQA_LLM_MODEL", MODEL_ALIAS)
    monkeypatch.setenv("CTXQA_LLM_API_KEY", KEY)
    monkeypatch.setenv("CTXQA_LLM_REQUEST_EXTRA", json.dumps(SAME_AS_IN_PROCESS))
    settings = Settings()
    assert settings.effective()["llm_api_key"] != KEY  # `ctxqa config` never prints the secret
    with load_generator(settings) as g:
        assert isinstance(g, OpenAICompatGenerator)
        assert g.context_length == 2048  # the chatml profile's (no CTXQA_LLM_CONTEXT_LENGTH)
        assert g.max_concurrency == settings.llm_concurrency
        assert "Paris" in g.generate(PLAIN_PROMPTS[0], GenParams(max_new_tokens=24, stop=STOP)).text
    row = next(r for r in backend_status(settings) if r["backend"] == "openai")
    assert row["ready"] and row["selected"] and MODEL_ALIAS in row["gpu_detail"]
    down = Settings(llm_backend="llama_cpp", llm_base_url=f"http://127.0.0.1:{free_port()}")
    row = next(r for r in backend_status(down) if r["backend"] == "openai")
    assert row["ready"] and not row["selected"]  # not selected: not contacted


def test_sse_parser() -> None:
    lines = [": ping", "event: message", "data: one", "", "data: a", "data: b", "", "id: 3", "data:x"]
    assert list(sse_data(lines)) == ["one", "a\nb", "x"]
