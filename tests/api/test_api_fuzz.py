"""Schemathesis fuzz pass over the OpenAPI schema of a real `ctxqa serve` on 127.0.0.1: zero 5xx allowed.

Every operation is fuzzed with schema-valid (positive) and schema-violating (negative) inputs, with an admin key
so requests get past authentication and reach the handlers; the check is `not_a_server_error`. At the end the
server's own request counters must show no 5xx either (which also catches errors inside streamed responses
and requests the checks could not see).

Sizes: CTXQA_FUZZ_EXAMPLES (default 60) examples per operation and generation mode. (Operations are
parametrized by hand: schemathesis' lazy `from_fixture` loader does not work with pytest 9.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402

from tests.api.test_api import LIMITS, Server, create_key, metric, start_server, stop_server  # noqa: E402

EXAMPLES = int(os.environ.get("CTXQA_FUZZ_EXAMPLES", "60"))

FUZZ_LIMITS = {
    **LIMITS,
    # Keep each generated /v1/ask cheap: a tiny prompt and a few tokens (generation is real, on the CPU).
    "CTXQA_MAX_TOP_K": "2",
    "CTXQA_MAX_NEW_TOKENS_LIMIT": "4",
    "CTXQA_MAX_NEW_TOKENS": "4",
    "CTXQA_TOP_K": "1",
    "CTXQA_QUEUE_SIZE": "8",
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("api-fuzz"), FUZZ_LIMITS)
    try:
        srv.keys["admin"] = create_key(srv, "fuzz-admin", admin=True)
        with srv.client("admin") as c:
            r = c.post("/v1/documents", files=[("files", ("fuzz.md", b"# Fuzz\n\nThe fuzz target answers with "
                                                         b"short sentences about kiwis.", "text/markdown"))])
            assert r.status_code == 200, r.text
        yield srv
        check_fuzz_pass(srv)  # at the server's end, whatever order its tests ran in
    finally:
        stop_server(srv)


def _cases() -> list[tuple[str, str, str]]:
    """(METHOD, path, mode) for every operation, from the app's schema (built in-process; nothing is loaded):
    valid inputs for all of them, invalid ones for those that take inputs (a path parameter, a query, a body)."""
    from ctxqa.api.app import create_app
    from ctxqa.context import Context
    from ctxqa.rag.config import Settings

    spec = create_app(Context(Settings(auth_disabled=False)), load_model=False).openapi()
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            out.append((method.upper(), path, "positive"))
            if op.get("parameters") or "requestBody" in op:
                out.append((method.upper(), path, "negative"))
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server):  # type: ignore[no-untyped-def]
    config = SchemathesisConfig.from_dict({
        "headers": {"Authorization": f"Bearer {fuzz_server.keys['admin']}"},
        "request-timeout": 300,
    })
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=config)


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode}" for m, p, mode in CASES])
def test_no_server_errors(api_schema, fuzz_server: Server, method: str, path: str,  # type: ignore[no-untyped-def]
                          mode: str) -> None:
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=GenerationMode(mode))
    auth = {"Authorization": f"Bearer {fuzz_server.keys['admin']}"}
    calls = {"n": 0}

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate], database=None)
    def fuzz(case) -> None:  # type: ignore[no-untyped-def]
        calls["n"] += 1
        headers = {} if case.headers and "Authorization" in case.headers else auth
        case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=300)

    fuzz()
    assert calls["n"] > 0


def check_fuzz_pass(server: Server) -> None:
    """The server's own counters and log agree that no generated request failed."""
    with httpx.Client(base_url=server.url, timeout=60,
                      headers={"Authorization": f"Bearer {server.keys['admin']}"}) as c:
        text = c.get("/metrics").text
    total = metric(text, "ctxqa_http_requests_total")
    fives = sum(metric(text, "ctxqa_http_requests_total", status=str(s)) for s in range(500, 600))
    by_route: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        m = re.match(r'^ctxqa_http_requests_total\{method="(\w+)",route="([^"]*)",status="(\d+)"\} (\S+)$', line)
        if m:
            by_route.setdefault(f"{m.group(1)} {m.group(2)}", {})[m.group(3)] = int(float(m.group(4)))
    lines = [f"{route}: " + ", ".join(f"{st} x{n}" for st, n in sorted(sts.items()))
             for route, sts in sorted(by_route.items())]
    summary = f"fuzz pass: {int(total)} requests served, {int(fives)} with a 5xx status\n" + "\n".join(lines)
    report = Path(os.environ.get("CTXQA_FUZZ_REPORT", server.data_dir.parent / "fuzz-report.txt"))
    report.write_text(summary + "\n")
    print("\n" + summary)
    assert total > 0
    assert fives == 0, server.log_text()[-6000:]
    assert "Traceback" not in server.log_text()
