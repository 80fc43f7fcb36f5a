// The analysts' page: submit a video, follow its job, see the verdict and why.
// Plain browser JavaScript, no library and nothing loaded from elsewhere. Every call goes to
// this service with the key the analyst typed (kept for this tab only); text from the
// service is always set as text, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const MODALITY_NAMES = { video: "video (face)", audio: "audio (voice)", av: "audio-visual (lips, sync)" };
const POLL_MS = 1000;

const state = {
  key: sessionStorage.getItem("veracity-key") || "",
  auth: false, model: null, limits: null,
  jobId: null, timer: null, fileUrl: null, report: null, blobs: [],
};

// ------------------------------------------------------------------ the service

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["X-API-Key"] = state.key;
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (err) {
    return { status: 0, ok: false, body: { message: `the service did not answer (${err.message})` } };
  }
  let body = null;
  if ((response.headers.get("content-type") || "").includes("json")) {
    body = await response.json().catch(() => null);
  }
  if (response.status === 401) askForKey("The service refused the key: type a valid one.");
  return { status: response.status, ok: response.ok, body, response };
}

function why(res) {
  const b = res.body || {};
  return b.message || b.error || `HTTP ${res.status}`;
}

async function blobUrl(path) {
  const res = await api(path);
  if (!res.ok) return null;
  const url = URL.createObjectURL(await res.response.blob());
  state.blobs.push(url);
  return url;
}

// ------------------------------------------------------------------ start

function askForKey(message) {
  $("key-panel").hidden = false;
  $("key-msg").textContent = message || "";
  $("key").focus();
}

async function start() {
  const health = await api("/health");
  state.auth = !!(health.body && health.body.auth === "on");
  if (state.auth && !state.key) {
    askForKey("This service needs an API key.");
    $("model").textContent = "Waiting for a key.";
    return;
  }
  await loadModel();
}

async function loadModel() {
  const res = await api("/model");
  if (res.status === 401) return;
  if (!res.ok) {
    $("model").textContent = `Model not ready: ${why(res)}. Trying again…`;
    setTimeout(loadModel, 3000);
    return;
  }
  $("key-panel").hidden = true;
  const m = res.body;
  state.model = m;
  state.limits = m.limits || null;
  const reg = m.registry || {};
  const version = reg.registry_version ? `${reg.model_name || "model"} v${reg.registry_version}` +
    (reg.alias ? ` (${reg.alias})` : "") : "a bundle from a path";
  $("model").textContent = `${version} · bundle ${String(m.bundle_sha256 || "").slice(0, 12)} · ` +
    `${m.members.length} members: ${m.members.map((x) => x.name).join(", ")}`;
  $("card-text").textContent = m.model_card || "";
  $("card-open").disabled = !m.model_card;
  if (state.limits) {
    $("limit").textContent = `Largest upload: ${state.limits.max_upload_mb} MB; longest video a job takes: ` +
      `${Math.round(state.limits.job_max_duration_s / 60)} min.`;
  }
  loadRecent();
  loadMonitoring();
}

async function loadMonitoring() {
  // The summary is shown here; the full Evidently report (inline scripts, which this page's
  // content security policy rightly refuses to run) is downloaded and opened as a file.
  const box = $("monitoring");
  box.replaceChildren();
  const res = await api("/monitoring/summary");
  if (!res.ok) {
    box.textContent = res.status === 404 ? "No drift report yet." : "";
    return;
  }
  const s = res.body || {};
  const when = s.window && s.window.last_time ? `, up to ${String(s.window.last_time).replace("T", " ").slice(0, 16)}` : "";
  const words = s.drift_detected === true ? `Drift found in ${(s.drifted || []).join(", ") || "the rates"}`
    : s.drift_detected === false ? "No drift" : `Drift not judged (${s.why_not_judged || "too few requests"})`;
  box.append(el("span", `${words} (${s.rows || 0} requests${when}). `, { id: "drift-summary" }));
  const get = el("button", "Download the full drift report", { type: "button", class: "link", id: "monitoring-open" });
  get.addEventListener("click", async () => {
    const url = await blobUrl("/monitoring");
    if (!url) return;
    const a = el("a", null, { href: url, download: "veracity-drift-report.html" });
    document.body.append(a);
    a.click();
    a.remove();
  });
  box.append(get);
}

// ------------------------------------------------------------------ submit and follow

function megabytes(n) { return (n / 2 ** 20).toFixed(1); }

async function submit(event) {
  event.preventDefault();
  const msg = $("submit-msg");
  msg.textContent = "";
  const file = $("file").files[0];
  const url = $("url").value.trim();
  if (!file === !url) {
    msg.textContent = file ? "Choose a file or give a link, not both." : "Choose a video file or give a link.";
    return;
  }
  if (file && state.limits && file.size > state.limits.max_upload_mb * 2 ** 20) {
    msg.textContent = `${file.name} is ${megabytes(file.size)} MB, over the ${state.limits.max_upload_mb} MB ` +
      "limit: it was not uploaded.";
    return;
  }
  const form = new FormData();
  if (file) form.append("video", file, file.name);
  else form.append("video_url", url);
  form.append("explain", $("explain").checked ? "true" : "false");
  $("submit").disabled = true;
  const res = await api("/jobs", { method: "POST", body: form });
  $("submit").disabled = false;
  if (res.status !== 202) {
    msg.textContent = `Not accepted: ${why(res)}`;
    return;
  }
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  state.fileUrl = file ? URL.createObjectURL(file) : null;
  follow(res.body.job_id, file ? file.name : url, !!file);
  loadRecent();
}

function follow(jobId, name, local) {
  clearTimeout(state.timer);
  state.jobId = jobId;
  $("job").hidden = false;
  $("result").hidden = true;
  $("job-name").textContent = name;
  $("cancel").hidden = false;
  const tick = async () => {
    if (state.jobId !== jobId) return;
    const res = await api(`/jobs/${jobId}`);
    if (!res.ok) {
      $("job-state").textContent = `cannot read the job: ${why(res)}`;
      state.timer = setTimeout(tick, 3 * POLL_MS);
      return;
    }
    const job = res.body;
    $("job-state").textContent = job.state;
    $("job-state").dataset.state = job.state;
    const progress = job.progress || {};
    $("job-progress").value = job.state === "done" ? 1 : progress.fraction || 0;
    $("job-phase").textContent = job.state === "running" ? `${progress.phase || "starting"}` +
      `${job.cancel_requested ? " (cancelling)" : ""}` : job.state === "queued" ? "waiting for a worker" : "";
    if (job.state === "done") {
      $("cancel").hidden = true;
      render(job.result, local);
      loadRecent();
    } else if (job.state === "failed" || job.state === "cancelled") {
      $("cancel").hidden = true;
      $("job-phase").textContent = job.state === "failed" ? `failed: ${job.message || job.error}` : "cancelled";
      loadRecent();
    } else {
      state.timer = setTimeout(tick, POLL_MS);
    }
  };
  tick();
}

async function cancel() {
  if (!state.jobId) return;
  const res = await api(`/jobs/${state.jobId}`, { method: "DELETE" });
  $("job-phase").textContent = res.ok ? "cancel requested" : `cannot cancel: ${why(res)}`;
}

// ------------------------------------------------------------------ the report

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function fmt(p, digits = 3) { return p === null || p === undefined ? "–" : Number(p).toFixed(digits); }

function render(report, local) {
  state.report = report;
  state.blobs.forEach((u) => URL.revokeObjectURL(u));
  state.blobs = [];
  const r = report;
  $("result").hidden = false;
  const verdict = $("verdict");
  verdict.textContent = r.verdict;
  verdict.className = `verdict ${r.verdict}`;
  $("probability").textContent = r.probability === null || r.probability === undefined
    ? "no probability: the file was not judged"
    : `calibrated probability of manipulation ${fmt(r.probability)}`;
  $("message").textContent = r.message || "";
  const th = r.thresholds || {};
  $("thresholds").textContent = th.fake_at === undefined ? "" :
    `Called FAKE at or above ${fmt(th.fake_at)}, REAL below ${fmt(th.real_below)}, UNCERTAIN in between` +
    ` (the FAKE cut set on authentic clips of new people, the band on validation clips${(r.judged || []).length ? `; judged on ${r.judged.join(", ")}` : ""}).`;
  const reasons = $("reasons");
  reasons.replaceChildren();
  const items = [];
  if (r.verdict === "ABSTAIN") items.push(`Not judged, reason: ${r.reason} (${r.message})`);
  if (r.reason && r.verdict === "UNCERTAIN") items.push(`Uncertain because: ${r.reason}`);
  for (const text of (r.ood && r.ood.reasons) || []) items.push(`Outside what the model was validated on: ${text}`);
  for (const [name, text] of Object.entries(r.failed_members || {})) items.push(`${name} gave no answer: ${text}`);
  if (items.length) {
    const ul = el("ul", null, { class: "reasons", id: "reason-list" });
    items.forEach((t) => ul.append(el("li", t)));
    reasons.append(ul);
  }
  const player = $("player");
  if (local && state.fileUrl) {
    player.src = state.fileUrl;
    player.hidden = false;
    $("no-player").hidden = true;
  } else {
    player.removeAttribute("src");
    player.hidden = true;
    $("no-player").hidden = !r.timeline || !r.timeline.length;
  }
  const persons = r.persons || [];
  const nav = $("persons-nav");
  nav.replaceChildren();
  nav.hidden = persons.length < 2;
  const chosen = Math.max(0, persons.findIndex((p) => p.track === r.person));
  persons.forEach((p, i) => {
    const b = el("button", `Person ${i + 1}: ${p.verdict}`, { type: "button", role: "tab", id: `person-tab-${i}`,
      "aria-selected": String(i === chosen) });
    b.addEventListener("click", () => {
      nav.querySelectorAll("button").forEach((x) => x.setAttribute("aria-selected", "false"));
      b.setAttribute("aria-selected", "true");
      showPerson(p, i);
    });
    nav.append(b);
  });
  if (persons.length) showPerson(persons[chosen], chosen);
  else $("person").replaceChildren();
  verdict.focus();
}

function showPerson(p, index) {
  const r = state.report;
  const box = $("person");
  box.replaceChildren();
  const best = p.track === r.person;
  const title = (state.report.persons || []).length > 1
    ? `Person ${index + 1} (face track ${p.track})${best ? ", the one the call is about" : ""}`
    : "Why";
  box.append(el("h2", title));
  if ((r.persons || []).length > 1) {
    box.append(el("p", `${p.verdict}${p.probability !== null ? `, probability ${fmt(p.probability)}` : ""}` +
      `${p.reason ? ` (${p.reason})` : ""}`, { class: "hint" }));
  }
  const audio = best && r.explanations ? r.explanations.audio_segments || [] : [];
  box.append(chart(p, r, audio));
  if (audio.length) {
    box.append(el("p", "Audio anomalies (the voice alone reaches the FAKE threshold): " +
      audio.map((s) => `${fmt(s.start_s, 1)}–${fmt(s.end_s, 1)} s (up to ${fmt(s.max_prob, 2)})`).join(", "),
    { id: "audio-segments" }));
  }
  box.append(gallery(p, r, best));
  box.append(membersTable(p));
}

function chart(p, r, audio) {
  const wrap = el("div", null, { class: "chart", id: "timeline" });
  const scores = p.window_scores || [];
  const end = Math.max(r.media && r.media.duration_s ? r.media.duration_s : 0,
    ...scores.map((w) => w.end_s), ...(p.timeline || []).map((s) => s.end_s), 0.1);
  const W = 800, H = 220, L = 36, R = 8, T = 8, B = 28;
  const x = (t) => L + (W - L - R) * (t / end);
  const y = (v) => T + (H - T - B) * (1 - v);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  const suspicious = (p.timeline || []).filter((s) => s.verdict === "FAKE");
  svg.setAttribute("aria-label", `Scores over ${fmt(end, 1)} s; ` + (suspicious.length
    ? `suspicious: ${suspicious.map((s) => `${fmt(s.start_s, 1)}–${fmt(s.end_s, 1)} s`).join(", ")}`
    : "no segment reaches the FAKE threshold"));
  const add = (tag, attrs, tip) => {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (tip) { const t = document.createElementNS(SVG, "title"); t.textContent = tip; n.append(t); }
    svg.append(n);
    return n;
  };
  for (const s of p.timeline || []) {
    if (s.verdict !== "FAKE" && s.verdict !== "UNCERTAIN") continue;
    add("rect", { x: x(s.start_s), y: T, width: Math.max(1, x(s.end_s) - x(s.start_s)), height: H - T - B,
      class: `segment ${s.verdict}` }, `${s.verdict} ${fmt(s.start_s, 2)}–${fmt(s.end_s, 2)} s, up to ${fmt(s.probability)}`);
  }
  for (const s of audio) {
    add("rect", { x: x(s.start_s), y: H - B - 6, width: Math.max(1, x(s.end_s) - x(s.start_s)), height: 6,
      class: "audio-segment" }, `audio anomaly ${fmt(s.start_s, 2)}–${fmt(s.end_s, 2)} s`);
  }
  const th = r.thresholds || {};
  for (const [v, name] of [[th.fake_at, "FAKE at"], [th.real_below, "REAL below"]]) {
    if (v === undefined) continue;
    add("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "threshold" },
      `${name} ${fmt(v)}`);
  }
  add("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" });
  add("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" });
  for (const v of [0, 0.5, 1]) add("text", { x: 4, y: y(v) + 4 }).textContent = v.toFixed(1);
  const step = end > 20 ? 5 : end > 6 ? 2 : end > 2 ? 0.5 : 0.25;
  for (let t = 0; t <= end + 1e-9; t += step) add("text", { x: x(t) - 6, y: H - 8 }).textContent = `${+t.toFixed(2)}s`;
  const centre = (w) => (w.start_s + w.end_s) / 2;
  const mods = scores.length ? Object.keys(scores[0].modalities || {}) : [];
  const legend = el("div", null, { class: "legend" });
  for (const m of mods) {
    const pts = scores.filter((w) => w.modalities[m] !== null && w.modalities[m] !== undefined)
      .map((w) => `${x(centre(w))},${y(w.modalities[m])}`).join(" ");
    add("polyline", { points: pts, class: `line modality-${m}` }, MODALITY_NAMES[m] || m);
    legend.append(el("span", MODALITY_NAMES[m] || m, { class: `modality-${m}` }));
  }
  if (scores.length) {
    add("polyline", { points: scores.map((w) => `${x(centre(w))},${y(w.probability)}`).join(" "),
      class: "line fused" }, "fused probability");
    legend.append(el("span", "fused", { class: "fused" }));
  }
  wrap.append(el("h3", "Timeline"), legend, svg);
  const details = el("details");
  details.append(el("summary", "Timeline as a table"));
  const table = el("table");
  table.append(row(["from (s)", "to (s)", "call", "highest probability"], "th"));
  for (const s of p.timeline || []) table.append(row([fmt(s.start_s, 2), fmt(s.end_s, 2), s.verdict, fmt(s.probability)]));
  details.append(table);
  wrap.append(details);
  return wrap;
}

function row(cells, tag = "td") {
  const tr = el("tr");
  cells.forEach((c) => tr.append(el(tag, c)));
  return tr;
}

function gallery(p, r, best) {
  const wrap = el("div");
  wrap.append(el("h3", "Most suspicious frames"));
  const frames = p.top_frames || [];
  if (!frames.length) {
    wrap.append(el("p", "No frame to show.", { class: "hint" }));
    return wrap;
  }
  const overlays = best && r.explanations ? r.explanations.overlays || [] : [];
  const ul = el("ul", null, { class: "gallery", id: "gallery" });
  frames.forEach((f, i) => {
    const li = el("li");
    const b = el("button", null, { type: "button", class: "frame",
      "aria-label": `Frame at ${fmt(f.time_s, 2)} s, window probability ${fmt(f.window_probability)}: play from here` });
    const o = overlays.find((x) => x.track === f.track && Math.abs(x.time_s - f.time_s) < 1e-6) || overlays[i];
    if (o && o.png) {
      const img = el("img", null, { alt: `Heat map of frame ${f.frame} at ${fmt(f.time_s, 2)} s` });
      blobUrl(o.png).then((u) => { if (u) img.src = u; });
      b.append(img);
    } else {
      b.append(el("span", "no heat map (ask to explain)", { class: "noimg" }));
    }
    b.append(el("span", `${fmt(f.time_s, 2)} s · window ${fmt(f.window_probability, 2)}`));
    b.addEventListener("click", () => seek(f.time_s));
    li.append(b);
    ul.append(li);
  });
  wrap.append(ul);
  return wrap;
}

function seek(t) {
  const player = $("player");
  if (player.hidden) return;
  player.currentTime = t;
  player.pause();
  player.focus();
}

function membersTable(p) {
  const wrap = el("div");
  wrap.append(el("h3", "Members and agreement"));
  const table = el("table", null, { id: "members" });
  table.append(row(["member", "looks at", "probability", "note"], "th"));
  for (const [name, m] of Object.entries(p.members || {})) {
    const note = !m.judged ? "did not judge" : m.reliable === false ? "out of profile: unreliable" : "";
    table.append(row([name, MODALITY_NAMES[m.modality] || m.modality, fmt(m.probability), note]));
  }
  wrap.append(table);
  const a = p.agreement || {};
  const words = [];
  if (a.model_agreement !== undefined && a.model_agreement !== null) words.push(`members agree ${fmt(a.model_agreement, 2)}`);
  if (a.modality_agreement !== undefined && a.modality_agreement !== null) words.push(`modalities agree ${fmt(a.modality_agreement, 2)}`);
  if (a.model_spread !== undefined && a.model_spread !== null) words.push(`spread ${fmt(a.model_spread, 2)}`);
  const mods = Object.entries(p.modalities || {}).map(([m, v]) => `${MODALITY_NAMES[m] || m} ${fmt(v)}`);
  if (mods.length) words.push(`by modality: ${mods.join(", ")}`);
  wrap.append(el("p", words.join("; "), { class: "hint", id: "agreement" }));
  return wrap;
}

// ------------------------------------------------------------------ recent jobs

async function loadRecent() {
  const res = await api("/jobs?limit=20");
  const ul = $("recent");
  ul.replaceChildren();
  if (!res.ok) {
    ul.append(el("li", `Cannot list jobs: ${why(res)}`));
    return;
  }
  const jobs = res.body.jobs || [];
  if (!jobs.length) ul.append(el("li", "No jobs yet."));
  for (const j of jobs) {
    const li = el("li");
    li.append(el("span", j.filename || j.video_url || j.job_id), el("span", j.state, { class: "state" }),
      el("span", (j.created_at || "").replace("T", " ").slice(0, 19), { class: "hint" }));
    if (j.state === "done") {
      const b = el("button", "show", { type: "button", "aria-label": `Show the result of ${j.filename || j.job_id}` });
      b.addEventListener("click", async () => {
        const res2 = await api(`/jobs/${j.job_id}`);
        if (res2.ok && res2.body.result) {
          state.jobId = null;
          $("job").hidden = true;
          render(res2.body.result, false);
        }
      });
      li.append(b);
    }
    ul.append(li);
  }
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("key").value.trim();
    sessionStorage.setItem("veracity-key", state.key);
    $("key-msg").textContent = "";
    loadModel();
  });
  $("submit-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("recent-refresh").addEventListener("click", loadRecent);
  $("card-open").addEventListener("click", () => $("card").showModal());
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) $("file").files = e.dataTransfer.files;
  });
  start();
});
