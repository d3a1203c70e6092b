// cbsweep dashboard: draws the overview (/) and a sweep (/sweeps/SWEEP) from the coordinator's
// JSON API and redraws when /api/events says a sweep changed. Plain DOM; text goes in through
// textContent only. Charts: uPlot (served from /assets, embedded in the binary).
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids.flat()) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

// Numbers as `cbsweep status` prints them.
const fixed = (v, d) => (v === null || v === undefined ? "–" : v.toFixed(d));
const pval = (v) => (v === null || v === undefined ? "–" : v < 1e-3 ? v.toExponential(2) : v.toPrecision(3));
function human(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, Math.floor(s));
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}
const count = (sweep, state) => (sweep.counts.find((c) => c.state === state) || { count: 0 }).count;
const STATES = ["pending", "leased", "done", "failed", "cancelled"];

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) {
    location.href = "/login";
    throw new Error("not logged in");
  }
  if (!r.ok) throw new Error(`${url}: ${r.status} ${(await r.text()).trim()}`);
  return r.json();
}

function table(headers, rows, attrs) {
  return el("table", attrs || {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : "" }, h.label || h)))), el("tbody", {}, rows));
}
const num = (field, text) => el("td", { class: "num", "data-field": field }, text);

function sweepSummary(s) {
  const finished = count(s, "done") + count(s, "failed") + count(s, "cancelled");
  const pct = s.total ? (100 * finished) / s.total : 0;
  return el(
    "div",
    { class: "summary" },
    el("span", {}, "state ", el("b", { "data-field": "state" }, s.state)),
    el("span", {}, el("span", { class: "bar" }, el("span", { style: `width:${pct.toFixed(1)}%` })), " ", el("b", { "data-field": "finished" }, finished), ` / ${s.total} trials`),
    STATES.map((st) => el("span", {}, `${st} `, el("b", { "data-field": st }, count(s, st)))),
    el("span", {}, "throughput ", el("b", {}, s.trials_per_minute === null ? "n/a" : `${fixed(s.trials_per_minute, 1)} trials/min`)),
    el("span", {}, "eta ", el("b", {}, human(s.eta_seconds))),
    el("span", {}, `epochs re-trained ${s.epochs_lost}, resumes ${s.resumes}`),
    s.export_error ? el("span", { class: "bad" }, `export failed: ${s.export_error}`) : "",
  );
}

async function overview() {
  $("#where").textContent = "sweeps";
  const [st, training] = await Promise.all([getJSON("/api/status"), getJSON("/api/training")]);
  const rows = st.sweeps.map((s) => {
    const finished = count(s, "done") + count(s, "failed") + count(s, "cancelled");
    return el(
      "tr",
      { "data-sweep": s.sweep },
      el("td", {}, el("a", { href: `/sweeps/${encodeURIComponent(s.sweep)}` }, s.sweep)),
      el("td", { "data-field": "state" }, s.state),
      num("total", s.total),
      STATES.map((x) => num(x, count(s, x))),
      el("td", {}, el("span", { class: "bar" }, el("span", { style: `width:${s.total ? ((100 * finished) / s.total).toFixed(1) : 0}%` }))),
      num("rate", s.trials_per_minute === null ? "n/a" : fixed(s.trials_per_minute, 1)),
      num("eta", human(s.eta_seconds)),
    );
  });
  const byWorker = {};
  for (const t of training) (byWorker[t.worker] = byWorker[t.worker] || []).push(t);
  const workers = st.workers.map((w) =>
    el(
      "tr",
      { "data-worker": w.worker },
      el("td", {}, w.worker),
      el("td", {}, w.hostname),
      el("td", {}, w.device),
      num("leased", w.leased),
      num("seen", `${(w.last_seen_ms_ago / 1000).toFixed(1)}s ago`),
      el("td", {}, (byWorker[w.worker] || []).map((t) => el("div", {}, `${t.sweep}: ${t.cell} (attempt ${t.attempt})`))),
    ),
  );
  $("#main").replaceChildren(
    el("h1", {}, "Sweeps"),
    st.sweeps.length
      ? table(["sweep", "state", { label: "trials", num: 1 }, ...STATES.map((x) => ({ label: x, num: 1 })), "progress", { label: "trials/min", num: 1 }, { label: "eta", num: 1 }], rows, { id: "sweeps" })
      : el("p", { class: "muted" }, "no sweep yet"),
    el("h2", {}, "Workers"),
    workers.length ? table(["worker", "host", "device", { label: "leased", num: 1 }, { label: "last seen", num: 1 }, "training"], workers, { id: "workers" }) : el("p", { class: "muted" }, "no live workers"),
  );
}

const charts = [];
function chart(parent, title, opts, data) {
  const box = el("div", { class: "chart" }, el("h3", {}, title));
  parent.append(box);
  const width = Math.max(280, box.clientWidth - 12);
  charts.push(new uPlot({ width, height: 200, legend: { show: opts.legend || false }, scales: { x: { time: false } }, ...opts }, data, box));
}

const PALETTE = ["#1f5fa8", "#c0392b", "#1f7a3a", "#8e44ad", "#d68910", "#17808a", "#7f8c8d", "#a04000"];

function learningCurves(parent, detail) {
  if (!detail.curves.length) {
    parent.append(el("p", { class: "muted" }, "no finished trial yet"));
    return;
  }
  const grid = el("div", { class: "charts", id: "curves" });
  parent.append(grid);
  for (const c of detail.curves) {
    const hi = c.mean.map((m, i) => (m === null || c.sem[i] === null ? m : m + c.sem[i]));
    const lo = c.mean.map((m, i) => (m === null || c.sem[i] === null ? m : m - c.sem[i]));
    const seeds = c.seeds.map((s) => c.epochs.map((_, i) => (i < s.levels.length ? s.levels[i] : null)));
    const series = [
      { label: "epoch" },
      ...c.seeds.map((s) => ({ label: `seed ${s.seed}`, stroke: "rgba(60,60,60,0.28)", width: 1, points: { show: false } })),
      { label: "mean", stroke: PALETTE[0], width: 2, points: { show: false } },
      { label: "+sem", stroke: "rgba(31,95,168,0.35)", width: 1, points: { show: false } },
      { label: "−sem", stroke: "rgba(31,95,168,0.35)", width: 1, points: { show: false } },
    ];
    const k = c.seeds.length + 2;
    chart(
      grid,
      `${c.short || c.condition} (n=${c.seeds.length})`,
      { series, bands: [{ series: [k, k + 1], fill: "rgba(31,95,168,0.15)" }], axes: [{ label: "epoch" }, { label: "level reached" }] },
      [c.epochs, ...seeds, c.mean, hi, lo],
    );
  }
}

function analyses(parent, detail) {
  const figures = ["ablation", "dimensionality", "timescales"];
  const lines = detail.analyses;
  if (!lines.length) {
    parent.append(el("p", { class: "muted" }, "no analysis results yet"));
    return;
  }
  const grid = el("div", { class: "charts", id: "analyses" });
  parent.append(grid);
  for (const fig of figures) {
    const metrics = [...new Set(lines.filter((l) => l.figure === fig).map((l) => l.metric))];
    for (const metric of metrics) {
      const ls = lines.filter((l) => l.metric === metric);
      const xs = [...new Set(ls.flatMap((l) => l.levels))].sort((a, b) => a - b);
      const ys = ls.map((l) => xs.map((x) => (l.levels.includes(x) ? l.mean[l.levels.indexOf(x)] : null)));
      const series = [{ label: "level" }, ...ls.map((l, i) => ({ label: `${l.short || l.condition} ${l.population}`, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true }))];
      chart(grid, `${fig}: ${metric} (mean across seeds)`, { series, legend: true, axes: [{ label: "level N" }, { label: metric }] }, [xs, ...ys]);
    }
  }
}

async function sweepPage(id) {
  $("#where").textContent = id;
  const [st, detail] = await Promise.all([getJSON(`/api/status?sweep=${encodeURIComponent(id)}`), getJSON(`/api/sweeps/${encodeURIComponent(id)}`)]);
  const s = st.sweeps[0];
  const sem = Object.fromEntries(detail.conditions.map((c) => [c.condition, c]));
  const conditions = s.conditions.map((c) =>
    el(
      "tr",
      { "data-condition": c.condition },
      el("td", { title: c.condition }, (sem[c.condition] || {}).short || c.condition),
      num("total", c.total),
      num("done", c.done),
      num("failed", c.failed),
      num("mean_max_level", fixed(c.mean_max_level, 2)),
      num("sem_max_level", fixed((sem[c.condition] || {}).sem_max_level ?? null, 2)),
    ),
  );
  const trialRows = (ts, withError) =>
    ts.map((t) =>
      el("tr", { "data-trial": t.trial }, el("td", {}, t.short), num("seed", t.seed), el("td", {}, t.state), num("attempt", t.attempt), el("td", {}, t.worker || "–"), withError ? el("td", { class: "error" }, t.error || "") : ""),
    );
  const enough = detail.comparisons.filter((r) => r.n_a >= 2 && r.n_b >= 2);
  const stats = enough.map((r) =>
    el(
      "tr",
      {},
      el("td", {}, r.comparison),
      el("td", {}, `${r.a} vs ${r.b}`),
      el("td", {}, r.measure),
      num("n", `${r.n_a} / ${r.n_b}`),
      num("mean_a", fixed(r.mean_a, 3)),
      num("mean_b", fixed(r.mean_b, 3)),
      num("cohens_d", fixed(r.cohens_d, 3)),
      num("rank_biserial", fixed(r.rank_biserial, 3)),
      num("welch", `${pval(r.welch_p)} (${pval(r.welch_p_holm)})`),
      num("mwu", `${pval(r.mwu_p)} (${pval(r.mwu_p_holm)})`),
    ),
  );
  charts.splice(0).forEach((c) => c.destroy());
  const main = $("#main");
  const curves = el("section", {});
  const analysis = el("section", {});
  main.replaceChildren(
    el("h1", {}, `Sweep ${s.sweep}`),
    sweepSummary(s),
    el("h2", {}, "Conditions"),
    table(["condition", { label: "n", num: 1 }, { label: "done", num: 1 }, { label: "failed", num: 1 }, { label: "max level mean", num: 1 }, { label: "± sem", num: 1 }], conditions, { id: "conditions" }),
    el("h2", {}, "Learning curves (level reached against epoch; mean ± sem, seeds as thin lines)"),
    curves,
    el("h2", {}, "Analyses (against the checkpoint level)"),
    analysis,
    el("h2", {}, `Failed and retried trials (${detail.failed.length})`),
    detail.failed.length ? table(["condition", { label: "seed", num: 1 }, "state", { label: "attempts", num: 1 }, "worker", "error"], trialRows(detail.failed, true), { id: "failed" }) : el("p", { class: "muted" }, "none"),
    el("h2", {}, `Running (${detail.running.length})`),
    detail.running.length ? table(["condition", { label: "seed", num: 1 }, "state", { label: "attempt", num: 1 }, "worker"], trialRows(detail.running, false), { id: "running" }) : el("p", { class: "muted" }, "none"),
    el("h2", {}, "Statistics (two-sided; Holm-corrected p in parentheses)"),
    stats.length
      ? table(["comparison", "a vs b", "measure", { label: "n a / b", num: 1 }, { label: "mean a", num: 1 }, { label: "mean b", num: 1 }, { label: "Cohen d", num: 1 }, { label: "rank-biserial", num: 1 }, { label: "Welch p (Holm)", num: 1 }, { label: "MWU p (Holm)", num: 1 }], stats, { id: "stats" })
      : el("p", { class: "muted", id: "stats-waiting" }, detail.comparisons.length ? "waiting for at least 2 seeds in both groups of a comparison" : "no matched comparison in this sweep"),
  );
  learningCurves(curves, detail);
  analyses(analysis, detail);
}

let updates = 0;
async function refresh(draw) {
  try {
    await draw();
    updates += 1;
    document.body.dataset.updates = String(updates);
    document.body.dataset.updatedAt = new Date().toISOString();
  } catch (e) {
    $("#main").prepend(el("p", { class: "bad" }, String(e.message || e)));
  }
}

function listen(sweep, draw) {
  const live = $("#live");
  const src = new EventSource(sweep ? `/api/events?sweep=${encodeURIComponent(sweep)}` : "/api/events");
  let pending = false;
  src.onopen = () => {
    live.className = "live on";
    live.textContent = "live";
  };
  src.onerror = () => {
    live.className = "live off";
    live.textContent = "reconnecting…";
  };
  src.addEventListener("sweep", () => {
    if (pending) return;
    pending = true;
    refresh(draw).finally(() => (pending = false));
  });
}

function start() {
  if (location.pathname === "/login") {
    if (new URLSearchParams(location.search).has("wrong")) $("#wrong").hidden = false;
    return;
  }
  const m = location.pathname.match(/^\/sweeps\/([^/]+)$/);
  const sweep = m ? decodeURIComponent(m[1]) : null;
  const draw = sweep ? () => sweepPage(sweep) : overview;
  refresh(draw);
  listen(sweep, draw);
}

start();
