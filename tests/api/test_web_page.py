"""The web page in a real browser: Playwright drives Debian's Chromium against a real `ctxqa serve` on 127.0.0.1
with the embedded default (bundled embedder, SmolLM2 through llama.cpp).

The test signs in (after a wrong key is sent back to the prompt), creates a collection, uploads a 10-Q PDF from
../shared, asks about it and waits for the final verdict, opens a citation and checks that the highlight box over
the page image lies over the cited characters: the characters are found independently with PDFium's own text
search on the PDF. Then Esc, quote mode, an error that names its field, a phone-width layout, and deleting the
document. No request may leave 127.0.0.1. Screenshots of the ask page and the evidence panel go to the test's
tmp dir (docs/web-ask.png and docs/web-evidence.png are copies).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.api.test_api import Server, create_key, start_server, stop_server
from tests.conftest import skip_or_fail
from tests.pdfs import search_char_boxes

CHROMIUM = os.environ.get("CTXQA_CHROMIUM", "/usr/bin/chromium")
FILING = "2023 Q1 INTC.pdf"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "docs"
QUESTION = "What was Intel's net revenue in the first quarter of 2023?"
UNRELATED = "Who won the 1998 FIFA World Cup final, and what was the score?"
LONG = 300_000  # ms: the embedded model on 2 loaded cores


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("web"), {"CTXQA_MAX_QUESTION_CHARS": "500"})
    try:
        srv.keys["web"] = create_key(srv, "web-user")
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        skip_or_fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/test.sh does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def sign_in(page: Page, srv: Server, key: str) -> None:
    page.goto(srv.url + "/")
    page.wait_for_selector("#login-form", state="visible")
    page.fill("#key", key)
    page.press("#key", "Enter")


def upload(page: Page, pdf: Path, collection: str) -> None:
    page.click("nav button[data-view=documents]")
    page.fill("#new-collection-name", collection)
    page.click("#new-collection button[type=submit]")
    page.wait_for_selector(f"#collection-list li.current[data-name='{collection}']")
    page.set_input_files("#file-input", str(pdf))
    page.wait_for_selector("#upload-results tbody tr[data-status=added]", timeout=LONG)
    page.wait_for_selector("#document-table tbody tr[data-status=ingested]")


def ask(page: Page, question: str, *, quote: bool = False) -> dict[str, Any]:
    """Ask from the page; returns the final answer's timings as the page measured them."""
    page.click("nav button[data-view=ask]")
    page.set_checked("#quote", quote)
    page.fill("#question", question)
    page.press("#question", "Enter")
    page.wait_for_selector("#answer[data-state=final], #answer[data-state=failed]", timeout=LONG)
    assert page.get_attribute("#answer", "data-state") == "final", page.inner_text("#error")
    return {"first_text_ms": int(page.get_attribute("#answer", "data-first-text-ms") or -1),
            "final_ms": int(page.get_attribute("#answer", "data-final-ms") or -1),
            "grounding": page.get_attribute("#answer", "data-grounding")}


def drop_file(page: Page, selector: str, path: Path, mime: str) -> None:
    """Drop a file on an element as a person dragging it from their desktop would (a DataTransfer with a File)."""
    data = list(path.read_bytes())
    handle = page.evaluate_handle("""([data, name, mime]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(data)], name, {type: mime}));
        return dt;
    }""", [data, path.name, mime])
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event(selector, event, {"dataTransfer": handle})


def small_png(src: Path, dst: Path, width: int = 960) -> None:
    """A README-sized copy: scaled to `width` and reduced to a 64-colour palette."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def probe(text: str) -> str:
    """A searchable piece of the span: its first line's first few words (PDFium search works within a line)."""
    line = next(s for s in text.splitlines() if len(s.split()) >= 2 or len(s) >= 4)
    return " ".join(line.split()[:5])


def check_evidence(page: Page, target: Any, pdf: Path) -> dict[str, Any]:
    """Click `target`; the page image must load with highlight boxes over the cited characters, checked against
    the characters' positions that PDFium's own search finds in the PDF."""
    seen: list[dict[str, Any]] = []

    def on_response(r: Any) -> None:
        if "/boxes?" in r.url and r.ok:
            seen.append(r.json())

    page.on("response", on_response)
    target.click()
    page.wait_for_selector("#evidence .page[data-loaded=true]", timeout=60_000)
    page.remove_listener("response", on_response)
    shown_page = int(page.get_attribute("#evidence .page", "data-page") or 0)
    boxes = next(b for b in seen if b["page"] == shown_page)
    assert page.evaluate("document.querySelector('#evidence .page-img').naturalWidth") > 100
    assert boxes["method"] in ("offsets", "search") and boxes["boxes"], boxes
    shown = page.evaluate("""() => {
        const img = document.querySelector('#evidence .page-img').getBoundingClientRect();
        return [...document.querySelectorAll('#evidence .hl-box')].map(b => {
            const r = b.getBoundingClientRect();
            return [(r.left - img.left) / img.width, (r.top - img.top) / img.height,
                    (r.right - img.left) / img.width, (r.bottom - img.top) / img.height];
        });
    }""")
    assert len(shown) == len(boxes["boxes"])
    occurrences = search_char_boxes(pdf, boxes["page"], probe(boxes["text"]))
    assert occurrences, f"{probe(boxes['text'])!r} not found on page {boxes['page']} by PDFium's search"

    def covered(chars: list[tuple[float, float, float, float]]) -> bool:
        """Every character's centre lies under a highlight box on screen."""
        return bool(chars) and all(
            any(x0 - 0.002 <= (cx0 + cx1) / 2 <= x1 + 0.002 and y0 - 0.002 <= (cy0 + cy1) / 2 <= y1 + 0.002
                for x0, y0, x1, y1 in shown) for cx0, cy0, cx1, cy1 in chars)

    # The probe may occur more than once on the page; the highlight must lie over one of them, whole.
    assert any(covered(chars) for chars in occurrences), (probe(boxes["text"]), occurrences, shown)
    return boxes


def test_web_page_end_to_end(web_server: Server, browser: Browser, shared_data: Path, tmp_path: Path) -> None:
    srv = web_server
    pdf = shared_data / "corpora" / "sec-10q" / FILING
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    page = ctx.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    console_errors: list[str] = []
    page.on("pageerror", lambda e: console_errors.append(str(e)))

    # A wrong key: the API's 401 sends the page back to the prompt, with the API's message.
    sign_in(page, srv, "ctxqa_not-a-key")
    page.wait_for_selector("#login-msg:has-text('invalid')")
    assert page.is_visible("#login-form") and page.is_hidden("#ask-view")
    page.fill("#key", srv.keys["web"])
    page.press("#key", "Enter")
    page.wait_for_selector("#ask-view", state="visible")
    assert page.evaluate("sessionStorage.getItem('ctxqa.key')") == srv.keys["web"]

    upload(page, pdf, "filings")
    row = page.locator("#document-table tbody tr").first
    assert row.get_attribute("data-status") == "ingested"
    assert int(row.locator("td").nth(2).inner_text().split()[0]) > 10  # pages

    timings = ask(page, QUESTION)
    sentences = page.locator("#answer .sent")
    assert sentences.count() >= 1
    labels = {page.locator("#answer .sent").nth(i).get_attribute("data-label") for i in range(sentences.count())}
    assert labels <= {"supported", "partial", "unsupported", "neutral"}
    assert page.inner_text("#verdict").strip()
    page.screenshot(path=str(tmp_path / "web-ask.png"))

    # Open the evidence: the model's first citation marker, else the first source, else (an unsupported answer,
    # which the smoke-test model often gives) the first of the passages that best answer the question.
    clickable = page.locator("#answer button.cite, #source-list button.source-open, #passage-list button.source-open")
    assert clickable.count() >= 1, page.inner_text("#result")
    check_evidence(page, clickable.first, pdf)
    page.screenshot(path=str(tmp_path / "web-evidence.png"))
    page.keyboard.press("Escape")
    page.wait_for_selector("#evidence", state="hidden")

    # Quote mode: the documents' own sentences, each supported by the passage it comes from.
    quoted = ask(page, QUESTION, quote=True)
    assert "Quote mode" in page.inner_text("#verdict")
    assert page.locator("#answer .sent-supported").count() >= 1
    check_evidence(page, page.locator("#answer button.cite").first, pdf)  # quote mode always cites
    page.keyboard.press("Escape")

    # Nothing relevant: the not-found answer, shown as such.
    ask(page, UNRELATED, quote=True)
    assert page.get_attribute("#answer", "data-grounding") == "abstained"
    assert "Not found" in page.inner_text("#verdict")
    assert "abstained" in (page.get_attribute("#answer", "class") or "")

    # An input error shows the API's message and names the field.
    page.fill("#question", "x" * 600)
    page.press("#question", "Enter")
    page.wait_for_selector("#error", state="visible")
    assert "question" in page.inner_text("#error")
    assert page.get_attribute("#question", "aria-invalid") == "true"
    page.click("#error-close")

    # Drag and drop a Markdown file into another collection; its evidence is the passage with its heading path.
    page.click("nav button[data-view=documents]")
    page.fill("#new-collection-name", "handbook")
    page.click("#new-collection button[type=submit]")
    page.wait_for_selector("#collection-list li.current[data-name='handbook']")
    drop_file(page, "#dropzone", EXAMPLES / "backups.md", "text/markdown")
    page.wait_for_selector("#upload-results tbody tr[data-status=added]", timeout=LONG)
    ask(page, "How long are daily snapshots kept?", quote=True)
    page.locator("#answer button.cite").first.click()
    page.wait_for_selector("#evidence .passage mark.hl-text")
    assert "35 days" in page.inner_text("#evidence .passage mark.hl-text")
    assert "Retention" in page.inner_text("#evidence .crumbs")
    page.keyboard.press("Escape")
    page.select_option("#collection", "filings")

    # Phone width: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.set_viewport_size({"width": 1280, "height": 860})

    # Delete the document, confirming the dialog.
    page.click("nav button[data-view=documents]")
    page.wait_for_selector("#document-table tbody tr")
    page.once("dialog", lambda d: d.accept())
    page.locator("#document-table tbody tr button.danger").first.click()
    page.wait_for_selector("#documents-empty", state="visible")
    with srv.client("web") as c:
        assert c.get("/v1/documents", params={"collection": "filings"}).json()["total"] == 0

    assert not console_errors, console_errors
    outside = [u for u in requests if not u.startswith(srv.url) and not u.startswith(("blob:", "data:"))]
    assert not outside, outside
    figures = {"ask": timings, "quote": quoted, "requests": len(requests)}
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=2))
    print("\nweb page figures:", json.dumps(figures))
    if os.environ.get("CTXQA_WRITE_SCREENSHOTS"):  # CTXQA_WRITE_SCREENSHOTS=docs refreshes the README images
        for name in ("web-ask.png", "web-evidence.png"):
            small_png(tmp_path / name, Path(os.environ["CTXQA_WRITE_SCREENSHOTS"]) / name)
    ctx.close()
