// The call page: join link -> POST /v1/join -> pre-join (devices, name, consent) -> the call.
// Built-in mode: a peer-to-peer mesh signalled over callgate's WebSocket (docs/signaling.md);
// LiveKit mode: the livekit-client SDK. Native ES modules, no build step, no framework:
//   state.js      shared state, DOM and join helpers     devices.js    camera and microphone
//   signaling.js  the WebSocket                          peers.js      peer connections, tiles
//   consent.js    the consent panel and receipt          recording.js  recording state
//   livekit.js    LiveKit mode
// This module wires them: the pre-join screen, the Join click, and what each message means.

import { loadConsent, onConsent, renderConsent, renderPeerConsent, wireConsent } from "./consent.js";
import { listDevices, openMedia, replaceTracks, toggleTrack } from "./devices.js";
import { joinLivekit } from "./livekit.js";
import { closeAll, closePeer, onSignal, peerConnection, tile, warmUp } from "./peers.js";
import {
  RECORDING_ON_TEXT, closeRecorder, followConsent, learnRecording, noticeRecorded,
  setRecorded, startRecordingWatch, syncRecorder, toggleRecording,
} from "./recording.js";
import {
  connect, disconnect, dropLobby, joinLobby, onSignaling, openLobby, send,
} from "./signaling.js";
import {
  $, formatSpan, formatWhen, mark, problem, requestJoin, say, state,
} from "./state.js";

function explain(error) {
  const body = error.body || {};
  if (error.status === 403 && body.code === "outside_join_window") {
    if (new Date(body.opens_at) > new Date()) {
      problem("Too early",
        `This session starts ${formatWhen(body.starts_at, { zone: false })}. ` +
        `You can join from ${formatWhen(body.opens_at)}. Come back then and open this link again.`);
    } else {
      problem("This session has ended", `It ended ${formatWhen(body.closes_at)}.`);
    }
  } else if (error.status === 410) {
    problem("Cancelled", "This session was cancelled. Nothing will be recorded.");
  } else if (error.status === 404 || error.status === 422) {
    problem("Link invalid",
      "This join link is not valid. It may have been replaced; ask the organiser for a new one.");
  } else if (error.status === 429) {
    problem("Too many attempts", "Please wait a minute and open the link again.");
  } else {
    problem("Cannot join right now", error.message || "Please try again in a moment.");
  }
}

// messages from the signaling socket

function onMessage(message) {
  switch (message.type) {
    case "welcome": {
      mark("welcome");
      state.me = message.id;
      state.retries = 0;
      state.names.set(message.id, $("display-name").value || message.name);
      for (const peer of message.peers) state.names.set(peer.id, peer.name);
      for (const item of message.consent) state.consent.set(`${item.who}|${item.purpose}`, item.decision);
      state.recording.clear(); // the welcome holds everyone's current recorded tracks
      for (const item of message.recording) state.recording.set(item.who, item);
      // Whether recording is on (a booking recorded automatically is on from the start
      // unless its host stopped it) is the server's word: the recordings poll, the
      // "recording-state" push; anyone already recorded means it is on.
      noticeRecorded(message.recording.some((r) => r.audio || r.video));
      state.grant.builtin.ice_servers = message.ice_servers.length
        ? message.ice_servers : state.grant.builtin.ice_servers;
      tile(message.id).querySelector("video").srcObject = state.stream;
      const present = new Set(message.peers.map((p) => p.id));
      for (const id of [...state.peers.keys()]) if (!present.has(id)) closePeer(id);
      for (const peer of message.peers) peerConnection(peer.id);
      say(message.peers.length ? "" : "Waiting for the others to join…", "call-status");
      syncRecorder();
      break;
    }
    case "peer-joined":
      // The newcomer offers to everyone it finds in its welcome; the others answer (their
      // connection is made when that offer arrives). One offerer per pair means no glare
      // on the first negotiation, where the impolite side would drop the polite side's
      // early ICE candidates together with its ignored offer.
      state.names.set(message.peer.id, message.peer.name);
      closePeer(message.peer.id, false);
      tile(message.peer.id);
      say(`${message.peer.name} joined.`, "call-status");
      break;
    case "peer-updated": // a name corrected by the platform
      state.names.set(message.peer.id, message.peer.name);
      tile(message.peer.id);
      break;
    case "peer-left":
      say(`${state.names.get(message.id) || "Someone"} left.`, "call-status");
      closePeer(message.id);
      break;
    case "signal":
      onSignal(message.from, message.payload);
      break;
    case "consent":
      state.consent.set(`${message.who}|${message.purpose}`, message.decision);
      renderPeerConsent(message.who);
      if (message.who === state.me) loadConsent().catch(() => {});
      break;
    case "notice-changed": // a material change: the panel asks again
      loadConsent().catch(() => {});
      break;
    case "recording":
      setRecorded(message.who, message);
      noticeRecorded(message.audio || message.video);
      break;
    case "recording-state":
      learnRecording(message.on === true);
      say(message.on ? RECORDING_ON_TEXT : "Recording is off.", "call-status");
      break;
    case "bye":
      state.leaving = true;
      end(byeText(message.reason));
      break;
    case "error":
      console.warn("signaling error", message.code, message.detail);
      break;
    default:
      break;
  }
}

function byeText(reason) {
  return {
    window_closed: "The booked time is over.",
    booking_cancelled: "The session was cancelled.",
    removed: "You were removed from the session.",
    revoked: "This join link was replaced; use the new link you were sent.",
    erased: "Your data was erased at your request; the call has ended for you.",
    replaced: "You joined from another tab or device; this one was closed.",
    idle: "The connection was idle for too long.",
  }[reason] || "The call ended.";
}

function end(text) {
  clearInterval(state.recordingPoll);
  closeRecorder();
  closeAll();
  disconnect();
  $("call").hidden = true;
  $("ended").hidden = false;
  $("ended-detail").textContent = text;
  $("rejoin").focus();
}

// the Join click

async function joinCall(event) {
  event.preventDefault();
  mark("click");
  $("join").disabled = true;
  await state.mediaReady; // peer connections are built with the camera and microphone
  state.joined = true;
  // The socket opened on the pre-join screen joins at once; else a fresh grant and socket.
  const waiting = state.grant && state.grant.mode === "builtin" && await joinLobby();
  if (!waiting) {
    dropLobby();
    try {
      state.grant = await requestJoin();
    } catch (error) {
      state.joined = false;
      explain(error);
      return;
    }
    mark("grant");
  }
  $("prejoin").hidden = true;
  $("call").hidden = false;
  $("problem").hidden = true;
  say("");
  renderConsent();
  if (state.grant.mode === "livekit") {
    await joinLivekit(end);
    return;
  }
  if (!waiting) connect();
  startRecordingWatch();
  $("leave").focus();
}

async function changeDevice() {
  if (!(await openMedia())) return;
  for (const peer of state.peers.values()) replaceTracks(peer.pc);
  syncRecorder();
  const self = document.querySelector(`.tile[data-peer="${state.me}"] video`);
  if (self) self.srcObject = state.stream;
}

function wire() {
  onSignaling({ message: onMessage, end });
  onConsent(followConsent);
  wireConsent();
  $("join-form").addEventListener("submit", joinCall);
  $("camera").addEventListener("change", changeDevice);
  $("microphone").addEventListener("change", changeDevice);
  $("mute").addEventListener("click",
    (e) => toggleTrack(e.currentTarget, "audio", "Mute microphone", "Unmute microphone"));
  $("camera-toggle").addEventListener("click",
    (e) => toggleTrack(e.currentTarget, "video", "Turn camera off", "Turn camera on"));
  $("record-toggle").addEventListener("click", toggleRecording);
  $("consent-toggle").addEventListener("click", (e) => {
    const panel = $("consent-incall");
    panel.hidden = !panel.hidden;
    e.currentTarget.setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) panel.querySelector("input")?.focus();
  });
  $("leave").addEventListener("click", () => {
    state.leaving = true;
    send({ type: "bye" }); // a deliberate Leave: the others see it at once, no reconnect grace
    if (state.livekit) state.livekit.disconnect();
    end("You left the call. Your choices stay as you set them.");
  });
  $("rejoin").addEventListener("click", () => location.reload());
}

async function start() {
  wire();
  const consent = loadConsent().then(() => mark("consent"), (error) => error); // alongside
  try {
    state.grant = await requestJoin();
  } catch (error) {
    explain(error);
    return;
  }
  mark("page-grant");
  const booking = state.grant.booking;
  $("title").textContent = booking.title;
  document.title = `callgate · ${booking.title}`;
  $("when").textContent = formatSpan(booking.starts_at, booking.ends_at);
  $("display-name").value = state.grant.participant.display_name;
  $("prejoin").hidden = false;
  say("Check your camera and microphone, make your choices, then join.");
  state.mediaReady = openMedia().then(() => mark("media")).then(listDevices).catch(() => {});
  const [failed] = await Promise.all([consent, state.mediaReady]);
  if (failed) say(`Could not load the consent choices: ${failed.message}`);
  // While the person reads and decides: gather ICE candidates on a connection with the camera
  // and microphone already attached, and open the signaling socket (the server admits nobody
  // on it before the click). Nothing is sent to anyone before the click.
  if (!window.callgateColdStart) {
    warmUp();
    await openLobby();
  }
  mark("ready");
  state.ready = true;
}

start();
