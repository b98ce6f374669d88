// cirlab search page: plain JS against the JSON API of the same server (no build step, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  ref: null,        // {kind: "upload", file, url, label} or {kind: "id", id, url, label}
  history: [],      // [{ref, text, method, k, body}]
  current: -1,
  galleryTotal: 0,
  galleryLoaded: false,
};

// ---- the token (when the server has one) ------------------------------------------------------
// It travels as a SameSite=Strict cookie, so the browser sends it with the API calls and the <img>
// thumbnails of this page only. It comes from the link (#token=..., never sent to the server in the URL)
// or from the form the page shows when the server answers 401.
function storeToken(token) {
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `cirlab_token=${encodeURIComponent(token)}; path=/; SameSite=Strict${secure}`;
}

function tokenFromLink() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return;
  storeToken(decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

function askForToken() {
  const form = $("token-form");
  form.hidden = false;
  $("token-input").focus();
  form.onsubmit = (event) => {
    event.preventDefault();
    storeToken($("token-input").value.trim());
    form.hidden = true;
    start();
  };
}

async function api(path, options) {
  const res = await fetch(path, options);
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (res.status === 401) askForToken();
  if (!res.ok) {
    let msg = body && body.detail;
    if (Array.isArray(msg)) msg = msg.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    throw new Error(`${res.status}: ${msg || res.statusText}`);
  }
  return body;
}

function showError(message) {
  const el = $("error");
  el.textContent = message || "";
  el.hidden = !message;
}

function el(tag, props, children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const c of children || []) node.append(c);
  return node;
}

// ---- reference -------------------------------------------------------------------------
function setReference(ref) {
  state.ref = ref;
  const img = $("reference-preview");
  img.src = ref.url;
  img.alt = ref.label;
  img.hidden = false;
  $("dropzone-hint").hidden = true;
  $("reference-label").textContent = ref.label;
  $("reference-label").dataset.refId = ref.kind === "id" ? ref.id : "";
  showError("");
}

function useFile(file) {
  if (!file) return;
  setReference({ kind: "upload", file, url: URL.createObjectURL(file), label: `uploaded: ${file.name}` });
  $("text").focus();
}

function setupDropzone() {
  const zone = $("dropzone");
  const input = $("file-input");
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  input.addEventListener("change", () => { useFile(input.files[0]); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
  });
}

// ---- search ------------------------------------------------------------------------------
async function runSearch(event) {
  if (event) event.preventDefault();
  if (!state.ref) { showError("Choose a reference image first (drop one, pick a file, or pick from the gallery)."); return; }
  const text = $("text").value.trim();
  if (!text) { showError("Describe the modification, e.g. \"make it red\"."); return; }
  const form = new FormData();
  form.append("text", text);
  form.append("k", $("k").value);
  form.append("method", $("method").value);
  if (state.ref.kind === "upload") form.append("image", state.ref.file, state.ref.file.name);
  else form.append("reference_id", state.ref.id);
  const button = $("search-btn");
  button.disabled = true;
  showError("");
  try {
    const body = await api("search", { method: "POST", body: form });
    state.history.push({ ref: state.ref, text, method: body.method, k: body.k, body });
    state.current = state.history.length - 1;
    renderResults(body);
    renderHistory();
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
  }
}

function renderResults(body) {
  $("results-title").textContent =
    `Results for “${body.text}” — ${body.method}, ${body.results.length} images, ${body.elapsed_ms.toFixed(1)} ms`;
  const grid = $("results");
  grid.replaceChildren();
  for (const r of body.results) {
    const card = el("button", { type: "button", className: "result", title: `use ${r.id} as the new reference` }, [
      el("img", { src: r.thumbnail, alt: r.id, loading: "lazy" }),
      el("div", { className: "caption" }, [
        el("span", { className: "rank", textContent: `#${r.rank}` }),
        el("span", { className: "score", textContent: r.score.toFixed(3) }),
      ]),
      el("div", { className: "rid", textContent: r.id }),
    ]);
    card.dataset.testid = "result";
    card.dataset.id = r.id;
    card.dataset.score = String(r.score);
    card.addEventListener("click", () => {
      setReference({ kind: "id", id: r.id, url: r.thumbnail, label: `gallery image ${r.id}` });
      $("text").value = "";
      $("text").focus();
    });
    grid.append(card);
  }
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  state.history.forEach((turn, n) => {
    const top = turn.body.results[0];
    const item = el("li", { className: n === state.current ? "current" : "" }, [
      el("div", { className: "turn" }, [
        el("img", { src: turn.ref.url, alt: turn.ref.label, title: turn.ref.label }),
        el("span", { className: "text", textContent: turn.text }),
        top ? el("img", { src: top.thumbnail, alt: top.id, title: `top result ${top.id}` }) : "",
      ]),
      el("div", { className: "meta", textContent: `${turn.method} · ${turn.body.results.length} results` }),
    ]);
    item.dataset.testid = "history-item";
    item.title = "show this turn again";
    item.addEventListener("click", () => {
      state.current = n;
      setReference(turn.ref);
      $("text").value = turn.text;
      $("method").value = turn.method;
      renderResults(turn.body);
      renderHistory();
    });
    list.append(item);
  });
}

// ---- gallery picker -------------------------------------------------------------------------
async function loadGallery() {
  const limit = 12;
  const offset = state.galleryTotal > limit ? Math.floor(Math.random() * (state.galleryTotal - limit)) : 0;
  try {
    const page = await api(`gallery?offset=${offset}&limit=${limit}`);
    state.galleryTotal = page.total;
    const strip = $("gallery-strip");
    strip.replaceChildren();
    for (const item of page.items) {
      const img = el("img", { src: item.thumbnail, alt: item.id, title: item.id });
      img.addEventListener("click", () => {
        setReference({ kind: "id", id: item.id, url: item.thumbnail, label: `gallery image ${item.id}` });
        $("text").focus();
      });
      strip.append(img);
    }
  } catch (e) {
    showError(e.message);
  }
}

// ---- start ---------------------------------------------------------------------------------
function setup() {
  tokenFromLink();
  setupDropzone();
  $("search-form").addEventListener("submit", runSearch);
  $("gallery-picker").addEventListener("toggle", () => {
    if ($("gallery-picker").open && !state.galleryLoaded) { state.galleryLoaded = true; loadGallery(); }
  });
  $("gallery-more").addEventListener("click", loadGallery);
}

async function start() {
  showError("");
  $("method").replaceChildren();
  try {
    const h = await api("health");
    state.galleryTotal = h.images;
    const select = $("method");
    for (const m of h.methods) {
      select.append(el("option", { value: m.spec, textContent: m.spec, title: m.help, selected: m.spec === h.default_method }));
    }
    select.value = h.default_method;
    $("k").max = h.limits.max_k;
    $("k").value = Math.min(h.limits.default_k, h.limits.max_k);
    $("text").maxLength = h.limits.max_text_chars;
    $("status").textContent = `${h.images} images · backbone ${h.backbone} · index ${h.index} · cirlab ${h.version}`;
    document.body.dataset.ready = "1";
  } catch (e) {
    $("status").textContent = e.message.startsWith("401") ? "a token is needed" : "server unreachable";
    showError(e.message);
  }
}

setup();
start();
