// Peer connections: one RTCPeerConnection per other person (a mesh), negotiated with "perfect
// negotiation" so two peers that offer at once settle without glare (W3C WebRTC 1.0, section
// 10.7 example), and the tiles that show each person.

import { renderPeerConsent } from "./consent.js";
import { renderRecording } from "./recording.js";
import { send } from "./signaling.js";
import { $, generation, mark, state } from "./state.js";

// One connection made ahead, on the pre-join screen: its ICE candidates are gathered
// (iceCandidatePoolSize) and my tracks attached before the person clicks Join, so the first
// offer or answer goes out at once. It carries nothing until it is given to someone.
let spare = null;

function configuration(pool) {
  return { iceServers: state.grant.builtin.ice_servers, iceCandidatePoolSize: pool };
}

export function warmUp() {
  if (spare || !state.grant || state.grant.mode !== "builtin") return;
  spare = new RTCPeerConnection(configuration(1));
  for (const track of state.stream ? state.stream.getTracks() : []) spare.addTrack(track, state.stream);
}

// A connection with my tracks on it; `warmed` when it is the spare (its negotiationneeded
// event fired long ago, before anyone listened).
function takeConnection() {
  if (spare) {
    const pc = spare;
    spare = null;
    return { pc, warmed: true };
  }
  const pc = new RTCPeerConnection(configuration(0));
  for (const track of state.stream ? state.stream.getTracks() : []) pc.addTrack(track, state.stream);
  return { pc, warmed: false };
}

export function tile(id) {
  let element = document.querySelector(`.tile[data-peer="${id}"]`);
  if (!element) {
    element = $("tile-template").content.firstElementChild.cloneNode(true);
    element.dataset.peer = id;
    if (id === state.me) element.querySelector("video").muted = true;
    $("tiles").append(element);
  }
  const name = state.names.get(id) || "Someone";
  element.querySelector(".name").textContent = id === state.me ? `${name} (you)` : name;
  element.setAttribute("aria-label", name);
  element.querySelector("video").setAttribute("aria-label", `Video of ${name}`);
  renderRecording(id);
  renderPeerConsent(id);
  return element;
}

export function peerConnection(id, gen) {
  let peer = state.peers.get(id);
  if (peer && gen && peer.gen && peer.gen !== gen) { // the other page reloaded
    closePeer(id, false);
    peer = null;
  }
  if (peer) {
    if (gen) peer.gen = gen;
    return peer;
  }
  const { pc, warmed } = takeConnection();
  peer = { id, pc, polite: state.me > id, makingOffer: false, ignoreOffer: false, gen };
  state.peers.set(id, peer);
  pc.onnegotiationneeded = async () => {
    try {
      peer.makingOffer = true;
      await pc.setLocalDescription();
      mark("offer");
      send({ type: "signal", to: id, payload: { gen: generation, description: pc.localDescription } });
    } catch (error) {
      console.warn("negotiation", error);
    } finally {
      peer.makingOffer = false;
    }
  };
  // The newcomer offers (see "peer-joined" in main.js); a warmed connection told it needed
  // negotiation before anyone listened, so it offers now. One that answers (gen) waits.
  if (warmed && !gen && pc.getSenders().length) {
    queueMicrotask(() => {
      if (!pc.remoteDescription && !peer.makingOffer && pc.signalingState === "stable") {
        pc.onnegotiationneeded();
      }
    });
  }
  pc.onicecandidate = ({ candidate }) => {
    if (candidate) send({ type: "signal", to: id, payload: { gen: generation, candidate } });
  };
  pc.ontrack = ({ streams, track }) => {
    const video = tile(id).querySelector("video");
    video.srcObject = streams[0] || new MediaStream([track]);
    video.play().catch(() => {});
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected") mark("connected");
    if (pc.connectionState === "failed") pc.restartIce();
  };
  tile(id);
  return peer;
}

export async function onSignal(from, payload) {
  const peer = peerConnection(from, payload.gen);
  const pc = peer.pc;
  try {
    if (payload.description) {
      const description = payload.description;
      const collision = description.type === "offer"
        && (peer.makingOffer || pc.signalingState !== "stable");
      peer.ignoreOffer = !peer.polite && collision;
      if (peer.ignoreOffer) return;
      await pc.setRemoteDescription(description);
      mark(description.type);
      if (description.type === "offer") {
        await pc.setLocalDescription();
        send({ type: "signal", to: from, payload: { gen: generation, description: pc.localDescription } });
      }
    } else if (payload.candidate) {
      try {
        await pc.addIceCandidate(payload.candidate);
      } catch (error) {
        if (!peer.ignoreOffer) throw error;
      }
    }
  } catch (error) {
    console.warn("signal", error);
  }
}

export function closePeer(id, removeTile = true) {
  const peer = state.peers.get(id);
  if (peer) peer.pc.close();
  state.peers.delete(id);
  if (removeTile) document.querySelector(`.tile[data-peer="${id}"]`)?.remove();
}

export function closeAll() {
  for (const id of [...state.peers.keys()]) closePeer(id);
  if (spare) spare.close();
  spare = null;
}
