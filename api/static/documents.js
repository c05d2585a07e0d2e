// The documents view: collections (list, create), upload by drag-and-drop or file picker with progress and each
// file's result, the document list with status, pages, chunks and errors, and delete with a confirmation.

import { api, upload } from "./api.js";
import { $, h, clearError, showError } from "./dom.js";

let ctx = null; // {getCollection, setCollection, refreshCollections}

export function initDocuments(c) {
  ctx = c;
  const zone = $("#dropzone");
  const input = $("#file-input");
  input.addEventListener("change", () => { if (input.files.length) send([...input.files]); input.value = ""; });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) zone.addEventListener(ev, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    const files = [...(e.dataTransfer ? e.dataTransfer.files : [])];
    if (files.length) send(files);
  });
  $("#new-collection").addEventListener("submit", async (e) => {
    e.preventDefault();
    clearError();
    const name = $("#new-collection-name").value.trim();
    $("#new-collection-msg").textContent = "";
    try {
      await api("/v1/collections", { method: "POST", json: { name } });
      $("#new-collection-name").value = "";
      await ctx.refreshCollections();
      ctx.setCollection(name);
      await refresh();
    } catch (err) {
      showError(err, { name: $("#new-collection-msg") });
    }
  });
}

async function send(files) {
  clearError();
  const coll = ctx.getCollection();
  const bar = $("#upload-bar");
  $("#upload-progress").hidden = false;
  bar.value = 0;
  $("#upload-status").textContent = `Uploading ${files.length} file(s)…`;
  try {
    const res = await upload(coll, files, (f) => {
      bar.value = Math.round(f * 100);
      $("#upload-status").textContent = f < 1 ? `Uploading… ${Math.round(f * 100)} %` : "Reading and indexing…";
    });
    $("#upload-status").textContent = Object.entries(res.summary).map(([k, v]) => `${v} ${k}`).join(", ");
    const tbody = $("#upload-results tbody");
    tbody.replaceChildren(...res.results.map((r) => h("tr", { dataset: { status: r.status } },
      h("td", {}, r.filename), h("td", { class: `status status-${r.status}` }, r.status), h("td", {}, r.pages),
      h("td", {}, r.chunks), h("td", {}, r.reason || ""))));
    $("#upload-results").hidden = false;
  } catch (err) {
    $("#upload-status").textContent = "Upload failed.";
    showError(err);
  }
  await ctx.refreshCollections();
  await refresh();
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export async function refresh() {
  const coll = ctx.getCollection();
  $("#upload-collection").textContent = coll || "";
  const tbody = $("#document-table tbody");
  if (!coll) { tbody.replaceChildren(); $("#documents-empty").hidden = false; return; }
  try {
    const q = new URLSearchParams({ collection: coll, limit: 1000 });
    const res = await api(`/v1/documents?${q}`);
    tbody.replaceChildren(...res.documents.map(row));
    $("#documents-empty").hidden = res.documents.length > 0;
  } catch (err) {
    if (err.status === 404) { tbody.replaceChildren(); $("#documents-empty").hidden = false; return; }
    showError(err);
  }
}

function row(d) {
  const del = h("button", { type: "button", class: "danger quiet", "aria-label": `Delete ${d.title || d.source}` }, "Delete");
  del.addEventListener("click", async () => {
    if (!window.confirm(`Delete “${d.title || d.source}” from ${d.collection}? Its chunks leave the index; ` +
                        "answers will no longer cite it.")) return;
    clearError();
    try {
      await api(`/v1/documents/${d.id}`, { method: "DELETE" });
      await ctx.refreshCollections();
      await refresh();
    } catch (err) {
      showError(err);
    }
  });
  const pages = d.pages ? (d.empty_pages ? `${d.pages} (${d.empty_pages} without text)` : d.pages) : "";
  return h("tr", { dataset: { id: d.id, status: d.status } },
    h("td", {}, h("span", { class: "doc-title" }, d.title || d.source),
      d.title && d.title !== d.source ? h("span", { class: "muted doc-source" }, d.source) : null),
    h("td", { class: `status status-${d.status}` }, d.status, d.error ? h("span", { class: "doc-error" }, d.error) : null),
    h("td", {}, pages), h("td", {}, d.chunk_count), h("td", {}, when(d.ingested_at)), h("td", {}, del));
}
