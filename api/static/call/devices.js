// Camera and microphone: the preview, the device lists, and the mute / camera-off switches.

import { $, state } from "./state.js";

// Open the chosen camera and microphone; true when a stream is ready. Whoever holds a
// connection puts the new tracks on it (the entry module, through `onMediaChanged`).
export async function openMedia() {
  const camera = $("camera").value;
  const microphone = $("microphone").value;
  const constraints = {
    video: camera ? { deviceId: { exact: camera } } : true,
    audio: microphone ? { deviceId: { exact: microphone } } : true,
  };
  try {
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = stream;
    $("preview").srcObject = stream;
    $("media-error").hidden = true;
    return true;
  } catch (error) {
    $("media-error").textContent = `Camera or microphone unavailable: ${error.message}`;
    $("media-error").hidden = false;
    return false;
  }
}

export async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, select] of [["videoinput", $("camera")], ["audioinput", $("microphone")]]) {
    const chosen = select.value;
    select.replaceChildren(...devices.filter((d) => d.kind === kind).map((d, i) => {
      const option = document.createElement("option");
      option.value = d.deviceId;
      option.textContent = d.label || `${kind === "videoinput" ? "Camera" : "Microphone"} ${i + 1}`;
      return option;
    }));
    if (chosen) select.value = chosen;
  }
}

export function myTrack(kind) {
  return state.stream ? state.stream.getTracks().find((t) => t.kind === kind) || null : null;
}

// Put my current tracks on a connection: replace what it sends, add what it lacks
// (adding renegotiates through onnegotiationneeded).
export function replaceTracks(pc) {
  if (!state.stream) return;
  const senders = pc.getSenders();
  for (const track of state.stream.getTracks()) {
    const sender = senders.find((s) => s.track && s.track.kind === track.kind);
    if (sender) sender.replaceTrack(track);
    else pc.addTrack(track, state.stream);
  }
}

// The mute and camera-off buttons: the track stays, it sends silence / black.
export function toggleTrack(button, kind, onText, offText) {
  const off = button.getAttribute("aria-pressed") !== "true";
  for (const track of state.stream ? state.stream.getTracks() : []) {
    if (track.kind === kind) track.enabled = !off;
  }
  button.setAttribute("aria-pressed", String(off));
  button.textContent = off ? offText : onText;
}
