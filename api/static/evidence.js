// The evidence panel: a PDF span on its page image (rendered by the server) with boxes over the characters, or
// a text span in its surroundings with its heading path. Esc closes it.

import { api, blobUrl } from "./api.js";
import { $, h, docLabel, pagesLabel, showError } from "./dom.js";

let current = null; // {ref, page, pageCount, returnFocus, url, ctrl}

function close() {
  const panel = $("#evidence");
  if (panel.hidden) return;
  panel.hidden = true;
  document.body.classList.remove("evidence-open");
  if (current) {
    current.ctrl.abort();
    if (current.url) URL.revokeObjectURL(current.url);
    if (current.returnFocus) current.returnFocus.focus();
  }
  current = null;
}

export function initEvidence() {
  $("#evidence-close").addEventListener("click", close);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") close(); });
  $("#page-prev").addEventListener("click", () => current && showPage(current.page - 1));
  $("#page-next").addEventListener("click", () => current && showPage(current.page + 1));
}

// ref: {document_id, char_start, char_end, pages, title, source, heading_path, label}
export async function openEvidence(ref, trigger) {
  if (current) close();
  current = { ref, page: null, pageCount: null, returnFocus: trigger || null, url: null, ctrl: new AbortController() };
  const panel = $("#evidence");
  $("#evidence-title").textContent = docLabel(ref);
  $("#evidence-where").textContent = [ref.label, pagesLabel(ref.pages), (ref.heading_path || []).join(" › ")]
    .filter(Boolean).join(" · ");
  $("#evidence-body").replaceChildren(h("p", { class: "muted" }, "Loading…"));
  $("#evidence-pager").hidden = true;
  panel.hidden = false;
  document.body.classList.add("evidence-open");
  $("#evidence-close").focus();
  if (ref.pages && ref.pages.length) await showPage(ref.pages[0]);
  else await showText();
}

async function showText() {
  const { ref, ctrl } = current;
  try {
    const q = new URLSearchParams({ start: ref.char_start, end: ref.char_end, context: 400 });
    const t = await api(`/v1/documents/${ref.document_id}/text?${q}`, { signal: ctrl.signal });
    if (t.heading_path.length) $("#evidence-where").textContent = [ref.label, t.heading_path.join(" › ")].filter(Boolean).join(" · ");
    const mark = h("mark", { class: "hl-text" }, t.text);
    $("#evidence-body").replaceChildren(
      h("div", { class: "passage", "data-kind": "text" },
        t.heading_path.length ? h("p", { class: "crumbs" }, t.heading_path.join(" › ")) : null,
        h("p", { class: "passage-text" }, t.before ? "…" + t.before.trimStart() : "", mark,
          t.after ? t.after.trimEnd() + "…" : "")));
    mark.scrollIntoView({ block: "center" });
  } catch (e) {
    if (e.name !== "AbortError") fail(e);
  }
}

async function showPage(n) {
  if (!current) return;
  const { ref, ctrl } = current;
  if (current.pageCount && (n < 1 || n > current.pageCount)) return;
  current.page = n;
  const q = new URLSearchParams({ start: ref.char_start, end: ref.char_end });
  // The image is fetched beside the boxes (it takes longer), with its own abort: when the boxes say the span is
  // on another page, that render is dropped rather than downloaded. Closing the panel aborts both.
  const imgCtrl = new AbortController();
  ctrl.signal.addEventListener("abort", () => imgCtrl.abort(), { once: true });
  const image = blobUrl(`/v1/documents/${ref.document_id}/pages/${n}.png`, { signal: imgCtrl.signal });
  image.then((url) => { if (imgCtrl.signal.aborted) URL.revokeObjectURL(url); }, () => {});
  try {
    const boxes = await api(`/v1/documents/${ref.document_id}/pages/${n}/boxes?${q}`, { signal: ctrl.signal });
    if (!current || current.page !== n) { imgCtrl.abort(); return; }
    // A chunk's pages include pages the span itself does not touch: go to the span's first page.
    if (!boxes.boxes.length && boxes.span_pages.length && !boxes.span_pages.includes(n) && !current.moved) {
      imgCtrl.abort();
      current.moved = true;
      return showPage(boxes.span_pages[0]);
    }
    const url = await image;
    if (!current || current.page !== n) { URL.revokeObjectURL(url); return; }
    if (current.url) URL.revokeObjectURL(current.url);
    current.url = url;
    current.pageCount = boxes.page_count;
    $("#evidence-where").textContent = [ref.label, pagesLabel(boxes.span_pages), (ref.heading_path || []).join(" › ")]
      .filter(Boolean).join(" · ");
    const img = h("img", { src: url, alt: `Page ${n} of ${docLabel(ref)}`, class: "page-img", draggable: "false" });
    const layer = h("div", { class: "page", "data-page": n, style: { aspectRatio: `${boxes.width} / ${boxes.height}` } },
      img,
      boxes.boxes.map((b) => h("div", {
        class: "hl-box",
        style: { left: `${b.x0 * 100}%`, top: `${b.y0 * 100}%`, width: `${(b.x1 - b.x0) * 100}%`,
          height: `${(b.y1 - b.y0) * 100}%` },
        dataset: { x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1 },
        title: "the cited passage",
      })));
    const note = boxes.boxes.length ? null : h("p", { class: "muted" }, boxes.span_pages.includes(n)
      ? "The passage could not be located on the page image (its text layer differs); its text:"
      : `The passage is on ${pagesLabel(boxes.span_pages)}.`);
    $("#evidence-body").replaceChildren(note || "", note && boxes.span_pages.includes(n)
      ? h("blockquote", {}, boxes.text) : "", layer);
    $("#evidence-pager").hidden = boxes.page_count < 2;
    $("#page-label").textContent = `Page ${n} of ${boxes.page_count}`;
    $("#page-prev").disabled = n <= 1;
    $("#page-next").disabled = n >= boxes.page_count;
    await img.decode().catch(() => {});
    const first = layer.querySelector(".hl-box");
    if (first) first.scrollIntoView({ block: "center" });
    layer.dataset.loaded = "true";
  } catch (e) {
    imgCtrl.abort();
    if (e.name === "AbortError") return;
    if (e.code === "not_a_pdf") { current.ref = { ...ref, pages: [] }; return showText(); }
    fail(e);
  }
}

function fail(e) {
  $("#evidence-body").replaceChildren(h("p", { class: "error-inline" }, e.message));
  showError(e);
}
