// What every part of the call page shares: the page's state, the join credential, DOM helpers
// and the server's join answer. Nothing here talks to the network except `requestJoin`.

export const config = JSON.parse(document.getElementById("config").textContent || "{}");
export const credential = decodeURIComponent(
  location.pathname.split("/").filter(Boolean).pop() || "");
export const $ = (id) => document.getElementById(id);
export const generation = Math.random().toString(36).slice(2); // this page load's connections

export const PURPOSE_LABELS = {
  "recording.audio": "Record my audio",
  "recording.video": "Record my video",
  "transcription": "Transcribe my speech",
  "ai.summary": "AI summary of the session",
  "ai.agenda": "AI agenda before the session",
};

export const state = {
  grant: null,       // last POST /v1/join answer
  me: null,          // my participant id (from welcome)
  stream: null,      // my camera + microphone
  socket: null,
  leaving: false,
  joined: false,     // the person clicked Join (the socket may be open before: see signaling.js)
  retries: 0,
  peers: new Map(),  // peer id -> {id, pc, polite, makingOffer, ignoreOffer, gen}
  names: new Map(),
  consent: new Map(), // "who|purpose" -> decision
  recording: new Map(), // who -> {audio, video}
  myConsent: [],     // GET /v1/consent purposes
  pingTimer: null,
  mediaReady: Promise.resolve(),
  recorder: null,    // {pc, senders: {audio, video}}: my connection to the recording peer
  recordingOn: false, // whether recording is switched on for the booking (as far as we know)
  recordingPoll: null,
  controlSeq: 0,     // bumped by every authoritative start/stop we hear of (see recording.js)
  livekit: null,
  ready: false,      // the pre-join screen is ready: media, choices, and the call warmed up
  marks: {},         // performance.now() of the join's milestones (bench/firstframe.py reads them)
};
window.callgate = state; // for the browser tests (stats) and for debugging

export function mark(name) {
  if (!(name in state.marks)) state.marks[name] = performance.now();
}

export function say(text, where = "status") { $(where).textContent = text; }

// Where a message about the call goes: the call's status line once in it, else the page's.
export function sayInCall(text) { say(text, state.me ? "call-status" : "status"); }

export function problem(title, detail) {
  $("problem-title").textContent = title;
  $("problem-detail").textContent = detail;
  $("problem").hidden = false;
  $("prejoin").hidden = true;
  $("call").hidden = true;
  say("");
}

// A moment in the person's own time zone; the zone is named once, by its IANA name, at the end
// of what is shown (never "11:51 AM UTC (UTC)").
const DATE = { weekday: "long", year: "numeric", month: "long", day: "numeric",
  hour: "2-digit", minute: "2-digit" };

export function zoneName() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone;
}

export function formatWhen(iso, { zone = true } = {}) {
  const text = new Intl.DateTimeFormat(undefined, DATE).format(new Date(iso));
  return zone ? `${text} (${zoneName()})` : text;
}

// A span of time, the shared parts once: "Monday, 30 November 2026, 11:51 – 12:51 (Europe/Berlin)".
export function formatSpan(startIso, endIso) {
  const format = new Intl.DateTimeFormat(undefined, DATE);
  const [start, end] = [new Date(startIso), new Date(endIso)];
  const text = format.formatRange ? format.formatRange(start, end)
    : `${format.format(start)} – ${format.format(end)}`;
  return `${text} (${zoneName()})`;
}

export async function requestJoin() {
  const response = await fetch("/v1/join", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ credential }),
    credentials: "omit",
  });
  const body = await response.json().catch(() => ({}));
  if (response.ok) return body;
  const error = new Error(body.detail || response.statusText);
  error.status = response.status;
  error.body = body;
  throw error;
}

// A request on my own behalf: the join credential, as for GET /v1/consent.
export function asMe(path, options = {}) {
  return fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), "X-Join-Credential": credential },
  });
}
