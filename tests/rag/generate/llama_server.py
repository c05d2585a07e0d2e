"""Test helpers: a real OpenAI-compatible server (llama-cpp-python's `llama_cpp.server`, started through
scripts/llama_server.py) serving the bundled SmolLM2 GGUF on 127.0.0.1, and a deliberately broken HTTP server.

The broken one is the only stand-in in these tests: no real engine returns garbage on demand, and what is under
test is how ctxqa copes with a peer that does.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[3]
LAUNCHER = REPO / "scripts" / "llama_server.py"
MODEL_ALIAS = "smollm2"
# The server's default repeat penalty (1.1) changes greedy output; ctxqa's in-process backend uses none.
SAME_AS_IN_PROCESS = {"repeat_penalty": 1.0}


def server_missing() -> str | None:
    """Why the real server cannot run here (None: it can)."""
    for mod, extra in (("llama_cpp", "gguf"), ("sse_starlette", "dev"), ("starlette_context", "dev")):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install 'ctxqa[{extra}]'): llama_cpp.server cannot run"
    try:
        from ctxqa.rag.generate import resolve_model_path

        resolve_model_path("bundled:smollm2")
    except Exception as exc:  # noqa: BLE001
        return f"the bundled SmolLM2 GGUF is not installed: {exc}"
    return None


def gguf_path() -> Path:
    from ctxqa.rag.generate import resolve_model_path

    return resolve_model_path("bundled:smollm2")


@dataclass
class LlamaServer:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    api_key: str | None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers (a hung server)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_llama_server(root: Path, port: int | None = None, api_key: str | None = None,
                       n_ctx: int = 2048, ready_timeout: float = 180.0, prompt_cache: bool = False) -> LlamaServer:
    """Start the real server and wait until GET /v1/models answers (the deadline only guards against a hang).

    Without `prompt_cache` every request evaluates its whole prompt (scripts/llama_server.py --no_prompt_cache):
    with llama-cpp-python's prefix reuse, two identical greedy requests can differ (a near-tie flips)."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"llama-server-{port}.log"
    cmd = [sys.executable, str(LAUNCHER), "--model", str(gguf_path()), "--model_alias", MODEL_ALIAS,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)]
    if api_key:
        cmd += ["--api_key", api_key]
    if not prompt_cache:
        cmd.append("--no_prompt_cache")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    server = LlamaServer(port, proc, log, api_key)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(f"{server.base_url}/models", headers=headers, timeout=5).status_code == 200:
                # llama.cpp's first decode is slow (seconds: buffers, threads); pay it here, not in a test's timeout.
                httpx.post(f"{server.base_url}/completions", headers=headers, timeout=ready_timeout,
                           json={"prompt": "Hello", "max_tokens": 2, "temperature": 0}).raise_for_status()
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"llama_cpp.server not ready in {ready_timeout}s:\n{server.log_text()[-3000:]}")


def wait_for(predicate: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    """Poll until `predicate()` holds; the deadline is only a hang guard."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# --- a broken server ----------------------------------------------------------------------------------------


@dataclass
class Canned:
    status: int
    content_type: str
    body: bytes


class BrokenServer:
    """An HTTP server on 127.0.0.1 that answers every POST and GET with one canned response (settable)."""

    def __init__(self, response: Canned, port: int = 0) -> None:
        self.response = response
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                r = outer.response
                self.send_response(r.status)
                self.send_header("Content-Type", r.content_type)
                self.send_header("Content-Length", str(len(r.body)))
                self.end_headers()
                self.wfile.write(r.body)

            do_POST = do_GET = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
