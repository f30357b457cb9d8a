// Recording state: whether the booking records (the host's switch), each person's recorded
// tracks as the server reports them, and my recording connection: a second RTCPeerConnection
// to callgate's recording peer (docs/recording.md) carrying only the tracks I consent to.

import { granted } from "./consent.js";
import { myTrack } from "./devices.js";
import { $, asMe, say, state } from "./state.js";

export const RECORDED_KINDS = { "recording.audio": "audio", "recording.video": "video" };

function recordingRequested() {
  const requested = (state.grant && state.grant.booking.requested_purposes) || [];
  return requested.some((purpose) => purpose in RECORDED_KINDS);
}

function consents(kind) {
  const purpose = `recording.${kind}`;
  return state.myConsent.some((item) => item.purpose === purpose && granted(item));
}

export function setSending(kind, on) {
  const sender = state.recorder && state.recorder.senders[kind];
  if (!sender) return;
  const track = on ? myTrack(kind) : null;
  if (sender.track !== track) sender.replaceTrack(track).catch((e) => console.warn("recorder", e));
}

// Connect while recording is on and I consent to at least one track; each sender carries
// its track only while I consent to it (replaceTrack: no renegotiation needed).
export function syncRecorder() {
  const wanted = state.recordingOn && !state.leaving && state.me !== null
    && state.grant && state.grant.mode === "builtin" && recordingRequested()
    && (consents("audio") || consents("video"));
  if (!wanted) {
    closeRecorder();
    return;
  }
  if (!state.recorder) openRecorder();
  for (const kind of ["audio", "video"]) setSending(kind, consents(kind));
}

function openRecorder() {
  const pc = new RTCPeerConnection({ iceServers: state.grant.builtin.ice_servers });
  const senders = {};
  for (const kind of ["audio", "video"]) {
    const transceiver = pc.addTransceiver(kind, { direction: "sendonly" });
    if (kind === "video" && RTCRtpSender.getCapabilities) { // the recorder writes VP8
      const codecs = (RTCRtpSender.getCapabilities("video") || { codecs: [] }).codecs
        .filter((c) => c.mimeType.toLowerCase() === "video/vp8");
      if (codecs.length && transceiver.setCodecPreferences) transceiver.setCodecPreferences(codecs);
    }
    senders[kind] = transceiver.sender;
  }
  const recorder = { pc, senders };
  state.recorder = recorder;
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed" && state.recorder === recorder) {
      closeRecorder(); // a fresh connection on the next check
      setTimeout(syncRecorder, 2000);
    }
  };
  negotiateRecorder(recorder).catch((error) => {
    console.warn("recorder", error);
    if (state.recorder === recorder) {
      closeRecorder();
      setTimeout(syncRecorder, 5000);
    }
  });
}

async function negotiateRecorder(recorder) {
  const pc = recorder.pc;
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => { // one offer with every candidate (no trickle endpoint)
    if (pc.iceGatheringState === "complete") { resolve(); return; }
    const timer = setTimeout(resolve, 3000);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
  const response = await asMe("/v1/recording/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
  });
  if (!response.ok) throw new Error(`recording offer: ${response.status}`);
  if (state.recorder !== recorder) return;
  await pc.setRemoteDescription(await response.json());
}

export function closeRecorder() {
  if (state.recorder) state.recorder.pc.close();
  state.recorder = null;
}

// Consent changes move tracks on and off the recording connection.
export function followConsent(phase, purpose, decision) {
  const kind = RECORDED_KINDS[purpose];
  if (phase === "before" && kind && decision !== "granted") setSending(kind, false);
  else if (phase !== "before") syncRecorder();
}

function setRecordingOn(on) {
  state.recordingOn = on;
  const button = $("record-toggle");
  button.textContent = on ? "Stop recording" : "Start recording";
  button.setAttribute("aria-pressed", String(on));
  syncRecorder();
}

// Whether the booking is recording: the host's own start/stop, anyone shown as recorded,
// and (for a start nobody is recorded by yet, and for stops) the recordings list's flag.
// A poll answered after a start or stop we heard of since it was sent is stale: ignored.
async function checkRecording() {
  const seq = state.controlSeq;
  const response = await asMe(`/v1/bookings/${state.grant.booking.id}/recordings`);
  if (!response.ok) return;
  const body = await response.json();
  if (seq !== state.controlSeq) return;
  if (body.recording !== state.recordingOn) setRecordingOn(body.recording);
}

// The server's own word on a start or stop (its answer to ours, or the signaling push).
export function learnRecording(on) {
  state.controlSeq += 1;
  if (on !== state.recordingOn) setRecordingOn(on);
}

// Someone is recorded: recording is on, whatever we heard before.
export function noticeRecorded(anyone) {
  if (anyone && !state.recordingOn) setRecordingOn(true);
}

export const RECORDING_ON_TEXT = "Recording is on: each person is recorded only as they allowed.";

export async function toggleRecording(event) {
  const button = event.currentTarget;
  button.disabled = true;
  const action = state.recordingOn ? "stop" : "start";
  state.controlSeq += 1; // a poll already on its way may predate this switch
  try {
    const response = await asMe(`/v1/bookings/${state.grant.booking.id}/recording/${action}`, {
      method: "POST",
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      say(`Recording could not be switched ${action === "start" ? "on" : "off"}: ${body.detail || response.status}`, "call-status");
      return;
    }
    learnRecording(body.recording);
    say(body.recording ? RECORDING_ON_TEXT : "Recording is off.", "call-status");
  } finally {
    button.disabled = false;
  }
}

export function startRecordingWatch() {
  if (state.grant.mode !== "builtin" || !recordingRequested()) return;
  $("record-toggle").hidden = state.grant.participant.role !== "host";
  clearInterval(state.recordingPoll);
  state.recordingPoll = setInterval(() => checkRecording().catch(() => {}), 5000);
  checkRecording().catch(() => {});
}

// Each person's recorded tracks, as the server pushed them, on their tile.
export function setRecorded(who, tracks) {
  state.recording.set(who, { audio: !!tracks.audio, video: !!tracks.video });
  renderRecording(who);
}

export function renderRecording(id) {
  const element = document.querySelector(`.tile[data-peer="${id}"] .rec`);
  if (!element) return;
  const rec = state.recording.get(id) || { audio: false, video: false };
  const parts = [rec.audio && "audio", rec.video && "video"].filter(Boolean);
  element.textContent = parts.length ? `recording ${parts.join(" and ")}` : "not recording";
  element.classList.toggle("on", parts.length > 0);
}
