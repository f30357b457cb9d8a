// The consent panel: what this booking asks of me (GET /v1/consent), my choices, the notices
// (server-rendered, sanitized HTML), re-consent after a material notice change, my receipt,
// and the others' choices on their tiles.

import { $, PURPOSE_LABELS, asMe, sayInCall, state } from "./state.js";

let listener = () => {};

// `fn(phase, purpose, decision)`: "before" a decision is sent, "after" it was saved or the
// panel reloaded (phase "loaded", purpose null). The recording connection follows it.
export function onConsent(fn) { listener = fn; }

export async function loadConsent() {
  const response = await asMe("/v1/consent");
  if (!response.ok) throw new Error(`consent: ${response.status}`);
  const body = await response.json();
  state.myConsent = body.purposes;
  renderConsent();
  listener("loaded", null, null);
}

// A grant given under an older notice version that changed materially no longer counts.
export function granted(item) {
  return item.decision === "granted" && !item.reconsent_required;
}

export function renderConsent() {
  for (const panel of document.querySelectorAll("[data-consent-panel]")) {
    const where = panel.closest("section[id]").id;
    panel.replaceChildren(...state.myConsent.map((item) => fieldset(item, where)));
  }
}

function fieldset(item, where) {
  const box = document.createElement("fieldset");
  box.dataset.purpose = item.purpose;
  const legend = document.createElement("legend");
  legend.textContent = PURPOSE_LABELS[item.purpose] || item.purpose;
  box.append(legend);
  if (item.reconsent_required) box.append(changed(item));
  const name = `consent-${where}-${item.purpose}`;
  const choices = document.createElement("div");
  choices.className = "choices";
  for (const [value, label] of [["granted", "Allow"], ["denied", "Do not allow"]]) {
    const wrap = document.createElement("label");
    wrap.className = "choice";
    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = name;
    radio.value = value;
    radio.checked = !item.reconsent_required && (value === "granted"
      ? item.decision === "granted" : item.decision === "denied" || item.decision === "withdrawn");
    radio.addEventListener("change", () => decide(item, value));
    wrap.append(radio, document.createTextNode(label));
    choices.append(wrap);
  }
  choices.append(decidedLine(item));
  box.append(choices, notice(item));
  return box;
}

function changed(item) {
  const note = document.createElement("p");
  note.className = "changed";
  note.textContent = "This notice changed since you chose" +
    (item.notice_change ? `: ${item.notice_change}` : ".") +
    " Your earlier choice no longer counts; please choose again.";
  return note;
}

function notice(item) {
  const details = document.createElement("details");
  details.className = "notice";
  const summary = document.createElement("summary");
  const days = item.retention_days;
  summary.textContent = (days ? `Kept ${days} day${days === 1 ? "" : "s"}. ` : "") +
    "Read the notice: who, what, why, for how long";
  const body = document.createElement("div");
  body.className = "notice-text";
  // Rendered from the notice's Markdown and sanitized by the server (raw HTML disabled).
  if (item.notice.html) body.innerHTML = item.notice.html;
  else body.textContent = item.notice.text;
  details.append(summary, body);
  return details;
}

function decidedLine(item) {
  const line = document.createElement("p");
  line.className = "decided";
  if (item.reconsent_required) line.textContent = "Not decided under this notice: nothing is done.";
  else if (item.decision) line.textContent = `Your choice: ${item.decision}`;
  else line.textContent = "Not decided yet: nothing is done.";
  return line;
}

async function decide(item, choice) {
  const decision = choice === "granted" ? "granted"
    : item.decision === "granted" ? "withdrawn" : "denied";
  // A refusal stops what goes to the recorder before it is even saved; a grant starts it only
  // once saved (the server decides frame by frame either way).
  if (decision !== "granted") listener("before", item.purpose, decision);
  const response = await asMe("/v1/consent", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ purpose: item.purpose, decision, notice_sha256: item.notice.sha256 }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    sayInCall(`Your choice was not saved: ${body.detail || response.status}`);
    await loadConsent();
    return;
  }
  item.decision = decision;
  item.reconsent_required = false;
  renderConsent();
  listener("after", item.purpose, decision);
  sayInCall(`Saved: ${PURPOSE_LABELS[item.purpose] || item.purpose}: ${decision}.`);
}

// My receipt: a compact JWS (application/jose) of my decisions in this booking, saved as a file.
export async function downloadReceipt() {
  const response = await asMe("/v1/consent/receipt", { headers: { Accept: "application/jose" } });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    sayInCall(`Your receipt could not be fetched: ${body.detail || response.status}`);
    return;
  }
  const blob = new Blob([await response.text()], { type: "application/jose" });
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = `consent-receipt-${state.grant ? state.grant.booking.id : "booking"}.jws`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  sayInCall("Your consent receipt was saved as a file.");
}

// The others' choices, on their tiles.
export function renderPeerConsent(id) {
  const list = document.querySelector(`.tile[data-peer="${id}"] .peer-consent`);
  if (!list) return;
  const items = [];
  for (const [key, decision] of state.consent) {
    const [who, purpose] = key.split("|");
    if (who !== id) continue;
    const li = document.createElement("li");
    li.dataset.purpose = purpose;
    li.dataset.decision = decision;
    li.textContent = `${PURPOSE_LABELS[purpose] || purpose}: ${decision}`;
    items.push(li);
  }
  list.replaceChildren(...items);
}

export function wireConsent() {
  for (const button of document.querySelectorAll("[data-receipt]")) {
    button.addEventListener("click", () => downloadReceipt().catch((e) => sayInCall(e.message)));
  }
}
