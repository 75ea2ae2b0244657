// machinegaze lab page: plain JS, no build step. Every picture comes from the API; nothing is computed here.
"use strict";

const $ = (id) => document.getElementById(id);
let STATUS = null;

// ------------------------------------------------------------------ helpers
async function api(url, opts = {}) {
  const r = await fetch(url, opts);
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try {
      const j = await r.json();
      if (j.detail) msg = typeof j.detail === "string" ? j.detail : j.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    } catch (e) { /* not JSON */ }
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return r;
}
const postJSON = (url, body, signal) =>
  api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal });

function showError(prefix, err) {
  const el = $(`${prefix}-error`);
  if (!el) return;
  if (err) { el.textContent = String(err.message || err); el.hidden = false; } else { el.hidden = true; el.textContent = ""; }
}

function fmtInfo(info) {
  return Object.entries(info || {}).map(([k, v]) => `${k}=${typeof v === "number" ? Number(v.toPrecision(4)) : v}`).join(" ");
}

function linkTo(item) {
  const a = document.createElement("span");
  a.className = "link";
  a.textContent = `${item.kind}${item.role ? " (" + item.role + ")" : ""}: ${item.title || item.id}`;
  a.dataset.item = item.id;
  a.addEventListener("click", () => { selectTab("gallery"); showItem(item.id); });
  return a;
}

// ------------------------------------------------------------------ tabs
function selectTab(name) {
  document.querySelectorAll(".tab").forEach((s) => s.classList.toggle("active", s.id === `tab-${name}`));
  document.querySelectorAll("#tabs button").forEach((b) => b.setAttribute("aria-selected", b.dataset.tab === name ? "true" : "false"));
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (name === "gallery") loadGallery();
  if (name === "uncanny") loadRuns();
  if (name === "mix") refreshMix();
}

async function loadStatus() {
  STATUS = await (await api("/api/status")).json();
  const net = STATUS.network.path ? `network ${STATUS.network.path}` : "no network";
  const det = STATUS.detector.path ? `detector ${STATUS.detector.path}` : "no detector";
  $("server-info").textContent = `machinegaze ${STATUS.version} · ${net} · ${det} · upload limit ${STATUS.limits.max_upload_mb} MB`;
  document.querySelectorAll(".tab").forEach((sec) => {
    const tab = STATUS.tabs[sec.dataset.backend];
    const prefix = sec.id.replace("tab-", "");
    const note = $(`${prefix}-unavailable`);
    const off = tab && !tab.available;
    if (note) { note.hidden = !off; note.textContent = off ? `Unavailable here: ${tab.reason}` : ""; }
    sec.querySelectorAll("button.primary").forEach((b) => { b.disabled = off; });
    sec.classList.toggle("off", !!off);
    const btn = $(`tab-btn-${prefix}`);
    if (btn) { btn.classList.toggle("off", !!off); btn.title = off ? tab.reason : ""; }
  });
}

// ------------------------------------------------------------------ jobs (SSE with a polling fallback)
function followJob(job, prefix, onDone) {
  const bar = $(`${prefix}-progress`), status = $(`${prefix}-status`), cancel = $(`${prefix}-cancel`);
  bar.hidden = false; bar.removeAttribute("value"); cancel.hidden = false; cancel.disabled = false;
  status.textContent = "queued";
  let finished = false, es = null, timer = null;
  const update = (j) => {
    if (finished) return;
    const p = j.progress || {};
    if (p.total) { bar.max = p.total; bar.value = p.step; }
    status.textContent = `${j.status}${p.total ? ` · step ${p.step}/${p.total}` : ""} ${fmtInfo(p.info)} ${j.message || ""}`;
    status.dataset.status = j.status;
    if (["done", "failed", "cancelled"].includes(j.status)) {
      finished = true; cancel.hidden = true;
      if (es) es.close();
      if (timer) clearInterval(timer);
      if (j.status === "done") { bar.value = bar.max; onDone(j.result); } else showError(prefix, new Error(`${j.status}: ${j.message}`));
    }
  };
  const poll = () => {
    if (timer) return;
    timer = setInterval(async () => {
      try { update(await (await api(`/api/jobs/${job.id}`)).json()); } catch (e) { showError(prefix, e); clearInterval(timer); }
    }, 500);
  };
  cancel.onclick = async () => {
    cancel.disabled = true;
    try { update(await (await api(`/api/jobs/${job.id}/cancel`, { method: "POST" })).json()); } catch (e) { showError(prefix, e); }
  };
  if (window.EventSource) {
    es = new EventSource(`/api/jobs/${job.id}/events`);
    es.onmessage = (ev) => update(JSON.parse(ev.data));
    es.onerror = () => { if (!finished) { es.close(); poll(); } };
  } else poll();
  update(job);
}

async function startJob(prefix, url, form, onDone) {
  showError(prefix, null);
  const btn = $(`${prefix}-run`);
  btn.disabled = true;
  try {
    const job = await (await api(url, { method: "POST", body: form })).json();
    followJob(job, prefix, (res) => { btn.disabled = false; onDone(res); });
    const watch = setInterval(() => { if ($(`${prefix}-cancel`).hidden) { btn.disabled = false; clearInterval(watch); } }, 300);
  } catch (e) { btn.disabled = false; showError(prefix, e); }
}

// ------------------------------------------------------------------ Detect
function drawFaces(j) {
  const wrap = $("detect-photo-box");
  wrap.querySelectorAll(".facebox").forEach((b) => b.remove());
  const [w, h] = j.image_size;
  j.faces.forEach((f, k) => {
    const [x0, y0, x1, y1] = f.box;
    const box = document.createElement("div");
    box.className = `facebox ${f.verdict}`;
    Object.assign(box.style, {
      left: `${(100 * x0) / w}%`, top: `${(100 * y0) / h}%`, width: `${(100 * (x1 - x0)) / w}%`, height: `${(100 * (y1 - y0)) / h}%`,
    });
    box.dataset.verdict = f.verdict;
    box.dataset.prob = f.prob_fake;
    const label = document.createElement("span");
    label.textContent = `${k + 1}: ${f.verdict} ${f.prob_fake.toFixed(2)}`;
    box.appendChild(label);
    wrap.appendChild(box);
  });
}

async function runDetect(itemId) {
  showError("detect", null);
  const form = new FormData();
  if (itemId) form.append("item_id", itemId);
  else {
    const f = $("detect-file").files[0];
    if (!f) { showError("detect", new Error("choose a photo first")); return; }
    form.append("file", f);
  }
  form.append("face_check", $("detect-whole").checked ? "false" : "true");
  $("detect-run").disabled = true;
  try {
    const j = await (await api("/api/detect", { method: "POST", body: form })).json();
    const n = j.faces.length;
    $("detect-verdict").textContent = j.verdict === "no_face" ? "no face" : j.verdict;
    $("detect-verdict").className = j.verdict;
    const nFake = j.faces.filter((f) => f.verdict === "fake").length;
    $("detect-summary").textContent = n ? `${n} face${n > 1 ? "s" : ""}: ${nFake} fake, ${n - nFake} real.` : "";
    $("detect-prob-line").hidden = !n;
    $("detect-noface").hidden = !!n;
    $("detect-prob").textContent = n ? j.prob_fake.toFixed(3) : "";
    $("detect-threshold").textContent = j.threshold.toFixed(3);
    $("detect-photo").src = j.upload.image_url;
    drawFaces(j);
    $("detect-overlay-fig").hidden = !j.item;
    if (j.item) $("detect-overlay").src = j.item.image_url;
    const target = j.item || j.upload;
    $("detect-item-link").onclick = (ev) => { ev.preventDefault(); selectTab("gallery"); showItem(target.id); };
    $("detect-result").hidden = false;
  } catch (e) { showError("detect", e); } finally { $("detect-run").disabled = !!(STATUS && !STATUS.tabs.detect.available); }
}

// ------------------------------------------------------------------ Generate & Mix
let mixTimer = null, mixAbort = null, mixSeq = 0;
const mixUrls = {};

function mixSource(which) {
  if (which === "a") return { seed: Number($("mix-seed-a").value) };
  if ($("mix-b-kind").value === "item" && $("mix-item-b").value) return { item: $("mix-item-b").value };
  return { seed: Number($("mix-seed-b").value) };
}

function setImg(el, blob) {
  const key = el.id;
  if (mixUrls[key]) URL.revokeObjectURL(mixUrls[key]);
  mixUrls[key] = URL.createObjectURL(blob);
  el.src = mixUrls[key];
}

async function refreshMix() {
  if (!STATUS || !STATUS.tabs.generate.available) return;
  clearTimeout(mixTimer);
  mixTimer = setTimeout(doMix, 120);
}

async function doMix() {
  ["psi", "coarse", "middle", "fine"].forEach((k) => { $(`mix-${k}-out`).textContent = $(`mix-${k}`).value; });
  const seq = ++mixSeq;
  if (mixAbort) mixAbort.abort();
  mixAbort = new AbortController();
  const psi = Number($("mix-psi").value);
  const a = mixSource("a"), b = mixSource("b");
  showError("mix", null);
  try {
    const ra = await postJSON("/api/generate", { seed: a.seed, psi }, mixAbort.signal);
    if (seq !== mixSeq) return;
    setImg($("mix-a-img"), await ra.blob());
    if (b.seed !== undefined) {
      const rb = await postJSON("/api/generate", { seed: b.seed, psi }, mixAbort.signal);
      if (seq !== mixSeq) return;
      setImg($("mix-b-img"), await rb.blob());
    } else $("mix-b-img").src = `/api/items/${b.item}/image.png`;
    const body = { a, b, psi, coarse: Number($("mix-coarse").value), middle: Number($("mix-middle").value), fine: Number($("mix-fine").value) };
    const r = await postJSON("/api/mix", body, mixAbort.signal);
    if (seq !== mixSeq) return;
    const id = r.headers.get("X-Item-Id");
    setImg($("mix-image"), await r.blob());
    $("mix-image").dataset.item = id || "";
    $("mix-info").textContent = `coarse ${body.coarse}, middle ${body.middle}, fine ${body.fine} of B`;
    if (id) {
      $("mix-item-link").hidden = false;
      $("mix-item-link").onclick = (ev) => { ev.preventDefault(); selectTab("gallery"); showItem(id); };
      $("mix-dl-png").hidden = false; $("mix-dl-png").href = `/api/items/${id}/image.png?download=true`;
      $("mix-dl-npz").hidden = false; $("mix-dl-npz").href = `/api/items/${id}/latent.npz`;
    }
  } catch (e) { if (e.name !== "AbortError") showError("mix", e); }
}

function useAsB(itemId) {
  $("mix-b-kind").value = "item";
  $("mix-item-b").value = itemId;
  syncMixB();
  selectTab("mix");
}
function syncMixB() {
  const item = $("mix-b-kind").value === "item";
  $("mix-seed-b-label").hidden = item;
  $("mix-item-b-label").hidden = !item;
}

// ------------------------------------------------------------------ Project
function runProject(itemId) {
  const form = new FormData();
  if (itemId) form.append("item_id", itemId);
  else {
    const f = $("project-file").files[0];
    if (!f) { showError("project", new Error("choose a photo first")); return; }
    form.append("file", f);
  }
  form.append("steps", $("project-steps").value);
  form.append("seed", $("project-seed").value);
  $("project-result-box").hidden = true;
  startJob("project", "/api/project", form, (res) => {
    const it = res.item;
    $("project-result").src = it.image_url;
    $("project-result").dataset.item = it.id;
    const target = it.parents.find((p) => p.role === "target");
    if (target) $("project-target").src = `/api/items/${target.id}/image.png`;
    $("project-lpips").textContent = `(LPIPS ${res.lpips.toFixed(3)})`;
    $("project-dl-png").href = `${it.image_url}?download=true`;
    $("project-dl-npz").href = it.latent_url;
    $("project-item-link").onclick = (ev) => { ev.preventDefault(); selectTab("gallery"); showItem(it.id); };
    $("project-breed").onclick = () => useAsB(it.id);
    $("project-result-box").hidden = false;
  });
}

// ------------------------------------------------------------------ Dream
async function loadDreamNets() {
  try {
    const nets = await (await api("/api/dream/nets")).json();
    const sel = $("dream-net");
    sel.innerHTML = "";
    for (const n of nets) {
      const o = document.createElement("option");
      o.value = n.name; o.textContent = n.name + (n.available ? "" : " (unavailable)");
      o.disabled = !n.available; o.title = n.available ? n.description : n.reason;
      sel.appendChild(o);
    }
    const first = nets.find((n) => n.available);
    if (first) { sel.value = first.name; await loadDreamLayers(); }
  } catch (e) { showError("dream", e); }
}

async function loadDreamLayers() {
  const net = $("dream-net").value;
  const sel = $("dream-layer");
  sel.innerHTML = "<option>loading…</option>";
  try {
    const f = await (await api(`/api/dream/nets/${encodeURIComponent(net)}`)).json();
    sel.innerHTML = "";
    for (const l of f.layers) {
      const o = document.createElement("option");
      o.value = l.name; o.textContent = `${l.name} ${l.kind} ${l.shape.join("x")}`;
      sel.appendChild(o);
    }
    sel.value = f.default_layer;
    const dl = $("dream-classes");
    dl.innerHTML = "";
    for (const c of f.classes) { const o = document.createElement("option"); o.value = c; dl.appendChild(o); }
  } catch (e) { sel.innerHTML = ""; showError("dream", e); }
}

function runDream() {
  const form = new FormData();
  const noise = $("dream-noise").checked;
  form.append("from_noise", noise ? "true" : "false");
  if (!noise) {
    const f = $("dream-file").files[0];
    if (f) form.append("file", f);
    else if ($("dream-item").value) form.append("item_id", $("dream-item").value);
    else { showError("dream", new Error("choose a photo, a gallery item, or 'from noise'")); return; }
  }
  form.append("net", $("dream-net").value);
  if ($("dream-layer").value) form.append("layer", $("dream-layer").value);
  if ($("dream-class").value.trim()) form.append("class_name", $("dream-class").value.trim());
  form.append("octaves", $("dream-octaves").value);
  form.append("steps", $("dream-steps").value);
  form.append("size", $("dream-size").value);
  $("dream-result-box").hidden = true;
  startJob("dream", "/api/dream", form, (res) => {
    $("dream-result").src = res.item.image_url;
    $("dream-objective").textContent = res.objective;
    $("dream-dl-png").href = `${res.item.image_url}?download=true`;
    $("dream-item-link").onclick = (ev) => { ev.preventDefault(); selectTab("gallery"); showItem(res.item.id); };
    $("dream-result-box").hidden = false;
  });
}

// ------------------------------------------------------------------ Uncanny
async function loadRuns(selectId) {
  try {
    const runs = await (await api("/api/uncanny/runs")).json();
    const sel = $("uncanny-runs");
    const keep = selectId || sel.value;
    sel.innerHTML = "";
    for (const r of runs) {
      const o = document.createElement("option");
      o.value = r.id; o.textContent = `${r.title || r.id} · ${r.snapshots} snapshots`;
      sel.appendChild(o);
    }
    if (keep && runs.some((r) => r.id === keep)) sel.value = keep;
    if (sel.value) await showRun(sel.value);
  } catch (e) { showError("uncanny", e); }
}

async function showRun(id) {
  const run = await (await api(`/api/uncanny/runs/${id}`)).json();
  const t = $("uncanny-metrics");
  t.innerHTML = "";
  const cols = ["step", "critic_fake", "diversity", "redness", "param_distance", "uncanniness"];
  const head = t.insertRow();
  cols.forEach((c) => { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); });
  for (const m of run.metrics) {
    const tr = t.insertRow();
    cols.forEach((c) => { tr.insertCell().textContent = typeof m[c] === "number" ? Number(m[c].toPrecision(4)) : (m[c] ?? ""); });
  }
  const g = $("uncanny-grids");
  g.innerHTML = "";
  for (const s of run.grids) {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = s.url; img.alt = `step ${s.step}`; img.loading = "lazy";
    const cap = document.createElement("figcaption");
    cap.textContent = `step ${s.step}`;
    fig.append(img, cap);
    g.appendChild(fig);
  }
}

function runUncanny() {
  showError("uncanny", null);
  const body = { steps: Number($("uncanny-steps").value), snapshot_every: Number($("uncanny-every").value), batch: Number($("uncanny-batch").value) };
  const btn = $("uncanny-run");
  btn.disabled = true;
  postJSON("/api/uncanny", body).then((r) => r.json()).then((job) => {
    followJob(job, "uncanny", (res) => { btn.disabled = false; loadRuns(res.run.id); });
    const refresh = setInterval(() => { if ($("uncanny-cancel").hidden) { btn.disabled = false; clearInterval(refresh); } else loadRuns(); }, 3000);
  }).catch((e) => { btn.disabled = false; showError("uncanny", e); });
}

// ------------------------------------------------------------------ Gallery
async function loadGallery() {
  showError("gallery", null);
  try {
    const kind = $("gallery-kind").value;
    const j = await (await api(`/api/items?limit=120${kind ? "&kind=" + encodeURIComponent(kind) : ""}`)).json();
    $("gallery-count").textContent = `${j.total} items`;
    const grid = $("gallery-grid");
    grid.innerHTML = "";
    for (const it of j.items) {
      const fig = document.createElement("figure");
      fig.dataset.item = it.id;
      if (it.image_url) { const img = document.createElement("img"); img.src = it.image_url; img.alt = it.title; img.loading = "lazy"; fig.appendChild(img); }
      const cap = document.createElement("figcaption");
      cap.textContent = `${it.kind}: ${it.title}`;
      fig.appendChild(cap);
      fig.addEventListener("click", () => showItem(it.id));
      grid.appendChild(fig);
    }
  } catch (e) { showError("gallery", e); }
}

async function showItem(id) {
  try {
    const it = await (await api(`/api/items/${id}`)).json();
    $("gallery-detail").hidden = false;
    $("gallery-detail").dataset.item = it.id;
    $("gallery-detail-img").src = it.image_url || "";
    $("gallery-detail-title").textContent = `${it.kind}: ${it.title}`;
    $("gallery-detail-meta").textContent = `id ${it.id} · ${new Date(it.created * 1000).toLocaleString()} · ${it.width || "?"}x${it.height || "?"}`;
    const pa = $("gallery-parents"), ch = $("gallery-children");
    pa.innerHTML = ""; ch.innerHTML = "";
    it.parents.forEach((p) => pa.appendChild(linkTo(p)));
    it.children.forEach((c) => ch.appendChild(linkTo(c)));
    if (!it.parents.length) pa.textContent = "none";
    if (!it.children.length) ch.textContent = "none";
    $("gallery-params").textContent = JSON.stringify(it.params, null, 2);
    $("gallery-dl-png").href = it.image_url ? `${it.image_url}?download=true` : "#";
    $("gallery-dl-npz").hidden = !it.latent_url;
    if (it.latent_url) $("gallery-dl-npz").href = it.latent_url;
    $("gallery-use-a").hidden = $("gallery-use-b").hidden = !it.latent_url;
    $("gallery-use-a").onclick = () => {
      if (it.params && it.params.seed !== undefined && it.kind === "generate") { $("mix-seed-a").value = it.params.seed; selectTab("mix"); }
      else showError("gallery", new Error("Mix A takes a seed; use this item as B instead"));
    };
    $("gallery-use-b").onclick = () => useAsB(it.id);
    $("gallery-detect").hidden = $("gallery-project").hidden = $("gallery-dream").hidden = !it.image_url;
    $("gallery-detect").onclick = () => { selectTab("detect"); runDetect(it.id); };
    $("gallery-project").onclick = () => { selectTab("project"); runProject(it.id); };
    $("gallery-dream").onclick = () => {
      $("dream-item").value = it.id; $("dream-file").value = ""; $("dream-noise").checked = false;
      $("dream-item-note").hidden = false; $("dream-item-note").textContent = `dreaming on gallery item ${it.title}`;
      selectTab("dream");
    };
  } catch (e) { showError("gallery", e); }
}

async function uploadToGallery() {
  const f = $("gallery-file").files[0];
  if (!f) { showError("gallery", new Error("choose a picture first")); return; }
  const form = new FormData();
  form.append("file", f);
  try {
    const it = await (await api("/api/items", { method: "POST", body: form })).json();
    await loadGallery();
    showItem(it.id);
  } catch (e) { showError("gallery", e); }
}

// ------------------------------------------------------------------ wiring
window.addEventListener("DOMContentLoaded", async () => {
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => selectTab(b.dataset.tab)));
  $("detect-run").addEventListener("click", () => runDetect(null));
  ["mix-seed-a", "mix-seed-b", "mix-psi", "mix-coarse", "mix-middle", "mix-fine"].forEach((id) => $(id).addEventListener("input", refreshMix));
  $("mix-b-kind").addEventListener("change", () => { syncMixB(); refreshMix(); });
  $("project-run").addEventListener("click", () => runProject(null));
  $("dream-run").addEventListener("click", runDream);
  $("dream-net").addEventListener("change", loadDreamLayers);
  $("dream-file").addEventListener("change", () => { $("dream-item").value = ""; $("dream-item-note").hidden = true; });
  $("uncanny-run").addEventListener("click", runUncanny);
  $("uncanny-refresh").addEventListener("click", () => loadRuns());
  $("uncanny-runs").addEventListener("change", () => showRun($("uncanny-runs").value));
  $("gallery-kind").addEventListener("change", loadGallery);
  $("gallery-refresh").addEventListener("click", loadGallery);
  $("gallery-upload").addEventListener("click", uploadToGallery);
  try { await loadStatus(); } catch (e) { $("server-info").textContent = `cannot reach the server: ${e.message}`; }
  const start = (location.hash || "#detect").slice(1);
  selectTab(["detect", "mix", "project", "dream", "uncanny", "gallery"].includes(start) ? start : "detect");
  if (STATUS && STATUS.tabs.dream.available) loadDreamNets();
  document.body.dataset.ready = "true";
});
