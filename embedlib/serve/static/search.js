"use strict";
// The search page: it uses the public JSON API only (GET /v1/collections, POST
// /v1/collections/NAME/search) and renders every text as text (never as HTML).
const $ = (id) => document.getElementById(id);
const KEY = "embedlib-api-key";
// the API beside the page, also when the app is served under a route prefix
const BASE = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
let collections = {};

async function api(path, body) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = {"Content-Type": "application/json"};
    const key = sessionStorage.getItem(KEY);
    if (key) headers["Authorization"] = "Bearer " + key;
    const response = await fetch(BASE + path, body === undefined ? {headers} :
      {method: "POST", headers, body: JSON.stringify(body)});
    if (response.status === 401 && attempt === 0) {
      const given = window.prompt("This server needs its API key (kept for this tab only):");
      if (!given) throw new Error("an API key is needed");
      sessionStorage.setItem(KEY, given);
      continue;
    }
    const data = await response.json();
    if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
    return data;
  }
  throw new Error("the API key was refused");
}

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function parseFilter(text) {
  const filter = {};
  for (const part of text.trim().split(/\s+/).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at < 1) throw new Error(`filter ${part}: write column=value`);
    const values = part.slice(at + 1).split("|").map(v => (v !== "" && !isNaN(Number(v)) ? Number(v) : v));
    filter[part.slice(0, at)] = values.length === 1 ? values[0] : {"in": values};
  }
  return filter;
}

function terms(query) {
  return [...new Set((query.toLowerCase().match(/[\p{L}\p{N}]{3,}/gu) || []))];
}

function highlighted(text, words) {
  // text with the query's words marked, as DOM nodes (no HTML is parsed)
  const out = document.createDocumentFragment();
  if (!words.length) { out.append(text); return out; }
  const escaped = words.map(w => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}])(${escaped.join("|")})`, "giu");  // at word starts
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    out.append(text.slice(last, match.index));
    const mark = document.createElement("mark");
    mark.textContent = match[0];
    out.append(mark);
    last = match.index + match[0].length;
  }
  out.append(text.slice(last));
  return out;
}

function around(text, words, width) {
  // the part of a long text around its first match (the passage in its context)
  if (text.length <= width) return text;
  const lower = text.toLowerCase();
  const hits = words.map(w => lower.indexOf(w)).filter(i => i >= 0);
  const at = hits.length ? Math.min(...hits) : 0;
  const start = Math.max(0, at - Math.floor(width / 3));
  const end = Math.min(text.length, start + width);
  return (start > 0 ? "\u2026" : "") + text.slice(start, end) + (end < text.length ? "\u2026" : "");
}

function render(results, query, collection) {
  const list = $("results");
  list.replaceChildren();
  const words = terms(query);
  results.forEach((hit, n) => {
    const li = document.createElement("li");
    li.className = "hit";
    const head = document.createElement("div");
    head.className = "head";
    const rank = Object.assign(document.createElement("span"), {className: "rank", textContent: `${n + 1}.`});
    const id = Object.assign(document.createElement("span"), {className: "id", textContent: hit.id});
    const score = Object.assign(document.createElement("span"), {className: "score", textContent: hit.score.toFixed(4)});
    head.append(rank, id, score);
    if (hit.passage) {
      head.append(Object.assign(document.createElement("span"), {className: "where",
        textContent: `passage ${hit.passage.chunk + 1}, characters ${hit.passage.start}\u2013${hit.passage.end}`}));
    }
    li.append(head);
    if (hit.thumbnail) {
      // an image collection: the thumbnail made at embed time (the image itself stays on the server)
      li.append(Object.assign(document.createElement("img"), {className: "thumb", alt: hit.id,
        src: `data:image/jpeg;base64,${hit.thumbnail}`}));
    }
    if (hit.text) {
      const text = document.createElement("div");
      text.className = "text";
      text.append(highlighted(around(hit.text, words, 700), words));
      li.append(text);
    }
    if (hit.metadata && Object.keys(hit.metadata).length) {
      const meta = document.createElement("div");
      meta.className = "meta";
      for (const [k, v] of Object.entries(hit.metadata)) {
        meta.append(Object.assign(document.createElement("span"), {textContent: `${k}: ${JSON.stringify(v)}`}));
      }
      li.append(meta);
    }
    const more = document.createElement("div");
    more.className = "more";
    const link = Object.assign(document.createElement("a"), {href: "#", textContent: "more like this"});
    link.addEventListener("click", (e) => { e.preventDefault(); run({collection, positive: hit.id}); });
    more.append(link);
    li.append(more);
    list.append(li);
  });
}

function bodyFor(state, info) {
  const body = {k: Math.max(1, Math.min(100, Number(state.k) || 10)),
    include: info && info.modality === "image" ? ["metadata", "thumbnail"] : ["text", "metadata"]};
  if (state.positive) {
    body.positive = [state.positive];
  } else if (info && !info.text_model) {
    // a collection without a text model (word vectors): words are items, -word subtracts
    const items = state.q.split(/\s+/).filter(Boolean);
    body.positive = items.filter(w => !w.startsWith("-")).map(w => w.replace(/^\+/, ""));
    body.negative = items.filter(w => w.startsWith("-")).map(w => w.slice(1));
  } else {
    body.query = state.q;
  }
  if (state.mode && !state.positive && info && info.text_model) body.mode = state.mode;
  if (state.filter) body.filter = parseFilter(state.filter);
  if (info && info.chunked) body.passages = 1;
  return body;
}

function readForm() {
  return {collection: $("collection").value, q: $("q").value.trim(), mode: $("mode").value,
          filter: $("filter").value.trim(), k: $("k").value};
}

function showModes(name) {
  const info = collections[name];
  const mode = $("mode");
  const chosen = mode.value;
  mode.replaceChildren(new Option("default mode", ""));
  for (const m of (info && info.text_model ? info.modes : [])) mode.append(new Option(m, m));
  mode.value = [...mode.options].some(o => o.value === chosen) ? chosen : "";
}

async function run(overrides) {
  const state = {...readForm(), ...(overrides || {})};
  if (!state.q && !state.positive) { say("type a query"); return; }
  const info = collections[state.collection];
  const params = new URLSearchParams();
  if (state.positive) params.set("like", state.positive); else params.set("q", state.q);
  params.set("collection", state.collection);
  if (state.mode) params.set("mode", state.mode);
  if (state.filter) params.set("filter", state.filter);
  history.replaceState(null, "", "?" + params.toString());
  say("searching\u2026");
  try {
    const path = `v1/collections/${encodeURIComponent(state.collection)}/search`;
    const answer = await api(path, bodyFor(state, info));
    render(answer.results, state.positive ? "" : state.q, state.collection);
    const ms = answer.timing_ms && answer.timing_ms.total;
    say(`${answer.results.length} results from ${state.collection}` +
        (state.positive ? ` like ${state.positive}` : "") + (ms ? ` in ${ms.toFixed(1)} ms` : ""));
  } catch (error) {
    $("results").replaceChildren();
    say(error.message, true);
  }
}

async function start() {
  const params = new URLSearchParams(location.search);
  try {
    const answer = await api("v1/collections");
    for (const c of answer.collections) {
      collections[c.name] = c;
      const label = `${c.name} (${c.ntotal.toLocaleString()} ${c.text_model ? "rows" : "vectors"})`;
      $("collection").append(new Option(label, c.name));
    }
    $("collection").value = params.get("collection") in collections ? params.get("collection") : answer.default;
  } catch (error) {
    say(error.message, true);
    return;
  }
  showModes($("collection").value);
  $("q").value = params.get("q") || "";
  $("filter").value = params.get("filter") || "";
  if (params.get("mode")) $("mode").value = params.get("mode");
  $("collection").addEventListener("change", () => showModes($("collection").value));
  $("form").addEventListener("submit", (e) => { e.preventDefault(); run(); });
  if (params.get("like")) run({positive: params.get("like")});
  else if (params.get("q")) run();
}

start();
