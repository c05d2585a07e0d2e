// Small DOM helpers. Every text from the API (answers, document text, file names) goes in as text nodes, never as
// HTML: a document can contain anything.

export const $ = (sel, root = document) => root.querySelector(sel);

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    // Styles through the CSSOM: the Content-Security-Policy forbids inline style attributes.
    else if (k === "style") Object.assign(el.style, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// The API's message and the field it names, in the page's error banner (and next to the field when it has one).
export function showError(err, fieldMessages = {}) {
  if (err && err.name === "AbortError") return;
  const field = err && err.field;
  const text = field ? `${err.message} (field: ${field})` : (err && err.message) || String(err);
  $("#error-text").textContent = text;
  $("#error").hidden = false;
  const slot = field && fieldMessages[field];
  if (slot) slot.textContent = err.message;
}

export function clearError() {
  $("#error").hidden = true;
  $("#error-text").textContent = "";
}

export function docLabel(d) {
  return d.title || d.source || `document ${d.document_id ?? d.id}`;
}

export function pagesLabel(pages) {
  if (!pages || !pages.length) return "";
  return pages.length === 1 ? `p. ${pages[0]}` : `pp. ${pages[0]}–${pages[pages.length - 1]}`;
}
