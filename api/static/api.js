// The REST API as the page uses it: the key (kept in sessionStorage), JSON requests, errors, SSE over fetch
// (EventSource cannot send an Authorization header or a POST body) and uploads with progress (XHR).

const KEY = "ctxqa.key";

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (k) => sessionStorage.setItem(KEY, k);
export const clearKey = () => sessionStorage.removeItem(KEY);

// Called with the error whenever the API answers 401: the page goes back to the key prompt.
let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

function headers(extra = {}) {
  const h = { ...extra };
  const k = getKey();
  if (k) h.Authorization = `Bearer ${k}`;
  return h;
}

async function errorOf(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON: a proxy's page */ }
  const e = body && body.error;
  const err = new ApiError(resp.status, e ? e.code : "http_error",
    e ? e.message : `${resp.status} ${resp.statusText}`, e ? e.field : null);
  if (resp.status === 401) onUnauthorized(err);
  return err;
}

export async function api(path, { method = "GET", json, signal } = {}) {
  const init = { method, headers: headers(json !== undefined ? { "Content-Type": "application/json" } : {}), signal };
  if (json !== undefined) init.body = JSON.stringify(json);
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network", `cannot reach the server (${e.message})`);
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp.status === 204 ? null : resp.json();
}

// A binary resource (a page image) as an object URL; the browser's cache revalidates it with its ETag.
export async function blobUrl(path, { signal } = {}) {
  const resp = await fetch(path, { headers: headers(), signal, cache: "no-cache" });
  if (!resp.ok) throw await errorOf(resp);
  return URL.createObjectURL(await resp.blob());
}

// POST `body` and call onEvent(name, data) for every Server-Sent Event until the stream ends.
export async function stream(path, body, onEvent, { signal } = {}) {
  const resp = await fetch(path, {
    method: "POST", signal,
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!resp.ok) throw await errorOf(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) !== -1) {
      const raw = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of raw.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// Upload files as multipart/form-data; onProgress(fraction) while the bytes go out. Resolves with the JSON body.
export function upload(collection, files, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    form.append("collection", collection);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/documents");
    const k = getKey();
    if (k) xhr.setRequestHeader("Authorization", `Bearer ${k}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.upload.onload = () => onProgress(1);
    xhr.onerror = () => reject(new ApiError(0, "network", "the upload was interrupted"));
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const e = body && body.error;
      const err = new ApiError(xhr.status, e ? e.code : "http_error", e ? e.message : `${xhr.status}`, e && e.field);
      if (xhr.status === 401) onUnauthorized(err);
      reject(err);
    };
    xhr.send(form);
  });
}
