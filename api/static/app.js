// The page's entry point: sign-in with an API key (kept in sessionStorage), the collection picker shared by both
// views, and switching between Ask and Documents. Any 401 returns to the key prompt.

import { ApiError, api, clearKey, getKey, setKey, whenUnauthorized } from "./api.js";
import { $, h, clearError, showError } from "./dom.js";
import { initAsk } from "./ask.js";
import { initDocuments, refresh as refreshDocuments } from "./documents.js";
import { initEvidence } from "./evidence.js";

const COLL = "ctxqa.collection";
let view = "ask";

function getCollection() { return $("#collection").value || null; }

function setCollection(name) {
  sessionStorage.setItem(COLL, name);
  $("#collection").value = name;
  for (const li of $("#collection-list").children) li.classList.toggle("current", li.dataset.name === name);
}

async function refreshCollections() {
  const res = await api("/v1/collections");
  const want = sessionStorage.getItem(COLL) || getCollection();
  const select = $("#collection");
  select.replaceChildren(...res.collections.map((c) => h("option", { value: c.name }, `${c.name} (${c.documents})`)));
  const list = $("#collection-list");
  list.replaceChildren(...res.collections.map((c) => {
    const b = h("button", { type: "button", class: "quiet" }, c.name);
    b.addEventListener("click", () => { setCollection(c.name); refreshDocuments(); });
    return h("li", { dataset: { name: c.name } }, b, " ",
      h("span", { class: "muted" }, `${c.documents} document(s), ${c.chunks} chunk(s)`));
  }));
  if (!res.collections.length) {
    select.append(h("option", { value: "default" }, "default (empty)"));
  }
  const names = res.collections.map((c) => c.name);
  setCollection(names.includes(want) ? want : (names[0] || "default"));
  return res.collections;
}

function show(name) {
  view = name;
  $("#ask-view").hidden = name !== "ask";
  $("#documents-view").hidden = name !== "documents";
  for (const b of $("#nav").querySelectorAll("button")) {
    if (b.dataset.view === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  if (name === "documents") refreshDocuments();
  else $("#question").focus();
}

function showLogin(message) {
  for (const id of ["#ask-view", "#documents-view", "#nav", "#logout", "#evidence"]) $(id).hidden = true;
  $("#login").hidden = false;
  $("#login-msg").textContent = message || "";
  $("#key").value = "";
  $("#key").focus();
}

async function signedIn() {
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#logout").hidden = false;
  await refreshCollections();
  show(view);
}

async function tryKey(key) {
  setKey(key);
  try {
    await signedIn();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return; // whenUnauthorized showed the prompt
    showError(e);
  }
}

function init() {
  whenUnauthorized((err) => {
    clearKey();
    showLogin(`Signed out: ${err.message}.`);
  });
  $("#login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    clearError();
    const key = $("#key").value.trim();
    if (key) tryKey(key);
  });
  $("#logout").addEventListener("click", () => { clearKey(); showLogin("Signed out."); });
  $("#error-close").addEventListener("click", clearError);
  for (const b of $("#nav").querySelectorAll("button")) b.addEventListener("click", () => show(b.dataset.view));
  $("#collection").addEventListener("change", () => setCollection(getCollection()));
  initEvidence();
  initAsk(getCollection);
  initDocuments({ getCollection, setCollection, refreshCollections });
  const key = getKey();
  if (key) tryKey(key);
  else showLogin();
}

init();
