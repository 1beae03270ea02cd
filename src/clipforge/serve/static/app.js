// clipforge page: plain JS, no build step. Search (POST /search, GET /thumb/{id}) and classify (POST /classify);
// on a text search's results, "where?" lays the query's similarity map over the thumbnail (POST /explain).
// A text search lives in the URL (?q=...&k=...&offset=...&f=FILTER&like=ID): shareable, and the back button
// steps through earlier searches. Image queries cannot be put in a URL; they are not shareable.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { image: null, like: null, offset: 0, classifyImage: null, canCaption: false };

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = $("api-key").value || localStorage.getItem("clipforge-api-key") || "";
  if (key) h["X-API-Key"] = key;
  return h;
}

function needsKey(r) {
  // 401: show the key field (in the header, on every tab) where the error points, and put the cursor in it
  if (r.status !== 401) return "";
  $("key-row").hidden = false;
  $("api-key").focus();
  return " Enter the API key at the top of the page.";
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

async function toggleOverlay(hit, text, frame, button) {
  // the map of `text` on this item, drawn over its thumbnail; a second click hides it
  const shown = frame.querySelector("img.overlay");
  if (shown) {
    shown.hidden = !shown.hidden;
    button.classList.toggle("on", !shown.hidden);
    return;
  }
  button.disabled = true;
  try {
    const r = await fetch("/explain", { method: "POST", headers: headers(true),
                                         body: JSON.stringify({ id: hit.id, texts: [text], format: "overlay" }) });
    if (!r.ok) {
      const data = await r.json().catch(() => ({}));
      setStatus(((data.error && data.error.message) || `error ${r.status}`) + needsKey(r), true);
      return;
    }
    const over = document.createElement("img");
    over.className = "overlay";
    over.alt = `where "${text}" matches`;
    over.src = URL.createObjectURL(await r.blob());
    frame.append(over);
    button.classList.add("on");
  } finally {
    button.disabled = false;
  }
}

async function modelCaption(hit, meta, button) {
  button.disabled = true;
  try {
    const r = await fetch("/caption", { method: "POST", headers: headers(true),
                                         body: JSON.stringify({ id: hit.id, method: "greedy" }) });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      setStatus(((data.error && data.error.message) || `error ${r.status}`) + needsKey(r), true);
      return;
    }
    let line = meta.querySelector(".model-caption");
    if (!line) {
      line = document.createElement("div");
      line.className = "model-caption";
      meta.append(line);
    }
    line.textContent = `model: ${data.caption}`;
    button.hidden = true;
  } finally {
    button.disabled = false;
  }
}

function card(hit, text) {
  const div = document.createElement("div");
  div.className = "card";
  div.title = "click: more like this";
  div.dataset.id = hit.id;
  const frame = document.createElement("div");
  frame.className = "frame";
  const img = document.createElement("img");
  img.alt = hit.caption || hit.key || String(hit.id);
  thumbUrl(hit.id).then((u) => { if (u) img.src = u; });
  frame.append(img);
  const meta = document.createElement("div");
  meta.className = "meta";
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = `#${hit.rank + 1}  ${hit.score.toFixed(3)}`;
  if (hit.stage === 2) {
    const st = document.createElement("span");
    st.className = "stage";
    st.textContent = " · reranked";
    st.title = `scored by the second model (first stage: ${hit.stage1_score.toFixed(3)})`;
    score.append(st);
  }
  const key = document.createElement("div");
  key.textContent = hit.key || "";
  const cap = document.createElement("div");
  cap.className = "caption";
  cap.textContent = hit.caption || "";
  meta.append(score, key, cap);
  if (text) {
    const where = document.createElement("button");
    where.type = "button";
    where.className = "where";
    where.textContent = "where?";
    where.title = `show where "${text}" matches in this image`;
    where.addEventListener("click", (e) => { e.stopPropagation(); toggleOverlay(hit, text, frame, where); });
    score.append(where);
  }
  if (state.canCaption) {
    // the index's model can caption (a CoCa): "caption" asks it for this image's caption (POST /caption)
    const ask = document.createElement("button");
    ask.type = "button";
    ask.className = "ask-caption";
    ask.textContent = "caption";
    ask.title = "the model's own caption of this image";
    ask.addEventListener("click", (e) => { e.stopPropagation(); modelCaption(hit, meta, ask); });
    score.append(ask);
  }
  div.append(frame, meta);
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

// ---- the URL: what a text search puts there, and reading it back ----
function searchUrl(body) {
  const p = new URLSearchParams();
  if (body.text) p.set("q", body.text);
  if (body.like !== undefined) p.set("like", String(body.like));
  (body.filters || []).forEach((f) => p.append("f", f));
  if (body.k !== 24) p.set("k", String(body.k));
  if (body.offset) p.set("offset", String(body.offset));
  if (body.dedup !== undefined) p.set("dedup", String(body.dedup));
  const qs = p.toString();
  return location.pathname + (qs ? `?${qs}` : "");
}

function fromUrl() {
  // fill the form from the URL; true when it holds a search to run
  const p = new URLSearchParams(location.search);
  $("query").value = p.get("q") || "";
  $("filters").value = p.getAll("f").join("\n");
  $("k").value = p.get("k") || "24";
  $("dedup").value = p.get("dedup") || "";
  const like = parseInt(p.get("like") || "", 10);
  state.like = Number.isFinite(like) ? like : null;
  const offset = parseInt(p.get("offset") || "0", 10);
  state.offset = Number.isFinite(offset) && offset > 0 ? offset : 0;
  if (p.getAll("f").length) $("options").open = true;
  clearImage();
  return Boolean(p.get("q")) || state.like !== null;
}

function resetResults() {
  $("results").replaceChildren();
  $("pager").hidden = true;
  setStatus("");
}

async function runSearch(history) {
  // history: "push" (a new search: a new URL), "replace", or "none" (replaying the URL: back / forward / load)
  const body = buildBody();
  if (!body.text && !body.image && body.like === undefined) {
    setStatus("Type a query or drop an image.", true);
    return;
  }
  if (!body.image) {
    const url = searchUrl(body);
    if (history === "push" && url !== location.pathname + location.search) window.history.pushState(null, "", url);
    else if (history === "replace") window.history.replaceState(null, "", url);
  } else if (history === "push" && location.search) {
    window.history.pushState(null, "", location.pathname);  // an image query is not in the URL
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
    setStatus(((data.error && data.error.message) || `error ${r.status}`) + needsKey(r), true);
    return;
  }
  const grid = $("results");
  grid.replaceChildren(...data.results.map((hit) => card(hit, body.text)));
  const what = state.like !== null ? `items like #${state.like}` : (body.text || "your image");
  const from = body.offset ? ` from #${body.offset + 1}` : "";
  setStatus(data.results.length ? `${data.results.length} results for ${what}${from} (${data.took_ms.toFixed(1)} ms)`
                                : `No results for ${what}${from}.`);
  // paging only once there is something to page through
  $("pager").hidden = data.results.length < body.k && state.offset === 0;
  $("prev").disabled = state.offset === 0;
  $("next").disabled = data.results.length < body.k;
}

function moreLikeThis(hit) {
  state.like = hit.id;
  state.offset = 0;
  $("query").value = "";
  clearImage();
  runSearch("push");
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
    runSearch("push");
  };
  reader.readAsDataURL(file);
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.like = null;
  state.offset = 0;
  runSearch("push");
});
function dropZone(zone, input, onFile) {
  // a label around a hidden file input: click to choose, or drop a file on it
  input.addEventListener("change", (e) => onFile(e.target.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    onFile(e.dataTransfer.files[0]);
  });
}
dropZone($("drop"), $("image-input"), useFile);
$("clear-image").addEventListener("click", clearImage);
$("prev").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - buildBody().k);
  runSearch("push");
});
$("next").addEventListener("click", () => { state.offset += buildBody().k; runSearch("push"); });
$("api-key").value = localStorage.getItem("clipforge-api-key") || "";
$("key-row").hidden = !$("api-key").value;  // shown once a key is in use, or when the server asks for one
$("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") runSearch("push"); });

// ---- tabs ----
function showTab(name) {
  const classify = name === "classify";
  $("search-panel").hidden = classify;
  $("classify-panel").hidden = !classify;
  $("tab-search").setAttribute("aria-selected", String(!classify));
  $("tab-classify").setAttribute("aria-selected", String(classify));
}
$("tab-search").addEventListener("click", () => { showTab("search"); window.history.pushState(null, "", location.pathname + location.search); });
$("tab-classify").addEventListener("click", () => { showTab("classify"); window.history.pushState(null, "", location.pathname + location.search + "#classify"); });

// ---- classify ----
function setClassifyStatus(text, isError) {
  $("classify-status").textContent = text;
  $("classify-status").className = isError ? "error" : "";
}

function useClassifyFile(file) {
  if (!file || !file.type.startsWith("image/")) {
    setClassifyStatus("That is not an image file.", true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.classifyImage = reader.result;
    const prev = $("cdrop").querySelector("img");
    if (prev) prev.remove();
    const img = document.createElement("img");
    img.src = reader.result;
    $("cdrop").prepend(img);
    $("cdrop-label").textContent = file.name;
    if (labelList().length) runClassify();
  };
  reader.readAsDataURL(file);
}

function labelList() {
  const raw = $("labels").value;
  const parts = raw.includes("\n") ? raw.split("\n") : raw.split(",");
  return parts.map((s) => s.trim()).filter(Boolean);
}

async function runClassify() {
  const labels = labelList();
  if (!state.classifyImage) { setClassifyStatus("Drop an image or click to upload one.", true); return; }
  if (!labels.length) { setClassifyStatus("Type at least one label.", true); return; }
  const body = { image: state.classifyImage, labels };
  if ($("templates").value) body.templates = $("templates").value;
  setClassifyStatus("Classifying…");
  let r;
  try {
    r = await fetch("/classify", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  } catch (e) {
    setClassifyStatus(`Cannot reach the server: ${e}`, true);
    return;
  }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    setClassifyStatus(((data.error && data.error.message) || `error ${r.status}`) + needsKey(r), true);
    return;
  }
  const rows = data.labels.map((label, i) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = label;
    const pct = document.createElement("td");
    pct.className = "prob";
    pct.textContent = `${(100 * data.probabilities[i]).toFixed(1)}%`;
    const cell = document.createElement("td");
    cell.className = "barcell";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, 100 * data.probabilities[i])}%`;
    cell.append(bar);
    tr.append(name, pct, cell);
    return tr;
  });
  $("probs").replaceChildren(...rows);
  setClassifyStatus(`${data.labels.length} labels, ${data.prompts_per_label} prompts each (${data.templates}), ` +
                    `${data.took_ms.toFixed(0)} ms`);
}

$("classify-form").addEventListener("submit", (e) => { e.preventDefault(); runClassify(); });
dropZone($("cdrop"), $("classify-image"), useClassifyFile);

// ---- start: the server's facts, then whatever the URL asks for ----
fetch("/stats", { headers: headers(false) }).then((r) => r.ok ? r.json() : null).then((s) => {
  if (!s) return;
  state.canCaption = Boolean(s.can_caption);
  $("stats").textContent = `${s.count} items · ${s.model} · ${s.index_kind}` + (s.rerank ? " · reranked" : "");
  $("columns").textContent = (s.columns || []).join(", ");
  const sel = $("templates");
  sel.replaceChildren(...(s.template_sets || []).map((name) => {
    const o = document.createElement("option");
    o.value = name;
    o.textContent = name;
    return o;
  }));
  if ((s.template_sets || []).includes("openai_imagenet")) sel.value = "openai_imagenet";
});

window.addEventListener("popstate", () => {
  showTab(location.hash === "#classify" ? "classify" : "search");
  if (fromUrl()) runSearch("none");
  else resetResults();
});
showTab(location.hash === "#classify" ? "classify" : "search");
if (fromUrl()) runSearch("none");
