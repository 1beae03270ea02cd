// clipforge search page: plain JS, no build step. Talks to POST /search and GET /thumb/{id}.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { image: null, like: null, offset: 0, lastBody: null };

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = $("api-key").value || localStorage.getItem("clipforge-api-key") || "";
  if (key) h["X-API-Key"] = key;
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function thumbUrl(id) {
  // Thumbnails are fetched with the API key header (an <img src> cannot send one), then shown as blobs.
  const r = await fetch(`/thumb/${id}`, { headers: headers(false) });
  if (!r.ok) return null;
  return URL.createObjectURL(await r.blob());
}

function card(hit) {
  const div = document.createElement("div");
  div.className = "card";
  div.title = "click: more like this";
  div.dataset.id = hit.id;
  const img = document.createElement("img");
  img.alt = hit.caption || hit.key || String(hit.id);
  thumbUrl(hit.id).then((u) => { if (u) img.src = u; });
  const meta = document.createElement("div");
  meta.className = "meta";
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = `#${hit.rank + 1}  ${hit.score.toFixed(3)}`;
  const key = document.createElement("div");
  key.textContent = hit.key || "";
  const cap = document.createElement("div");
  cap.className = "caption";
  cap.textContent = hit.caption || "";
  meta.append(score, key, cap);
  div.append(img, meta);
  div.addEventListener("click", () => moreLikeThis(hit));
  return div;
}

function buildBody() {
  const body = { k: parseInt($("k").value || "24", 10), offset: state.offset };
  const text = $("query").value.trim();
  if (text) body.text = text;
  if (state.image) body.image = state.image;
  if (state.like !== null) body.like = state.like;
  const filters = $("filters").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (filters.length) body.filters = filters;
  const dedup = $("dedup").value;
  if (dedup) body.dedup = parseFloat(dedup);
  return body;
}

async function runSearch() {
  const body = buildBody();
  if (!body.text && !body.image && body.like === undefined) {
    setStatus("Type a query or drop an image.", true);
    return;
  }
  if ($("api-key").value) localStorage.setItem("clipforge-api-key", $("api-key").value);
  setStatus("Searching…");
  let r;
  try {
    r = await fetch("/search", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  } catch (e) {
    setStatus(`Cannot reach the server: ${e}`, true);
    return;
  }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    setStatus((data.error && data.error.message) || `error ${r.status}`, true);
    return;
  }
  const grid = $("results");
  grid.replaceChildren(...data.results.map(card));
  const what = state.like !== null ? `items like #${state.like}` : (body.text || "your image");
  setStatus(data.results.length ? `${data.results.length} results for ${what} (${data.took_ms.toFixed(1)} ms)`
                                : `No results for ${what}.`);
  $("pager").hidden = data.results.length === 0 && state.offset === 0;
  $("prev").disabled = state.offset === 0;
  $("next").disabled = data.results.length < body.k;
}

function moreLikeThis(hit) {
  state.like = hit.id;
  state.offset = 0;
  $("query").value = "";
  clearImage();
  runSearch();
}

function clearImage() {
  state.image = null;
  $("drop-label").textContent = "Drop an image or click to upload";
  const prev = $("drop").querySelector("img");
  if (prev) prev.remove();
  $("clear-image").hidden = true;
}

function useFile(file) {
  if (!file || !file.type.startsWith("image/")) {
    setStatus("That is not an image file.", true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.image = reader.result;  // a data: URL; the server accepts it as base64
    state.like = null;
    state.offset = 0;
    const prev = $("drop").querySelector("img");
    if (prev) prev.remove();
    const img = document.createElement("img");
    img.src = reader.result;
    $("drop").prepend(img);
    $("drop-label").textContent = file.name;
    $("clear-image").hidden = false;
    runSearch();
  };
  reader.readAsDataURL(file);
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.like = null;
  state.offset = 0;
  runSearch();
});
$("image-input").addEventListener("change", (e) => useFile(e.target.files[0]));
$("clear-image").addEventListener("click", clearImage);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  useFile(e.dataTransfer.files[0]);
});
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - buildBody().k); runSearch(); });
$("next").addEventListener("click", () => { state.offset += buildBody().k; runSearch(); });
$("api-key").value = localStorage.getItem("clipforge-api-key") || "";

fetch("/stats", { headers: headers(false) }).then((r) => r.ok ? r.json() : null).then((s) => {
  if (s) $("stats").textContent = `${s.count} items · ${s.model} · ${s.index_kind}`;
});
