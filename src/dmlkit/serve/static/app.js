// dmlkit serve: the page's behaviour (no libraries; every request goes to the dmlkit server).
"use strict";

const state = { page: 0, pages: 1, label: "", order: "index", summary: null };
const $ = (id) => document.getElementById(id);
const pct = (v) => (v === null || v === undefined ? "n/a" : (100 * v).toFixed(1) + "%");

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children || []) node.appendChild(child);
  return node;
}

async function loadSummary() {
  const s = await api("/api/summary");
  state.summary = s;
  $("title").textContent = `${s.method} on ${s.dataset}`;
  $("subtitle").textContent = `run ${s.run} · ${s.split} split, ${s.num_items} items` +
    (s.separate_gallery ? ` against a gallery of ${s.num_gallery}` : "") + ` · ${s.backend} kNN`;
  $("score-name").textContent = s.score_name;
  for (const c of s.classes) {
    $("class-filter").appendChild(el("option", { value: c.label, text: `${c.class_name} (${c.count})` }));
  }
  renderMetrics(s);
}

function renderMetrics(s) {
  const keys = Object.keys(s.test).filter((k) => typeof s.test[k] === "number" && k !== "num_lone_queries");
  if (keys.length) {
    const head = el("tr", {}, keys.map((k) => el("th", { text: k })));
    const row = el("tr", {}, keys.map((k) => el("td", { text: (100 * s.test[k]).toFixed(2) })));
    $("metrics-table").replaceChildren(el("table", { id: "metrics-values" }, [head, row]));
  } else {
    $("metrics-table").textContent = "no metrics.json in this run";
  }
  $("page-means").textContent = `This page's ${s.split} split: mean R@1 ${pct(s.page_means["recall@1"])}, ` +
    `mean AP (MAP@R) ${pct(s.page_means["map@r"])}.`;
  const links = [];
  if (s.report) links.push(el("a", { href: "/files/report.md", text: "report.md" }));
  links.push(el("a", { href: "/files/metrics.json", text: "metrics.json" }));
  links.push(el("a", { href: "/files/config.yaml", text: "config.yaml" }));
  $("links").replaceChildren(...links.flatMap((a) => [a, document.createTextNode(" ")]));
  $("pictures").replaceChildren(...s.pictures.map((p) => el("figure", {}, [
    el("img", { src: "/files/" + p, alt: p, loading: "lazy" }), el("figcaption", { text: p })])));
}

async function loadGrid() {
  const params = new URLSearchParams({ page: state.page, per_page: 60, order: state.order });
  if (state.label !== "") params.set("label", state.label);
  const data = await api("/api/items?" + params);
  state.page = data.page;
  state.pages = data.pages;
  $("page-label").textContent = `page ${data.page + 1} of ${data.pages} (${data.total} items)`;
  $("grid").replaceChildren(...data.items.map((item) => {
    const tile = el("button", { class: "tile", "data-index": item.index, title: `item ${item.index}` }, [
      el("img", { src: `/thumb/q/${item.index}.png`, alt: item.class_name }),
      el("div", { class: "class-name", text: item.class_name }),
      el("div", { class: "meta", text: `AP ${pct(item.ap)}` })]);
    tile.addEventListener("click", () => queryIndex(item.index, tile));
    return tile;
  }));
}

function kValue() {
  return Math.max(1, Math.min(50, parseInt($("k").value, 10) || 8));
}

async function queryIndex(index, tile) {
  document.querySelectorAll(".tile.selected").forEach((t) => t.classList.remove("selected"));
  if (tile) tile.classList.add("selected");
  try {
    showResult(await api(`/api/query?index=${index}&k=${kValue()}`), `/thumb/q/${index}.png`);
  } catch (error) { showError(error.message); }
}

async function queryImage(body, url) {
  try {
    showResult(await api(url, body ? { method: "POST", body: body,
      headers: { "Content-Type": "application/octet-stream" } } : undefined), null);
  } catch (error) { showError(error.message); }
}

function showResult(data, imageUrl) {
  showError("");
  const q = data.query;
  $("result").hidden = false;
  $("query-image").src = imageUrl || q.image;
  $("query-class").textContent = q.index === null ? "your image" : `item ${q.index}: ${q.class_name}`;
  $("query-scores").textContent = q.index === null ? "no class: neighbours are not coloured" :
    `R@1 ${pct(q["recall@1"])} · AP ${pct(q.ap)} (${q.num_relevant} others of its class)`;
  $("score-name").textContent = data.score_name;
  $("neighbours").replaceChildren(...data.neighbours.map((n, rank) => {
    const kind = n.same === undefined ? "" : (n.same ? "same" : "other");
    return el("figure", { class: `neighbour ${kind}`, "data-index": n.index, "data-same": String(n.same),
      "data-class": n.class_name }, [
      el("img", { src: `/thumb/g/${n.index}.png`, alt: n.class_name }),
      el("figcaption", {}, [el("div", { text: `#${rank + 1} ${n.class_name}` }),
        el("div", { class: "score", text: n.score.toFixed(3) })])]);
  }));
}

function switchTab(button) {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === button));
  document.querySelectorAll(".panel").forEach((p) => { p.hidden = p.id !== button.dataset.panel; });
}

function wire() {
  document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => switchTab(t)));
  $("class-filter").addEventListener("change", (e) => { state.label = e.target.value; state.page = 0; loadGrid(); });
  $("order").addEventListener("change", (e) => { state.order = e.target.value; state.page = 0; loadGrid(); });
  $("prev").addEventListener("click", () => { if (state.page > 0) { state.page--; loadGrid(); } });
  $("next").addEventListener("click", () => { if (state.page + 1 < state.pages) { state.page++; loadGrid(); } });
  $("upload").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) queryImage(file, `/api/query-image?k=${kValue()}`);
  });
  $("path-go").addEventListener("click", () =>
    queryImage(null, `/api/query-path?k=${kValue()}&path=${encodeURIComponent($("path").value)}`));
}

wire();
loadSummary().then(loadGrid).then(() => { document.body.dataset.ready = "1"; })
  .catch((error) => showError(error.message));
