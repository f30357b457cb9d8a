// LiveKit mode: the SFU carries media; the livekit-client SDK is loaded from callgate itself
// (or an operator's CDN) with Subresource Integrity, and the same tiles show who is there.

import { tile } from "./peers.js";
import { $, config, state } from "./state.js";

function loadScript(src, integrity) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    if (integrity) {
      script.integrity = integrity; // Subresource Integrity: that exact file or nothing
      script.crossOrigin = "anonymous";
    }
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(script);
  });
}

export async function joinLivekit(end) {
  try {
    await loadScript(config.livekitClientUrl, config.livekitClientIntegrity);
    const { Room, RoomEvent, Track } = window.LivekitClient;
    const room = new Room();
    state.me = state.grant.participant.id;
    state.names.set(state.me, $("display-name").value);
    tile(state.me).querySelector("video").srcObject = state.stream;
    room.on(RoomEvent.TrackSubscribed, (track, _pub, participant) => {
      state.names.set(participant.identity, participant.name || participant.identity);
      const element = tile(participant.identity).querySelector("video");
      const stream = element.srcObject instanceof MediaStream ? element.srcObject : new MediaStream();
      stream.addTrack(track.mediaStreamTrack);
      element.srcObject = stream;
    });
    room.on(RoomEvent.ParticipantDisconnected, (participant) => {
      document.querySelector(`.tile[data-peer="${participant.identity}"]`)?.remove();
    });
    room.on(RoomEvent.Disconnected, () => end("The call ended."));
    await room.connect(state.grant.livekit.url, state.grant.livekit.token);
    for (const track of state.stream.getTracks()) {
      // The token grants exactly these two sources; LiveKit refuses any other.
      const source = track.kind === "audio" ? Track.Source.Microphone : Track.Source.Camera;
      await room.localParticipant.publishTrack(track, { source });
    }
    state.livekit = room;
  } catch (error) {
    end(`Could not join: ${error.message}`);
  }
}
