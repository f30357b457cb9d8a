// callgate admin page: consent log review. Plain JS, no build step, no third-party code.
// The API key lives only in sessionStorage and is sent as a Bearer token to this origin.
"use strict";

const KEY = "callgate.adminKey";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let cursorStack = [];
let nextCursor = null;

function key() { return sessionStorage.getItem(KEY); }

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${key()}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { signOut("Your key is no longer valid; sign in again."); }
  return response;
}

async function problemText(response) {
  try {
    const body = await response.json();
    return `${body.title || "Error"}: ${body.detail || response.statusText} (${body.code || response.status})`;
  } catch (_) { return `HTTP ${response.status}`; }
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) { node.setAttribute(name, value); }
  if (text !== undefined) { node.textContent = text; }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) { node.setAttribute(name, String(value)); }
  return node;
}

function utc(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "") : ""; }

// ---- sign in / out -------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const value = $("key").value.trim();
  sessionStorage.setItem(KEY, value);
  const response = await fetch("/v1/admin/consent-log?limit=1", {
    headers: { Authorization: `Bearer ${value}` },
  });
  if (!response.ok) {
    sessionStorage.removeItem(KEY);
    $("login-error").textContent = response.status === 403
      ? "This key has no admin or auditor scope."
      : "That key is not valid.";
    return;
  }
  $("key").value = "";
  showApp();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  clearTimeout(integrityTimer);
  $("tamper-banner").hidden = true;
  $("app").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("key").focus();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("login-error").textContent = "";
  cursorStack = [];
  loadLog(null);
  checkIntegrity();
}

// ---- tampering alarm (every node re-verifies the ledger; the state is shared) --------------

let integrityTimer = null;

async function checkIntegrity() {
  clearTimeout(integrityTimer);
  integrityTimer = setTimeout(checkIntegrity, 15_000);
  const response = await api("/v1/admin/consent-log/integrity");
  if (!response.ok) { return; }
  const state = await response.json();
  const banner = $("tamper-banner");
  banner.hidden = state.status !== "tampered";
  if (state.alarm) {
    const a = state.alarm;
    $("tamper-text").textContent = `Consent ledger tampering detected at entry ${a.first_bad_seq} `
      + `(${a.problem}: ${a.detail}) at ${utc(a.detected_at)} UTC. Recording and AI jobs are `
      + "stopped until an admin acknowledges it.";
  }
}

async function acknowledgeTampering() {
  const response = await api("/v1/admin/consent-log/integrity/acknowledge", { method: "POST" });
  $("tamper-status").textContent = response.ok ? "" : await problemText(response);
  if (response.ok) { checkIntegrity(); }
}

// ---- the log -------------------------------------------------------------------------------

function filterParams() {
  const params = new URLSearchParams();
  const form = new FormData($("filters"));
  for (const [name, raw] of form.entries()) {
    const value = String(raw).trim();
    if (!value) { continue; }
    params.set(name, (name === "from" || name === "to") ? toUtcIso(value) : value);
  }
  return params;
}

function toUtcIso(local) {
  // The inputs are labelled UTC: read them as UTC wall-clock time.
  const withSeconds = local.length === 16 ? `${local}:00` : local;
  return `${withSeconds}Z`;
}

async function loadLog(cursor) {
  const params = filterParams();
  params.set("limit", "25");
  if (cursor) { params.set("cursor", cursor); }
  $("log-status").textContent = "Loading…";
  const response = await api(`/v1/admin/consent-log?${params}`);
  if (!response.ok) { $("log-status").textContent = await problemText(response); return; }
  const page = await response.json();
  renderLog(page.items);
  nextCursor = page.next_cursor;
  $("next-page").disabled = !nextCursor;
  $("log-status").textContent = page.items.length
    ? `Showing ${page.items.length} entries (seq ${page.items[0].seq}–${page.items[page.items.length - 1].seq}).`
    : "No entries match these filters.";
}

function renderLog(items) {
  const body = $("log").querySelector("tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = el("tr");
    row.append(el("td", {}, String(item.seq)), el("td", {}, utc(item.at)));
    const bookingCell = el("td");
    const open = el("button", {
      type: "button", class: "link",
      "aria-label": `Open the timeline of booking ${item.booking_id}`,
    }, item.booking_id.slice(0, 8));
    open.addEventListener("click", () => openTimeline(item.booking_id));
    bookingCell.append(open);
    row.append(bookingCell);
    row.append(el("td", {}, item.subject_external_id || item.subject_id));
    row.append(el("td", {}, item.purpose));
    row.append(el("td", { class: `decision-${item.decision}` }, item.decision));
    row.append(el("td", { class: "mono", title: item.notice_sha256 }, item.notice_sha256.slice(0, 12)));
    row.append(el("td", {}, item.method));
    body.append(row);
  }
}

// ---- the timeline --------------------------------------------------------------------------

async function openTimeline(bookingId) {
  const response = await api(`/v1/admin/bookings/${encodeURIComponent(bookingId)}/consent-timeline`);
  const section = $("timeline-section");
  section.hidden = false;
  if (!response.ok) { $("timeline-caption").textContent = await problemText(response); return; }
  const data = await response.json();
  $("timeline-caption").textContent =
    `${data.booking.title} · ${utc(data.booking.starts_at)} – ${utc(data.booking.ends_at)} UTC · ` +
    `policy ${data.booking.recording_policy} · ${data.entries.length} decisions`;
  drawTimeline(data);
  fillTimelineTable(data);
  $("timeline-title").scrollIntoView({ block: "start" });
  $("timeline-title").setAttribute("tabindex", "-1");
  $("timeline-title").focus();
}

function drawTimeline(data) {
  const people = data.participants;
  const purposes = data.booking.requested_purposes;
  const times = [Date.parse(data.booking.starts_at), Date.parse(data.booking.ends_at)];
  for (const e of data.entries) { times.push(Date.parse(e.at)); }
  for (const p of data.presence) {
    times.push(Date.parse(p.joined_at));
    if (p.left_at) { times.push(Date.parse(p.left_at)); }
  }
  let t0 = Math.min(...times);
  let t1 = Math.max(...times);
  const pad = Math.max((t1 - t0) * 0.04, 60_000);
  t0 -= pad; t1 += pad;
  const left = 270, right = 20, top = 30, row = 18, gap = 14;
  const width = 1000;
  const laneHeight = Math.max(purposes.length, 1) * row + 8;
  const height = top + people.length * (laneHeight + gap) + 10;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "group",
    "aria-label": `Consent timeline of ${people.length} people`,
  });
  const windowRect = svg("rect", {
    class: "window", x: x(Date.parse(data.booking.starts_at)), y: top - 6,
    width: x(Date.parse(data.booking.ends_at)) - x(Date.parse(data.booking.starts_at)),
    height: height - top,
  });
  windowRect.append(svg("title"));
  windowRect.firstChild.textContent = "booked window";
  root.append(windowRect);
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    const label = svg("text", { class: "axis", x: x(t), y: 16, "text-anchor": anchor });
    label.textContent = new Date(t).toISOString().slice(11, 19);
    root.append(label);
  }
  people.forEach((person, index) => {
    const y0 = top + index * (laneHeight + gap);
    const lane = svg("g", { class: "lane", "data-person": person.external_id,
      role: "list", "aria-label": `${person.display_name} (${person.role})` });
    lane.append(svg("rect", { x: left, y: y0, width: width - left - right, height: laneHeight,
      fill: "#f6f8fa" }));
    for (const stay of data.presence.filter((p) => p.subject_id === person.id)) {
      const end = stay.left_at ? Date.parse(stay.left_at) : t1;
      const bar = svg("rect", { class: "presence", x: x(Date.parse(stay.joined_at)), y: y0,
        width: Math.max(x(end) - x(Date.parse(stay.joined_at)), 2), height: laneHeight });
      bar.append(svg("title"));
      bar.firstChild.textContent = `present ${utc(stay.joined_at)} – ${stay.left_at ? utc(stay.left_at) : "now"}`;
      lane.append(bar);
    }
    for (const rec of (data.recordings || []).filter((r) => r.subject_id === person.id)) {
      const end = rec.ended_at ? Date.parse(rec.ended_at) : t1;
      const bar = svg("rect", { class: `recorded ${rec.kind}`, x: x(Date.parse(rec.started_at)),
        y: y0 + laneHeight - 4, width: Math.max(x(end) - x(Date.parse(rec.started_at)), 2),
        height: 4, "data-kind": rec.kind });
      bar.append(svg("title"));
      bar.firstChild.textContent =
        `recorded ${rec.kind} ${utc(rec.started_at)} – ${rec.ended_at ? utc(rec.ended_at) : "now"}`;
      lane.append(bar);
    }
    const name = svg("text", { class: "lane-label", x: 8, y: y0 + 14 });
    name.textContent = `${person.display_name} (${person.role})`;
    lane.append(name);
    purposes.forEach((purpose, pi) => {
      const y = y0 + 4 + pi * row + row / 2;
      const label = svg("text", { class: "axis", x: left - 6, y: y + 4, "text-anchor": "end" });
      label.textContent = purpose;
      lane.append(label);
      const mine = data.entries.filter((e) => e.subject_id === person.id && e.purpose === purpose);
      mine.forEach((entry, k) => {
        const start = Date.parse(entry.at);
        const end = k + 1 < mine.length ? Date.parse(mine[k + 1].at) : t1;
        lane.append(svg("line", { class: `state ${entry.decision}`, x1: x(start), x2: x(end),
          y1: y, y2: y, stroke: entry.decision === "granted" ? "#1a7f37" : "#d0d7de",
          "stroke-width": 4 }));
      });
      for (const entry of mine) {
        const text = `${person.display_name} ${entry.decision} ${purpose} at ${utc(entry.at)} UTC`;
        const marker = svg("circle", { class: `marker ${entry.decision}`, cx: x(Date.parse(entry.at)),
          cy: y, r: 6, tabindex: 0, role: "listitem", "aria-label": text,
          "data-decision": entry.decision, "data-purpose": purpose });
        marker.append(svg("title"));
        marker.firstChild.textContent = text;
        lane.append(marker);
      }
    });
    root.append(lane);
  });
  $("timeline").replaceChildren(root);
}

function fillTimelineTable(data) {
  const names = Object.fromEntries(data.participants.map((p) => [p.id, p.display_name]));
  const body = $("timeline-table").querySelector("tbody");
  body.replaceChildren();
  for (const entry of data.entries) {
    const row = el("tr");
    row.append(el("td", {}, utc(entry.at)), el("td", {}, names[entry.subject_id] || entry.subject_id),
      el("td", {}, entry.purpose), el("td", { class: `decision-${entry.decision}` }, entry.decision));
    body.append(row);
  }
}

// ---- integrity and exports -----------------------------------------------------------------

async function runVerify() {
  const out = $("verify-result");
  out.className = "status";
  out.textContent = "Verifying…";
  const response = await api("/v1/admin/consent-log/verify");
  if (!response.ok) { out.textContent = await problemText(response); return; }
  const report = await response.json();
  const checkpoint = report.checkpoints.length
    ? ` Last checkpoint at seq ${report.checkpoints[0].seq} (${utc(report.checkpoints[0].signed_at)} UTC).`
    : " No checkpoint yet.";
  if (report.ok) {
    out.className = "status ok";
    out.textContent = `Chain intact: ${report.entries} entries verified, head seq ${report.head.seq}.${checkpoint}`;
  } else {
    out.className = "status bad";
    out.textContent = `Tampering detected at entry ${report.first_bad_seq}: ${report.problem} — ${report.detail}.`;
  }
}

async function signCheckpoint() {
  const out = $("verify-result");
  const response = await api("/v1/admin/consent-log/checkpoints", { method: "POST" });
  out.className = "status";
  if (!response.ok) { out.textContent = await problemText(response); return; }
  const checkpoint = await response.json();
  out.textContent = `Checkpoint signed at seq ${checkpoint.seq} (key ${checkpoint.key_id}).`;
}

async function download(path, filename, status) {
  status.textContent = "Preparing download…";
  const response = await api(path);
  if (!response.ok) { status.textContent = await problemText(response); return; }
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  status.textContent = `Downloaded ${filename} (${blob.size} bytes).`;
}

function exportLog(format) {
  const params = filterParams();
  params.set("format", format);
  download(`/v1/admin/consent-log/export?${params}`, `consent-log.${format}`, $("export-status"));
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault(); cursorStack = []; loadLog(null);
  });
  $("filters").addEventListener("reset", () => setTimeout(() => { cursorStack = []; loadLog(null); }));
  $("first-page").addEventListener("click", () => { cursorStack = []; loadLog(null); });
  $("next-page").addEventListener("click", () => {
    if (nextCursor) { cursorStack.push(nextCursor); loadLog(nextCursor); }
  });
  $("verify").addEventListener("click", runVerify);
  $("tamper-ack").addEventListener("click", acknowledgeTampering);
  $("checkpoint").addEventListener("click", signCheckpoint);
  $("export-csv").addEventListener("click", () => exportLog("csv"));
  $("export-jsonl").addEventListener("click", () => exportLog("jsonl"));
  $("export-checkpoints").addEventListener("click", () =>
    download("/v1/admin/consent-log/checkpoints/export", "consent-checkpoints.json", $("verify-result")));
  if (key()) { showApp(); } else { $("key").focus(); }
});

// ---- data subjects, retention, processing register (privacy) -------------------------------

let lastSearch = "";
let erasing = null;

async function searchSubjects(event) {
  if (event) { event.preventDefault(); lastSearch = $("subject-q").value.trim(); }
  const status = $("subject-status");
  const body = $("subjects").querySelector("tbody");
  body.replaceChildren();
  if (!lastSearch) { return; }
  const response = await api(`/v1/admin/subjects?q=${encodeURIComponent(lastSearch)}`);
  if (!response.ok) { status.textContent = await problemText(response); return; }
  const people = (await response.json()).subjects;
  status.textContent = people.length ? `${people.length} found.` : "No one found.";
  for (const person of people) { body.append(subjectRow(person)); }
}

function subjectRow(person) {
  const row = el("tr", { "data-external-id": person.external_id });
  const state = person.erased ? "erased" : person.restricted ? "restricted" : "active";
  row.append(el("td", { class: "mono" }, person.external_id),
    el("td", {}, person.display_names.join(", ")), el("td", {}, String(person.bookings)),
    el("td", { class: person.restricted ? "restricted" : "" }, state));
  const actions = el("td", { class: "actions" });
  const exportButton = el("button", { type: "button", class: "export" }, "Export");
  exportButton.addEventListener("click", () => exportSubject(person.external_id));
  const toggle = el("button", { type: "button", class: "restrict" },
    person.restricted ? "Lift restriction" : "Restrict processing");
  toggle.addEventListener("click", () => restrictSubject(person.external_id, !person.restricted));
  const erase = el("button", { type: "button", class: "erase" }, "Erase…");
  erase.addEventListener("click", () => askErase(person.external_id));
  actions.append(exportButton, toggle, erase);
  row.append(actions);
  return row;
}

async function exportSubject(externalId) {
  const status = $("subject-status");
  status.textContent = "Preparing the export…";
  const path = `/v1/admin/subjects/${encodeURIComponent(externalId)}/export`;
  const response = await api(path, { method: "POST" });
  if (!response.ok) { status.textContent = await problemText(response); return; }
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const name = `callgate-export-${externalId}.zip`;
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  status.textContent = `Exported ${name} (${blob.size} bytes).`;
}

async function restrictSubject(externalId, restrict) {
  const path = `/v1/admin/subjects/${encodeURIComponent(externalId)}/restriction`;
  const response = await api(path, { method: restrict ? "POST" : "DELETE" });
  const status = $("subject-status");
  if (!response.ok) { status.textContent = await problemText(response); return; }
  await searchSubjects();
  status.textContent = restrict
    ? `${externalId}: processing restricted (no new recording or AI job).`
    : `${externalId}: restriction lifted.`;
}

function askErase(externalId) {
  erasing = externalId;
  $("erase-id").textContent = externalId;
  $("erase-confirm").value = "";
  $("erase-go").disabled = true;
  $("erase-dialog").showModal();
  $("erase-confirm").focus();
}

async function eraseSubject() {
  const externalId = erasing;
  $("erase-dialog").close();
  const status = $("subject-status");
  const path = `/v1/admin/subjects/${encodeURIComponent(externalId)}/erase`;
  const response = await api(path, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ confirm: $("erase-confirm").value }),
  });
  if (!response.ok) { status.textContent = await problemText(response); return; }
  const result = await response.json();
  await searchSubjects();
  status.className = "status ok";
  status.textContent = `Erased ${externalId}: now ${result.tombstone}.`;
}

async function loadRetention() {
  const status = $("retention-status");
  const body = $("retention").querySelector("tbody");
  const response = await api("/v1/admin/retention");
  if (!response.ok) { status.textContent = await problemText(response); return; }
  const data = await response.json();
  body.replaceChildren();
  for (const item of data.categories) {
    const row = el("tr", { "data-category": item.category });
    row.append(el("td", {}, item.category), el("td", {}, String(item.retention_days)),
      el("td", {}, String(item.expired)), el("td", {}, item.action),
      el("td", {}, item.last_purged === null ? "never" : String(item.last_purged)));
    body.append(row);
  }
  status.textContent = data.last_run
    ? `Last purge ${utc(data.last_run.finished_at)} UTC; runs every ${data.interval_s} s.`
    : `No purge has run yet; runs every ${data.interval_s} s.`;
}

async function loadRegister() {
  const status = $("register-status");
  const body = $("register").querySelector("tbody");
  const response = await api("/v1/admin/processing?limit=100");
  if (!response.ok) { status.textContent = await problemText(response); return; }
  const entries = (await response.json()).entries;
  body.replaceChildren();
  for (const entry of entries) {
    const row = el("tr");
    row.append(el("td", {}, utc(entry.at)), el("td", { class: "mono" }, entry.booking_id),
      el("td", {}, entry.purpose), el("td", { class: "mono" }, entry.subjects.join(", ")),
      el("td", {}, entry.data_categories.join(", ")),
      el("td", {}, [entry.provider, entry.model].filter(Boolean).join(" · ")),
      el("td", {}, entry.outcome));
    body.append(row);
  }
  status.textContent = `${entries.length} processing step(s).`;
}

document.addEventListener("DOMContentLoaded", () => {
  $("subject-search").addEventListener("submit", searchSubjects);
  $("erase-confirm").addEventListener("input", () => {
    $("erase-go").disabled = $("erase-confirm").value !== erasing;
  });
  $("erase-cancel").addEventListener("click", () => $("erase-dialog").close());
  $("erase-go").addEventListener("click", eraseSubject);
  $("retention-load").addEventListener("click", loadRetention);
  $("register-load").addEventListener("click", loadRegister);
});
