// The ask view: the question goes to POST /v1/ask as a stream; the answer's text shows as it is generated, each
// sentence is marked with its grounding as soon as it is checked, and the final answer links every sentence to
// the passage that supports it (or best comes closest) and lists the sources.

import { stream } from "./api.js";
import { $, h, clearError, docLabel, pagesLabel, showError } from "./dom.js";
import { openEvidence } from "./evidence.js";

const LABELS = {
  supported: "supported by its source",
  partial: "partly supported: some of it is not in the source",
  unsupported: "not supported by any source",
  neutral: "nothing to check",
};

const STATUS_TEXT = {
  verified: "cited by the model",
  unverified: "cited by the model, but matches no passage it was given",
  inferred: "not cited by the model; attributed by ctxqa",
  evidence: "the closest passage (not cited)",
};

let running = null; // {ctrl, t0, raw, rawPos, firstText}

export function initAsk(getCollection) {
  const form = $("#ask-form");
  const q = $("#question");
  q.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  q.addEventListener("input", () => { $("#question-msg").textContent = ""; q.removeAttribute("aria-invalid"); });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (running) { running.ctrl.abort(); return; } // the button reads "Stop" while an answer streams
    const question = q.value.trim();
    if (!question) { q.focus(); return; }
    ask(question, getCollection(), $("#quote").checked);
  });
}

function setStatus(text) { $("#status").textContent = text; }

async function ask(question, collection, quote) {
  clearError();
  const ctrl = new AbortController();
  running = { ctrl, t0: performance.now(), raw: "", rawPos: 0, firstText: null, sentences: [] };
  const answerEl = $("#answer");
  delete answerEl.dataset.firstTextMs;
  delete answerEl.dataset.finalMs;
  answerEl.dataset.state = "streaming";
  answerEl.className = "";
  answerEl.replaceChildren(h("span", { class: "checked" }), h("span", { class: "draft" }));
  $("#verdict").replaceChildren();
  $("#verdict").className = "";
  $("#source-list").replaceChildren();
  $("#best-passages").hidden = true;
  $("#result").hidden = false;
  $("#ask-btn").textContent = "Stop";
  setStatus("Searching the documents…");
  const body = { question, collection };
  if (quote) body.mode = "quote";
  let final = null;
  try {
    await stream("/v1/ask", body, (name, data) => {
      if (name === "sources") setStatus(`Answering from ${data.chunks.length} passage(s)…`);
      else if (name === "delta") onDelta(data.text);
      else if (name === "sentence") onSentence(data);
      else if (name === "final") final = data;
      else if (name === "error") throw Object.assign(new Error(data.error.message), data.error);
    }, { signal: ctrl.signal });
    if (!final) throw new Error("the answer stream ended without a final answer");
    const ms = performance.now() - running.t0;
    answerEl.dataset.finalMs = ms.toFixed(0);
    if (!answerEl.dataset.firstTextMs) answerEl.dataset.firstTextMs = ms.toFixed(0);
    renderFinal(final);
    setStatus(`Answered in ${(ms / 1000).toFixed(1)} s`);
  } catch (e) {
    answerEl.dataset.state = "failed";
    if (e.name === "AbortError") setStatus("Stopped.");
    else {
      setStatus("");
      if (e.field === "question") {
        $("#question-msg").textContent = e.message;
        $("#question").setAttribute("aria-invalid", "true");
      }
      showError(e);
    }
  } finally {
    running = null;
    $("#ask-btn").textContent = "Ask";
  }
}

function markFirstText() {
  if (running.firstText === null) {
    running.firstText = performance.now() - running.t0;
    $("#answer").dataset.firstTextMs = running.firstText.toFixed(0);
  }
}

function onDelta(text) {
  running.raw += text;
  markFirstText();
  renderDraft();
}

// The draft is the model's raw text after the last checked sentence (it still holds the sources lines, which
// the final answer drops).
function renderDraft() {
  $("#answer .draft").textContent = running.raw.slice(running.rawPos);
}

function onSentence(ev) {
  markFirstText();
  const s = ev.sentence;
  running.sentences.push(s);
  const at = running.raw.indexOf(s.text, running.rawPos);
  if (at !== -1) running.rawPos = at + s.text.length;
  else running.rawPos = running.raw.length; // quote mode streams no deltas
  const lead = ev.text.slice(0, Math.max(0, ev.text.length - s.text.length));
  $("#answer .checked").append(lead, sentenceEl(s, null));
  setStatus("Checking each sentence against its source…");
  renderDraft();
}

function sentenceEl(s, n) {
  const el = h("span", {
    class: `sent sent-${s.label}`, dataset: { label: s.label },
    title: `${LABELS[s.label]}${s.label === "neutral" ? "" : ` (support ${s.score.toFixed(2)})`}` +
      (s.missing && s.missing.length ? ` — not in any source: ${s.missing.join(", ")}` : ""),
  }, s.text);
  if (n !== null && s.evidence) {
    const sup = citeButton(n, s.label);
    const btn = sup.firstChild;
    btn.addEventListener("click", () => {
      markSource(n);
      openEvidence(evidenceRef(s.evidence, `the passage for “${s.text.slice(0, 60)}”`), btn);
    });
    el.append(sup);
  }
  return el;
}

// The marker's source in the list below the answer is highlighted while its passage is open.
function markSource(n) {
  for (const li of $("#source-list").children) li.classList.toggle("active", li.id === `source-${n}`);
}

function citeButton(n, label) {
  return h("sup", {}, h("button", {
    type: "button", class: "cite", dataset: { n, label: label || "" },
    "aria-label": `Source ${n}: open the passage`, "aria-controls": "evidence", "aria-describedby": `source-${n}`,
  }, `[${n}]`));
}

// Sources: the citations, then any passage a sentence rests on that no citation covers. Each sentence gets the
// number of the source holding its evidence.
export function buildSources(final) {
  const sources = final.citations.map((c) => ({
    status: c.status, document_id: c.document_id, title: c.title, source: c.source, pages: c.pages,
    char_start: c.char_start, char_end: c.char_end, chunk_ids: c.chunk_ids, block: c.block, support: c.support,
    supports_answer: c.supports_answer, heading_path: [], best: null,
  }));
  const numbers = final.sentences.map((s) => {
    const ev = s.evidence;
    if (!ev || ev.document_id === null || s.label === "neutral") return null;
    let i = sources.findIndex((src) => src.document_id === ev.document_id &&
      ((ev.chunk_id !== null && src.chunk_ids.includes(ev.chunk_id)) || (ev.block && src.block === ev.block)));
    if (i === -1) {
      sources.push({ status: "evidence", document_id: ev.document_id, title: ev.title, source: ev.source,
        pages: ev.pages, char_start: ev.char_start, char_end: ev.char_end, chunk_ids: ev.chunk_id ? [ev.chunk_id] : [],
        block: ev.block, support: s.score, supports_answer: null, heading_path: ev.heading_path, best: null });
      i = sources.length - 1;
    }
    const src = sources[i];
    if (!src.best || s.score > src.best.score) src.best = { ...ev, score: s.score };
    return i + 1;
  });
  return { sources, numbers };
}

function evidenceRef(ev, label) {
  return { document_id: ev.document_id, char_start: ev.char_start, char_end: ev.char_end, pages: ev.pages,
    title: ev.title, source: ev.source, heading_path: ev.heading_path, label };
}

function verdictText(final, counts) {
  const checked = counts.supported + counts.partial + counts.unsupported;
  const v = {
    supported: "Every sentence is supported by the sources.",
    partial: `Partly supported: ${counts.supported} of ${checked} checked sentence(s) fully supported; the others are marked.`,
    unsupported: "Not supported by the documents: check the passages below before you rely on this answer.",
    abstained: "Not found in the documents.",
  }[final.grounding];
  const extra = [];
  if (final.mode === "quote") extra.push("Quote mode: the documents' own sentences, verbatim.");
  if (final.replaced) extra.push(`The model's own answer was replaced (its verdict: ${final.replaced}).`);
  return [v, ...extra].join(" ");
}

export function renderFinal(final) {
  const answerEl = $("#answer");
  const { sources, numbers } = buildSources(final);
  answerEl.dataset.state = "final";
  answerEl.dataset.grounding = final.grounding;
  answerEl.className = final.abstained ? "abstained" : "";
  const parts = [];
  let pos = 0;
  const counts = { supported: 0, partial: 0, unsupported: 0, neutral: 0 };
  final.sentences.forEach((s, i) => {
    counts[s.label] += 1;
    if (s.start > pos) parts.push(final.answer.slice(pos, s.start));
    parts.push(sentenceEl(s, numbers[i]));
    pos = Math.max(pos, s.end);
  });
  if (pos < final.answer.length) parts.push(final.answer.slice(pos));
  answerEl.replaceChildren(...parts);
  const verdict = $("#verdict");
  verdict.className = `verdict verdict-${final.grounding}`;
  verdict.textContent = verdictText(final, counts);

  const list = $("#source-list");
  list.replaceChildren(...sources.map((src, i) => {
    const where = [pagesLabel(src.pages), src.status === "evidence" ? null : `support ${src.support.toFixed(2)}`]
      .filter(Boolean).join(" · ");
    const openable = src.document_id !== null && src.char_start !== null;
    const ref = src.best ? evidenceRef(src.best, `source ${i + 1}`) : {
      document_id: src.document_id, char_start: src.char_start, char_end: src.char_end, pages: src.pages,
      title: src.title, source: src.source, heading_path: src.heading_path, label: `source ${i + 1}` };
    const btn = openable ? h("button", { type: "button", class: "source-open", dataset: { n: i + 1 } },
      docLabel(src)) : h("span", {}, src.source || JSON.stringify(src.raw || {}));
    if (openable) btn.addEventListener("click", () => openEvidence(ref, btn));
    return h("li", { id: `source-${i + 1}`, dataset: { status: src.status } }, btn, " ",
      h("span", { class: `badge badge-${src.status}`, title: STATUS_TEXT[src.status] }, src.status), " ",
      h("span", { class: "muted" }, where),
      src.supports_answer === false ? h("span", { class: "warn" }, " — backs none of the answer's sentences") : null);
  }));
  $("#sources").hidden = sources.length === 0;

  const best = final.evidence || [];
  $("#best-passages").hidden = best.length === 0;
  $("#passage-list").replaceChildren(...best.filter((s) => s.evidence).map((s) => {
    const btn = h("button", { type: "button", class: "source-open" }, docLabel(s.evidence));
    btn.addEventListener("click", () => openEvidence(evidenceRef(s.evidence, "best passage"), btn));
    return h("li", {}, h("q", {}, s.text), " — ", btn, " ", h("span", { class: "muted" }, pagesLabel(s.evidence.pages)));
  }));
}
