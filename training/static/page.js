// The Training page: polls training/data.json and draws every job's table and curves.
// Everything shown comes from the data and is set as text (textContent / setAttribute), never as HTML.
"use strict";

const DATA_URL = "training/data.json";
const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
                 "#ff7f0e", "#393b79", "#637939", "#8c6d31"];
const FIRST = ["train_loss"];
const LAST = ["lr", "seconds", "samples_per_s"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fmt(value) {
  if (typeof value !== "number") return value === null || value === undefined ? "" : String(value);
  if (Number.isInteger(value)) return String(value);
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en-US");
  return String(Number(value.toPrecision(4)));  // 4 significant digits, no trailing zeros
}

function paramText(value) {
  return typeof value === "object" && value !== null ? JSON.stringify(value) : fmt(value);
}

function metricColumns(trials) {
  const keys = new Set();
  for (const t of trials) for (const k of Object.keys(t.metrics || {})) if (k !== "epoch") keys.add(k);
  const middle = [...keys].filter((k) => !FIRST.includes(k) && !LAST.includes(k)).sort();
  return [...FIRST.filter((k) => keys.has(k)), ...middle, ...LAST.filter((k) => keys.has(k))];
}

function paramColumns(job) {
  const keys = new Set();
  for (const t of job.trials) for (const k of Object.keys(t.params || {})) keys.add(k);
  if (job.type === "sweep") {  // only what varies between trials: the searched hyperparameters
    return [...keys].filter((k) => new Set(job.trials.map((t) => paramText((t.params || {})[k]))).size > 1
                                   || job.trials.length === 1).sort();
  }
  return [...keys].sort();
}

function summary(job) {
  const counts = Object.entries(job.counts).map(([state, n]) => `${n} ${state}`).join(", ");
  const unit = job.type === "ddp" ? "ranks" : "trials";
  const parts = [`${job.total ?? job.trials.length} ${unit}: ${counts}`, `metric ${job.metric} (${job.mode})`];
  if (job.hidden) {  // a large sweep: the page gets a bounded selection
    parts.push(`showing ${job.trials.length} (running, best, latest finished; curves of the best 20), `
               + `${job.hidden} more in the run directory`);
  }
  // The best trial is decided on the scheduler, by the same rule as the sweep: its best epoch's value.
  const best = job.trials.find((t) => t.number === job.best);
  if (best && typeof job.best_value === "number") {
    const at = best.best_epoch ? ` (epoch ${best.best_epoch})` : "";
    parts.push(job.type === "ddp" ? `best ${fmt(job.best_value)}${at}`
                                  : `best trial ${best.number}: ${fmt(job.best_value)}${at}`);
  }
  if (job.restarts && job.restarts.length) {
    const last = job.restarts[job.restarts.length - 1];
    parts.push(`restarted ${job.restarts.length}× (last from epoch ${last.epoch} on ${last.world_size} ranks: `
               + `${last.reason})`);
  }
  if (job.workload) parts.push(`workload ${job.workload}`);
  parts.push(`started ${new Date(job.started * 1000).toLocaleTimeString()}`);
  return parts.join(" · ");
}

function chart(job) {
  const W = 520, H = 260, L = 56, R = 12, T = 12, B = 34;
  const lines = job.trials.filter((t) => t.curve.length);
  const root = svg("svg", {class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
                           "aria-label": `${job.metric} by epoch`});
  const points = lines.flatMap((t) => t.curve);
  if (!points.length) {
    root.append(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "curves appear after the first epoch"));
    return root;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs, 1), x1 = Math.max(...xs, job.epochs || 1, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-12) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => T + (y1 - y) / (y1 - y0) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    root.append(svg("line", {class: "grid", x1: L, x2: W - R, y1: sy(y), y2: sy(y)}));
    root.append(svg("text", {x: L - 4, y: sy(y) + 4, "text-anchor": "end"}, fmt(y)));
  }
  const step = Math.max(1, Math.ceil((x1 - x0) / 10));
  for (let x = Math.ceil(x0); x <= x1; x += step) {
    root.append(svg("text", {x: sx(x), y: H - B + 14, "text-anchor": "middle"}, x));
  }
  root.append(svg("line", {class: "axis", x1: L, x2: L, y1: T, y2: H - B}));
  root.append(svg("line", {class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B}));
  root.append(svg("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle"}, "epoch"));
  root.append(svg("text", {x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
                           transform: `rotate(-90 12 ${(T + H - B) / 2})`}, job.metric));
  const ordered = [...lines.filter((t) => t.number !== job.best), ...lines.filter((t) => t.number === job.best)];
  for (const t of ordered) {
    const best = t.number === job.best;
    const line = svg("polyline", {points: t.curve.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "),
                                  stroke: PALETTE[Math.abs(t.number) % PALETTE.length], class: best ? "best" : "",
                                  "data-trial": t.number});
    line.append(svg("title", {}, `${job.type === "ddp" ? "rank" : "trial"} ${t.number}${best ? " (best)" : ""}: `
                                  + `${job.metric} ${fmt(t.curve[t.curve.length - 1][1])} at epoch `
                                  + `${t.curve[t.curve.length - 1][0]}`));
    root.append(line);
  }
  return root;
}

function table(job) {
  const params = paramColumns(job), metrics = metricColumns(job.trials);
  const unit = job.type === "ddp" ? "rank" : "trial";
  const head = el("tr", {}, el("th", {}, unit), el("th", {class: "text"}, "state"), el("th", {class: "text"}, "worker"),
                  ...params.map((p) => el("th", {class: "text"}, p)), el("th", {}, "epoch"),
                  // A metric named like a hyperparameter (lr under a schedule) is its value this epoch.
                  ...metrics.map((m) => el("th", {}, params.includes(m) ? `${m} now` : m)),
                  el("th", {class: "text"}, "error"));
  const rows = job.trials.map((t) => {
    const worker = t.worker_name && t.worker_name !== t.worker ? `${t.worker_name} (${t.worker})` : (t.worker || "");
    const epoch = t.epoch === null || t.epoch === undefined ? "" : `${t.epoch}${job.epochs ? "/" + job.epochs : ""}`;
    return el("tr", {class: `trial${t.number === job.best ? " best" : ""}`, "data-trial": t.number},
              el("td", {}, t.number), el("td", {class: `text state-${t.state.replace(/\W+/g, "-")}`}, t.state),
              el("td", {class: "text"}, worker), ...params.map((p) => el("td", {class: "text"}, paramText((t.params || {})[p]))),
              el("td", {}, epoch), ...metrics.map((m) => el("td", {}, fmt((t.metrics || {})[m]))),
              el("td", {class: "error"}, t.error || ""));
  });
  return el("div", {class: "tablebox"}, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function jobSection(job) {
  const kind = job.type === "ddp" ? "DDP job" : "sweep";
  return el("section", {class: "job", "data-run": job.run},
            el("h2", {}, `${kind} `, el("span", {class: "name"}, job.name),
               el("span", {class: `badge ${job.state.replace(/\W+/g, "-")}`}, job.state)),
            el("p", {class: "summary"}, summary(job)),
            el("div", {class: "layout"}, chart(job), table(job)));
}

function render(data) {
  const main = document.getElementById("jobs");
  if (!data.jobs.length) return;
  main.replaceChildren(...data.jobs.map(jobSection));
}

function setStatus(text, down) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = down ? "down" : "";
}

let lastVersion = null;

async function poll() {
  try {
    const response = await fetch(DATA_URL, {cache: "no-cache"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const data = await response.json();
    if (data.version !== lastVersion) render(data);
    lastVersion = data.version;
    setStatus(`Live · updated ${new Date().toLocaleTimeString()}`, false);
  } catch (error) {
    setStatus(`Cannot reach the scheduler (${error.message}); retrying every ${POLL_MS / 1000} s`, true);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
