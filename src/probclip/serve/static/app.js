// probclip search page: plain JavaScript, no build step. Talks to the service's JSON API on the same origin.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { index: null, text: null, item: null, file: null, score: null, k: 24, uq: 100, dedup: true };
let indices = [];
// The scores and the option defaults come from the service (GET /search/options); these stand in until it answers.
let searchOptions = { scores: ["csd"], defaults: { score: "csd" } };
let requestSeq = 0;

function fmt(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-4 || a >= 1e6) ? x.toExponential(digits - 1) : String(Number(x.toPrecision(digits)));
}

function showError(message) {
  const el = $("error");
  el.textContent = message || "";
  el.hidden = !message;
}

// ---------------------------------------------------------------- URL <-> state
function stateToURL(push) {
  const p = new URLSearchParams();
  if (state.index) p.set("index", state.index);
  if (state.text) p.set("q", state.text);
  if (state.item) p.set("item", `${state.item.index}:${state.item.row_id}`);
  if (state.score !== searchOptions.defaults.score) p.set("score", state.score);
  if (state.k !== 24) p.set("k", String(state.k));
  if (state.uq < 100) p.set("uq", String(state.uq));
  if (!state.dedup) p.set("dedup", "0");
  const url = `${location.pathname}${p.toString() ? "?" + p.toString() : ""}`;
  if (url !== location.pathname + location.search) (push ? history.pushState : history.replaceState).call(history, null, "", url);
}

function stateFromURL() {
  const p = new URLSearchParams(location.search);
  state.index = p.get("index") || state.index;
  state.text = p.get("q");
  state.item = null;
  const item = p.get("item");
  if (item && item.lastIndexOf(":") > 0) {
    const cut = item.lastIndexOf(":");
    state.item = { index: item.slice(0, cut), row_id: Number(item.slice(cut + 1)) };
  }
  state.file = null;
  state.score = searchOptions.scores.includes(p.get("score")) ? p.get("score") : searchOptions.defaults.score;
  state.k = Number(p.get("k")) || 24;
  state.uq = Math.min(100, Math.max(5, Number(p.get("uq")) || 100));
  state.dedup = p.get("dedup") !== "0";
  syncControls();
}

function syncControls() {
  if (state.index) $("index").value = state.index;
  $("q").value = state.text || "";
  const kSelect = $("k");
  if (![...kSelect.options].some((o) => Number(o.value) === state.k)) kSelect.add(new Option(String(state.k)));
  kSelect.value = String(state.k);
  $("uq").value = String(state.uq);
  $("uq-out").textContent = String(state.uq);
  $("dedup").checked = state.dedup;
  document.querySelectorAll(".score").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.score === state.score)));
}

// ---------------------------------------------------------------- requests
async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error((body && body.detail) || `HTTP ${response.status}`);
  return body;
}

function hasQuery() { return Boolean(state.text || state.item || state.file); }

async function runSearch(push = true) {
  if (!hasQuery()) return;
  stateToURL(push);
  const seq = ++requestSeq;
  const options = { k: state.k, score: state.score, index: state.index, deduplicate: state.dedup };
  if (state.uq < 100) options.uncertainty_quantile = state.uq / 100;
  let init;
  if (state.file) {
    const form = new FormData();
    form.append("image", state.file);
    for (const [key, value] of Object.entries(options)) form.append(key, String(value));
    init = { method: "POST", body: form };
  } else {
    const body = { ...options };
    if (state.text) body.text = state.text; else body.item = state.item;
    init = { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  }
  $("status").textContent = "searching…";
  showError("");
  showPreview();
  try {
    const data = await api("/search", init);
    if (seq === requestSeq) { render(data); lastAnswer = { data, init }; setExportable(true); }
  } catch (err) {
    if (seq === requestSeq) { showError(err.message); $("status").textContent = ""; setExportable(false); }
  }
}

// ---------------------------------------------------------------- rendering
function describeQuery(q) {
  if (q.kind === "text") return `“${q.text}”`;
  if (q.kind === "item") return `item ${q.row_id} of ${q.index}`;
  if (q.kind === "image") return `uploaded image (${q.width}×${q.height})`;
  return "embedding";
}

const SCORE_NAMES = { csd: "similar (CSD)", mean: "cosine", includes: "more specific", included: "more general" };
// What each card's number is, shown when the pointer rests on it.
const SCORE_HELP = {
  csd: "closed-form sampled distance between the query and this item (squared distance of the means plus both " +
       "uncertainties): lower is closer",
  mean: "cosine of the query's and this item's means, ignoring uncertainty: higher is closer",
  includes: "inclusion test: how well this item fits inside the query; it is listed because the test holds in " +
            "that direction (it is more specific than the query)",
  included: "inclusion test: how well the query fits inside this item; it is listed because the test holds in " +
            "that direction (it is more general than the query)",
};
const SCORE_SHORT = { csd: "CSD", mean: "cosine", includes: "inclusion", included: "inclusion" };
// Where the collection's hierarchy head ranked (data.ranked_by), each card shows the head's probability P instead.
const HEAD_HELP = {
  includes: "hierarchy head: the probability that this item is more specific than the query (included in it), " +
            "from weights fitted on known hierarchies; the nearest specialisations are listed first",
  included: "hierarchy head: the probability that this item is more general than the query (the query is " +
            "included in it), from weights fitted on known hierarchies",
};

function render(data) {
  const status = $("status");
  status.textContent = "";
  const lead = document.createElement("span");
  const quality = data.exact ? "exact ranking" : "approximate ranking: may miss items";
  const byHead = data.ranked_by === "hierarchy head" ? " by the hierarchy head" : "";
  lead.textContent = `${data.results.length} results for ${describeQuery(data.query)} · ${SCORE_NAMES[data.score]}${byHead} · `;
  const q = document.createElement("span");
  q.textContent = quality;
  if (!data.exact) q.className = "approx";
  const tail = document.createElement("span");
  const qu = data.query.uncertainty !== undefined ? ` · query u ${fmt(data.query.uncertainty)}` : "";
  const filter = state.uq < 100 ? ` · uncertainty filter: only the ${state.uq}% most certain items` : "";
  tail.textContent = ` · ${data.took_ms.toFixed(1)} ms${qu}${filter}`;
  status.append(lead, q, tail);

  const grid = $("results");
  grid.replaceChildren();
  if (!data.results.length && data.empty_reason) {
    const why = document.createElement("p");
    why.id = "empty-reason";
    why.className = "empty";
    why.textContent = data.empty_reason;
    grid.append(why);
  }
  const template = $("card-template");
  for (const hit of data.results) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.rowId = String(hit.row_id);
    const caption = hit.metadata.caption ?? hit.metadata.text ?? "";
    if (hit.image_url) {
      const img = document.createElement("img");
      img.src = hit.image_url;
      img.alt = caption || `image ${hit.row_id}`;
      img.loading = "lazy";
      card.querySelector(".visual").append(img);
    }
    card.querySelector(".caption").textContent = caption;
    const value = card.querySelector(".scoreval");
    if (hit.probability !== null && hit.probability !== undefined) {
      value.textContent = `P ${fmt(hit.probability, 3)}`;
      value.title = `${HEAD_HELP[data.score] ?? data.score}: P = ${fmt(hit.probability, 3)} (logit ${fmt(hit.score)})`;
    } else {
      value.textContent = `${SCORE_SHORT[data.score] ?? data.score} ${fmt(hit.score)}`;
      value.title = SCORE_HELP[data.score] ?? data.score;
    }
    card.querySelector(".rowid").textContent = `#${hit.row_id}`;
    const pct = hit.uncertainty_percentile === null ? null : Math.round(hit.uncertainty_percentile * 100);
    const bar = card.querySelector(".ubar");
    const fill = card.querySelector(".ufill");
    fill.style.width = `${pct === null ? 0 : Math.max(2, pct)}%`;
    if (pct !== null && pct >= 66) fill.classList.add("high"); else if (pct !== null && pct >= 33) fill.classList.add("mid");
    bar.setAttribute("aria-valuenow", String(pct ?? 0));
    bar.title = pct === null ? `u = ${fmt(hit.uncertainty)}` : `u = ${fmt(hit.uncertainty)}: more uncertain than ${pct}% of the index`;
    const ulabel = card.querySelector(".ulabel");
    ulabel.textContent = `u ${fmt(hit.uncertainty)}${pct === null ? "" : ` · p${pct} of index`}`;
    ulabel.title = "u: the item's uncertainty (sum of its Gaussian's variances); general captions and unclear " +
                   "images have more" + (pct === null ? "" : `; p${pct}: more uncertain than ${pct}% of the index`);
    const open = () => {
      state.item = { index: data.index, row_id: hit.row_id };
      state.text = null; state.file = null; state.score = searchOptions.defaults.score;
      syncControls();
      runSearch(true);
    };
    card.addEventListener("click", open);
    card.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    grid.append(card);
  }
}

// ---------------------------------------------------------------- wiring
function useFile(file) {
  if (!file) return;
  state.file = file; state.text = null; state.item = null;
  $("q").value = "";
  runSearch(true);
}

async function init() {
  try {
    [indices, searchOptions] = await Promise.all([api("/indices"), api("/search/options")]);
  } catch (err) {
    showError(err.message);
    return;
  }
  const select = $("index");
  for (const info of indices) {
    const kind = info.exact ? "exact" : `approximate (${info.kind})`;
    select.add(new Option(`${info.name} · ${info.rows} ${info.modality}s · ${kind}`, info.name));
  }
  state.index = indices.length ? indices[0].name : null;
  stateFromURL();

  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("q").value.trim();
    if (!text) return;
    state.text = text; state.item = null; state.file = null;
    runSearch(true);
  });
  select.addEventListener("change", () => { state.index = select.value; runSearch(true); });
  $("k").addEventListener("change", () => { state.k = Number($("k").value); runSearch(true); });
  document.querySelectorAll(".score").forEach((button) => button.addEventListener("click", () => {
    state.score = button.dataset.score;
    syncControls();
    runSearch(true);
  }));
  let sliderTimer = null;
  $("uq").addEventListener("input", () => {
    state.uq = Number($("uq").value);
    $("uq-out").textContent = String(state.uq);
    clearTimeout(sliderTimer);
    sliderTimer = setTimeout(() => runSearch(false), 200);
  });
  $("file").addEventListener("change", (e) => useFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    useFile(e.dataTransfer.files[0]);
  });
  $("dedup").addEventListener("change", () => { state.dedup = $("dedup").checked; runSearch(true); });
  $("export-json").addEventListener("click", exportJSON);
  $("export-csv").addEventListener("click", exportCSV);
  window.addEventListener("popstate", () => { stateFromURL(); runSearch(false); });
  if (hasQuery()) runSearch(false);
}

// ---------------------------------------------------------------- query preview and export
let lastAnswer = null;
let previewURL = null;

function showPreview() {
  const figure = $("preview"), img = $("preview-img"), caption = $("preview-caption");
  if (previewURL) { URL.revokeObjectURL(previewURL); previewURL = null; }
  img.hidden = true;
  img.removeAttribute("src");
  caption.textContent = "";
  figure.hidden = !(state.file || state.item);
  if (state.file) {
    previewURL = URL.createObjectURL(state.file);
    img.src = previewURL;
    img.alt = `query image ${state.file.name}`;
    img.hidden = false;
    caption.textContent = `query: ${state.file.name}`;
  } else if (state.item) {
    const { index, row_id: row } = state.item;
    const info = indices.find((i) => i.name === index);
    if (info && info.modality === "image") {
      img.src = `/items/${encodeURI(index)}/${row}/image?size=128`;
      img.alt = `query item ${row} of ${index}`;
      img.hidden = false;
    }
    caption.textContent = `query: item ${row} of ${index}`;
    api(`/items/${encodeURI(index)}/${row}`).then((item) => {
      const text = item.metadata.caption ?? item.metadata.text;
      if (text && state.item && state.item.row_id === row && state.item.index === index) {
        caption.textContent = `query: “${text}” (item ${row} of ${index})`;
      }
    }).catch(() => {});
  }
}

function setExportable(on) {
  $("export-json").disabled = !on;
  $("export-csv").disabled = !on;
  if (!on) lastAnswer = null;
}

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function exportJSON() {
  if (!lastAnswer) return;
  download(new Blob([JSON.stringify(lastAnswer.data, null, 2)], { type: "application/json" }), "probclip-results.json");
}

async function exportCSV() {
  if (!lastAnswer) return;
  try {
    const response = await fetch("/search?format=csv", { credentials: "same-origin", ...lastAnswer.init });
    if (!response.ok) throw new Error(`CSV export failed: HTTP ${response.status}`);
    download(await response.blob(), "probclip-results.csv");
  } catch (err) {
    showError(err.message);
  }
}

document.addEventListener("DOMContentLoaded", init);
