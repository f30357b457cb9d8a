// The call page: join link -> POST /v1/join -> pre-join (devices, name, consent) -> the call.
// Built-in mode: a peer-to-peer mesh of RTCPeerConnections signalled over callgate's
// WebSocket (docs/signaling.md), with "perfect negotiation" so two peers that offer at the
// same time settle without glare (W3C WebRTC 1.0, section 10.7 example). LiveKit mode: the
// livekit-client SDK loaded from the configured URL. No build step, no framework.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("config").textContent || "{}");
  const credential = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const $ = (id) => document.getElementById(id);
  const generation = Math.random().toString(36).slice(2); // this page load's PeerConnections

  const PURPOSE_LABELS = {
    "recording.audio": "Record my audio",
    "recording.video": "Record my video",
    "transcription": "Transcribe my speech",
    "ai.summary": "AI summary of the session",
    "ai.agenda": "AI agenda before the session",
  };

  const state = {
    grant: null,       // last POST /v1/join answer
    me: null,          // my participant id (from welcome)
    stream: null,      // my camera + microphone
    socket: null,
    leaving: false,
    retries: 0,
    peers: new Map(),  // peer id -> {id, name, role, pc, polite, makingOffer, ignoreOffer, gen}
    names: new Map(),
    consent: new Map(), // "who|purpose" -> decision
    recording: new Map(), // who -> {audio, video}
    myConsent: [],     // GET /v1/consent purposes
    pingTimer: null,
    mediaReady: Promise.resolve(),
    recorder: null,    // {pc, senders: {audio, video}}: my connection to the recording peer
    recordingOn: false, // whether recording is switched on for the booking (as far as we know)
    recordingPoll: null,
    controlSeq: 0,     // bumped by every authoritative start/stop we hear of (see checkRecording)
  };
  window.callgate = state; // for the browser tests (stats) and for debugging

  function say(text, where = "status") { $(where).textContent = text; }

  function problem(title, detail) {
    $("problem-title").textContent = title;
    $("problem-detail").textContent = detail;
    $("problem").hidden = false;
    $("prejoin").hidden = true;
    $("call").hidden = true;
    say("");
  }

  function formatWhen(iso) {
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    const text = new Intl.DateTimeFormat(undefined, {
      weekday: "long", year: "numeric", month: "long", day: "numeric",
      hour: "2-digit", minute: "2-digit", timeZoneName: "short",
    }).format(new Date(iso));
    return `${text} (${zone})`;
  }

  async function requestJoin() {
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

  function explain(error) {
    const body = error.body || {};
    if (error.status === 403 && body.code === "outside_join_window") {
      if (new Date(body.opens_at) > new Date()) {
        problem("Too early",
          `This session starts ${formatWhen(body.starts_at)}. ` +
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

  // consent

  async function loadConsent() {
    const response = await fetch("/v1/consent", { headers: { "X-Join-Credential": credential } });
    if (!response.ok) throw new Error(`consent: ${response.status}`);
    const body = await response.json();
    state.myConsent = body.purposes;
    renderConsent();
    syncRecorder();
  }

  function renderConsent() {
    for (const panel of document.querySelectorAll("[data-consent-panel]")) {
      const where = panel.closest("section").id || "pre";
      panel.replaceChildren(...state.myConsent.map((item) => consentFieldset(item, where)));
    }
  }

  function consentFieldset(item, where) {
    const fieldset = document.createElement("fieldset");
    fieldset.dataset.purpose = item.purpose;
    const legend = document.createElement("legend");
    legend.textContent = PURPOSE_LABELS[item.purpose] || item.purpose;
    const notice = document.createElement("p");
    notice.className = "notice";
    notice.textContent = item.notice.text;
    const name = `consent-${where}-${item.purpose}`;
    fieldset.append(legend, notice);
    for (const [value, label] of [["granted", "Allow"], ["denied", "Do not allow"]]) {
      const wrap = document.createElement("label");
      wrap.className = "choice";
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = name;
      radio.value = value;
      radio.checked = value === "granted" ? item.decision === "granted"
        : item.decision === "denied" || item.decision === "withdrawn";
      radio.addEventListener("change", () => decide(item, value));
      wrap.append(radio, document.createTextNode(label));
      fieldset.append(wrap);
    }
    const decided = document.createElement("p");
    decided.className = "decided";
    decided.textContent = item.decision ? `Your choice: ${item.decision}` : "Not decided yet: nothing is done.";
    fieldset.append(decided);
    return fieldset;
  }

  async function decide(item, choice) {
    const decision = choice === "granted" ? "granted"
      : item.decision === "granted" ? "withdrawn" : "denied";
    // A refusal stops the track going to the recorder before it is even saved; a grant
    // starts it only once saved (the server decides frame by frame either way).
    const kind = RECORDED_KINDS[item.purpose];
    if (kind && decision !== "granted") setSending(kind, false);
    const response = await fetch("/v1/consent", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Join-Credential": credential },
      body: JSON.stringify({ purpose: item.purpose, decision, notice_sha256: item.notice.sha256 }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      say(`Your choice was not saved: ${body.detail || response.status}`, state.me ? "call-status" : "status");
      await loadConsent();
      return;
    }
    item.decision = decision;
    renderConsent();
    syncRecorder();
    say(`Saved: ${PURPOSE_LABELS[item.purpose] || item.purpose}: ${decision}.`,
      state.me ? "call-status" : "status");
  }

  // devices

  async function openMedia() {
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
      for (const peer of state.peers.values()) replaceTracks(peer.pc);
      syncRecorder();
      const self = document.querySelector(`.tile[data-peer="${state.me}"] video`);
      if (self) self.srcObject = stream;
    } catch (error) {
      $("media-error").textContent = `Camera or microphone unavailable: ${error.message}`;
      $("media-error").hidden = false;
    }
  }

  async function listDevices() {
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

  function replaceTracks(pc) {
    const senders = pc.getSenders();
    for (const track of state.stream.getTracks()) {
      const sender = senders.find((s) => s.track && s.track.kind === track.kind);
      if (sender) sender.replaceTrack(track);
      else pc.addTrack(track, state.stream); // renegotiates (onnegotiationneeded)
    }
  }

  // the recording connection: a second RTCPeerConnection to callgate's recording peer
  // (docs/recording.md), carrying only the tracks my person currently consents to.

  const RECORDED_KINDS = { "recording.audio": "audio", "recording.video": "video" };

  function recordingRequested() {
    const requested = (state.grant && state.grant.booking.requested_purposes) || [];
    return requested.some((purpose) => purpose in RECORDED_KINDS);
  }

  function consents(kind) {
    const purpose = `recording.${kind}`;
    return state.myConsent.some((item) => item.purpose === purpose && item.decision === "granted");
  }

  function myTrack(kind) {
    return state.stream ? state.stream.getTracks().find((t) => t.kind === kind) || null : null;
  }

  function setSending(kind, on) {
    const sender = state.recorder && state.recorder.senders[kind];
    if (!sender) return;
    const track = on ? myTrack(kind) : null;
    if (sender.track !== track) sender.replaceTrack(track).catch((e) => console.warn("recorder", e));
  }

  // Connect while recording is on and I consent to at least one track; each sender carries
  // its track only while I consent to it (replaceTrack: no renegotiation needed).
  function syncRecorder() {
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
    const response = await fetch("/v1/recording/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Join-Credential": credential },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
    });
    if (!response.ok) throw new Error(`recording offer: ${response.status}`);
    if (state.recorder !== recorder) return;
    await pc.setRemoteDescription(await response.json());
  }

  function closeRecorder() {
    if (state.recorder) state.recorder.pc.close();
    state.recorder = null;
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
    const response = await fetch(`/v1/bookings/${state.grant.booking.id}/recordings`, {
      headers: { "X-Join-Credential": credential },
    });
    if (!response.ok) return;
    const body = await response.json();
    if (seq !== state.controlSeq) return;
    if (body.recording !== state.recordingOn) setRecordingOn(body.recording);
  }

  // The server's own word on a start or stop (its answer to ours, or the signaling push).
  function learnRecording(on) {
    state.controlSeq += 1;
    if (on !== state.recordingOn) setRecordingOn(on);
  }

  async function toggleRecording(event) {
    const button = event.currentTarget;
    button.disabled = true;
    const action = state.recordingOn ? "stop" : "start";
    state.controlSeq += 1; // a poll already on its way may predate this switch
    try {
      const response = await fetch(`/v1/bookings/${state.grant.booking.id}/recording/${action}`, {
        method: "POST",
        headers: { "X-Join-Credential": credential },
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        say(`Recording could not be switched ${action === "start" ? "on" : "off"}: ${body.detail || response.status}`, "call-status");
        return;
      }
      learnRecording(body.recording);
      say(body.recording ? "Recording is on: each person is recorded only as they allowed."
        : "Recording is off.", "call-status");
    } finally {
      button.disabled = false;
    }
  }

  function startRecordingWatch() {
    if (state.grant.mode !== "builtin" || !recordingRequested()) return;
    $("record-toggle").hidden = state.grant.participant.role !== "host";
    clearInterval(state.recordingPoll);
    state.recordingPoll = setInterval(() => checkRecording().catch(() => {}), 5000);
    checkRecording().catch(() => {});
  }

  // tiles

  function tile(id) {
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
    renderRecording(id);
    renderPeerConsent(id);
    return element;
  }

  function renderRecording(id) {
    const element = document.querySelector(`.tile[data-peer="${id}"] .rec`);
    if (!element) return;
    const rec = state.recording.get(id) || { audio: false, video: false };
    const parts = [rec.audio && "audio", rec.video && "video"].filter(Boolean);
    element.textContent = parts.length ? `recording ${parts.join(" and ")}` : "not recording";
    element.classList.toggle("on", parts.length > 0);
  }

  function renderPeerConsent(id) {
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

  // the mesh

  function send(message) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify(message));
    }
  }

  function peerConnection(id, gen) {
    let peer = state.peers.get(id);
    if (peer && gen && peer.gen && peer.gen !== gen) { // the other page reloaded
      closePeer(id, false);
      peer = null;
    }
    if (peer) {
      if (gen) peer.gen = gen;
      return peer;
    }
    const pc = new RTCPeerConnection({ iceServers: state.grant.builtin.ice_servers });
    peer = { id, pc, polite: state.me > id, makingOffer: false, ignoreOffer: false, gen };
    state.peers.set(id, peer);
    for (const track of state.stream ? state.stream.getTracks() : []) pc.addTrack(track, state.stream);
    pc.onnegotiationneeded = async () => {
      try {
        peer.makingOffer = true;
        await pc.setLocalDescription();
        send({ type: "signal", to: id, payload: { gen: generation, description: pc.localDescription } });
      } catch (error) {
        console.warn("negotiation", error);
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) send({ type: "signal", to: id, payload: { gen: generation, candidate } });
    };
    pc.ontrack = ({ streams, track }) => {
      const video = tile(id).querySelector("video");
      video.srcObject = streams[0] || new MediaStream([track]);
      video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") pc.restartIce();
    };
    tile(id);
    return peer;
  }

  async function onSignal(from, payload) {
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

  function closePeer(id, removeTile = true) {
    const peer = state.peers.get(id);
    if (peer) peer.pc.close();
    state.peers.delete(id);
    if (removeTile) document.querySelector(`.tile[data-peer="${id}"]`)?.remove();
  }

  function onMessage(message) {
    switch (message.type) {
      case "welcome": {
        state.me = message.id;
        state.retries = 0;
        state.names.set(message.id, $("display-name").value || message.name);
        for (const peer of message.peers) state.names.set(peer.id, peer.name);
        for (const item of message.consent) state.consent.set(`${item.who}|${item.purpose}`, item.decision);
        for (const item of message.recording) state.recording.set(item.who, item);
        // Whether recording is on (a booking recorded automatically is on from the start
        // unless its host stopped it) is the server's word: checkRecording, the
        // "recording-state" push; anyone already recorded means it is on.
        if (message.recording.some((r) => r.audio || r.video) && !state.recordingOn) {
          setRecordingOn(true);
        }
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
      case "recording":
        state.recording.set(message.who, message);
        renderRecording(message.who);
        if ((message.audio || message.video) && !state.recordingOn) setRecordingOn(true);
        break;
      case "recording-state":
        learnRecording(message.on === true);
        say(message.on ? "Recording is on: each person is recorded only as they allowed."
          : "Recording is off.", "call-status");
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
      replaced: "You joined from another tab or device; this one was closed.",
      idle: "The connection was idle for too long.",
    }[reason] || "The call ended.";
  }

  function connect() {
    const url = `${state.grant.builtin.ws_url}?ticket=${encodeURIComponent(state.grant.builtin.ticket)}`;
    const socket = new WebSocket(url);
    state.socket = socket;
    socket.onmessage = (event) => {
      try { onMessage(JSON.parse(event.data)); } catch (error) { console.warn(error); }
    };
    socket.onclose = (event) => {
      if (state.socket !== socket || state.leaving) return;
      if ([4401, 4403, 4404, 4410].includes(event.code) && state.retries > 2) {
        end(`The call could not continue (${event.reason || event.code}).`);
        return;
      }
      reconnect();
    };
  }

  async function reconnect() {
    state.retries += 1;
    const delay = Math.min(8000, 500 * 2 ** Math.min(state.retries, 4));
    say("Connection lost; reconnecting…", "call-status");
    await new Promise((resolve) => setTimeout(resolve, delay));
    if (state.leaving) return;
    try {
      state.grant = await requestJoin(); // a fresh single-use ticket
      connect();
    } catch (error) {
      if (error.status === 403 || error.status === 410 || error.status === 404) {
        state.leaving = true;
        end(error.message);
      } else {
        reconnect();
      }
    }
  }

  function end(text) {
    clearInterval(state.pingTimer);
    clearInterval(state.recordingPoll);
    closeRecorder();
    for (const id of [...state.peers.keys()]) closePeer(id);
    if (state.socket) state.socket.close(1000);
    $("call").hidden = true;
    $("ended").hidden = false;
    $("ended-detail").textContent = text;
    $("rejoin").focus();
  }

  async function joinCall(event) {
    event.preventDefault();
    $("join").disabled = true;
    await state.mediaReady; // peer connections are built with the camera and microphone
    try {
      state.grant = await requestJoin();
    } catch (error) {
      explain(error);
      return;
    }
    $("prejoin").hidden = true;
    $("call").hidden = false;
    $("problem").hidden = true;
    say("");
    renderConsent();
    if (state.grant.mode === "livekit") {
      await joinLivekit();
      return;
    }
    connect();
    state.pingTimer = setInterval(() => send({ type: "ping" }), 15000);
    startRecordingWatch();
    $("leave").focus();
  }

  // LiveKit mode: the SFU carries media; the same tiles and controls.

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`could not load ${src}`));
      document.head.append(script);
    });
  }

  async function joinLivekit() {
    try {
      await loadScript(config.livekitClientUrl);
      const { Room, RoomEvent } = window.LivekitClient;
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
      for (const track of state.stream.getTracks()) await room.localParticipant.publishTrack(track);
      state.livekit = room;
    } catch (error) {
      end(`Could not join: ${error.message}`);
    }
  }

  // controls

  function toggle(button, kind, onText, offText) {
    const off = button.getAttribute("aria-pressed") !== "true";
    for (const track of state.stream ? state.stream.getTracks() : []) {
      if (track.kind === kind) track.enabled = !off;
    }
    button.setAttribute("aria-pressed", String(off));
    button.textContent = off ? offText : onText;
  }

  function wire() {
    $("join-form").addEventListener("submit", joinCall);
    $("camera").addEventListener("change", openMedia);
    $("microphone").addEventListener("change", openMedia);
    $("mute").addEventListener("click", (e) => toggle(e.currentTarget, "audio", "Mute microphone", "Unmute microphone"));
    $("camera-toggle").addEventListener("click", (e) => toggle(e.currentTarget, "video", "Turn camera off", "Turn camera on"));
    $("record-toggle").addEventListener("click", toggleRecording);
    $("consent-toggle").addEventListener("click", (e) => {
      const panel = $("consent-incall");
      panel.hidden = !panel.hidden;
      e.currentTarget.setAttribute("aria-expanded", String(!panel.hidden));
      if (!panel.hidden) panel.querySelector("input")?.focus();
    });
    $("leave").addEventListener("click", () => {
      state.leaving = true;
      if (state.livekit) state.livekit.disconnect();
      end("You left the call. Your choices stay as you set them.");
    });
    $("rejoin").addEventListener("click", () => location.reload());
  }

  async function start() {
    wire();
    try {
      state.grant = await requestJoin();
    } catch (error) {
      explain(error);
      return;
    }
    const booking = state.grant.booking;
    $("title").textContent = booking.title;
    document.title = `callgate · ${booking.title}`;
    $("when").textContent = `${formatWhen(booking.starts_at)} to ${formatWhen(booking.ends_at)}`;
    $("display-name").value = state.grant.participant.display_name;
    $("prejoin").hidden = false;
    say("Check your camera and microphone, make your choices, then join.");
    state.mediaReady = openMedia().then(listDevices).catch(() => {});
    await Promise.all([
      loadConsent().catch((error) => say(`Could not load the consent choices: ${error.message}`)),
      state.mediaReady,
    ]);
  }

  start();
})();
