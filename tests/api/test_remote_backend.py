"""A real `ctxqa serve` with `CTXQA_LLM_BACKEND=openai` in front of a real llama-cpp-python server
(`llama_cpp.server`, the bundled SmolLM2) on 127.0.0.1: answers with citations through it, and when that server
is down, hung (SIGSTOP) or replaced by one that answers garbage, /v1/ask answers 503 with Retry-After and a
message that says what is wrong, while search and health keep working; once the server is back the next
question is answered, without restarting ctxqa.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_api import Server, create_key, error_of, start_server, stop_server, stream_ask
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
)

REPO = Path(__file__).resolve().parents[2]
KEY = "llm-secret"
ASK = {"question": "How long are daily snapshots kept?", "collection": "handbook", "max_new_tokens": 48, "top_k": 2}

pytestmark = pytest.mark.skipif(server_missing() is not None, reason=str(server_missing()))


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LlamaServer | Path | int]]:
    """The llama server on a fixed port for the module (tests stop and restart it on that port)."""
    root = tmp_path_factory.mktemp("llm")
    state: dict[str, LlamaServer | Path | int] = {"root": root, "port": free_port()}
    state["server"] = start_llama_server(root, port=int(state["port"]), api_key=KEY)  # type: ignore[arg-type]
    yield state
    state["server"].stop()  # type: ignore[union-attr]


def restart(llm: dict) -> None:  # type: ignore[type-arg]
    llm["server"].stop()
    llm["server"] = start_llama_server(llm["root"], port=llm["port"], api_key=KEY)


@pytest.fixture(scope="module")
def api(llm: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # type: ignore[type-arg]
    srv = start_server(tmp_path_factory.mktemp("api-remote"), {
        "CTXQA_LLM_BACKEND": "openai",
        "CTXQA_LLM_BASE_URL": f"http://127.0.0.1:{llm['port']}/v1",
        "CTXQA_LLM_MODEL": MODEL_ALIAS,
        "CTXQA_LLM_API_KEY": KEY,
        # The model's own tokenizer from its GGUF: counts locally (llama-cpp-python's /extras/tokenize would wait
        # behind a running generation), so failures below come from the completions call itself.
        "CTXQA_LLM_TOKENIZER": str(gguf_path()),
        # Generous: a prompt's prefill on 2 shared, busy cores took up to 20 s here. The hung case waits it out once.
        "CTXQA_LLM_TIMEOUT": "30",
        "CTXQA_LLM_REQUEST_EXTRA": json.dumps(SAME_AS_IN_PROCESS),
    })
    try:
        srv.keys["admin"] = create_key(srv, "admin", admin=True)
        with srv.client() as c:
            files = [("files", (p.name, p.read_bytes(), "text/markdown")) for p in sorted((REPO / "examples/docs").iterdir())]
            r = c.post("/v1/documents", files=files, data={"collection": "handbook"})
            assert r.status_code == 200, r.text
            assert {x["status"] for x in r.json()["results"]} == {"added"}
        yield srv
    finally:
        stop_server(srv)


def assert_unavailable(c: httpx.Client, message: str, stream: bool = True) -> None:
    """/v1/ask fails for this request only, with 503 + Retry-After; search and health are unaffected."""
    r = c.post("/v1/ask", json=ASK)
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    err = error_of(r)
    assert err["code"] == "model_unavailable"
    assert message in err["message"], err["message"]
    if stream:  # the sources, then the error in-band (the status line went out with the sources)
        events = stream_ask(c, ASK)
        assert events[0][0] == "sources" and events[-1][0] == "error"
        assert events[-1][1]["error"]["code"] == "model_unavailable" and message in events[-1][1]["error"]["message"]
    assert c.post("/v1/search", json={"query": "snapshots", "collection": "handbook"}).status_code == 200
    assert c.get("/healthz").status_code == 200


def assert_answers(c: httpx.Client) -> dict:  # type: ignore[type-arg]
    r = c.post("/v1/ask", json=ASK)
    assert r.status_code == 200, r.text
    return r.json()


def test_answers_through_the_remote_server(api: Server) -> None:
    with api.client() as c:
        a = assert_answers(c)
        assert a["model"] == f"openai:{MODEL_ALIAS}"
        assert a["answer"] and a["usage"]["prompt_tokens"] > 0 and a["usage"]["completion_tokens"] > 0
        assert a["chunks"] and a["chunks"][0]["source"] == "backups.md"
        events = stream_ask(c, ASK)
        final = events[-1][1]
        assert events[-1][0] == "final"
        assert (final["answer"], final["citations"], final["usage"]) == (a["answer"], a["citations"], a["usage"])
        assert "".join(d["text"] for e, d in events if e == "delta").strip()
        assert c.get("/readyz").status_code == 200


def test_down_server_gets_503_then_recovers(api: Server, llm: dict) -> None:  # type: ignore[type-arg]
    llm["server"].stop()
    try:
        with api.client() as c:
            assert_unavailable(c, "cannot reach the generation server")
    finally:
        restart(llm)
    with api.client() as c:
        assert_answers(c)


def test_hung_server_times_out_then_recovers(api: Server, llm: dict) -> None:  # type: ignore[type-arg]
    llm["server"].pause()
    try:
        with api.client() as c:
            assert_unavailable(c, "CTXQA_LLM_TIMEOUT", stream=False)  # one wait of the timeout is enough
    finally:
        llm["server"].resume()
    with api.client() as c:
        assert_answers(c)


def test_garbage_server_gets_503_then_recovers(api: Server, llm: dict) -> None:  # type: ignore[type-arg]
    llm["server"].stop()
    broken = BrokenServer(Canned(200, "text/html", b"<html>Welcome to nginx!</html>"), port=llm["port"])
    try:
        with api.client() as c:
            assert_unavailable(c, "did not answer like an OpenAI completions server")
    finally:
        broken.close()
        restart(llm)
    with api.client() as c:
        assert_answers(c)
    assert "Traceback" not in api.log_text()
