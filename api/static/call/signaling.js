// Signaling: the WebSocket to callgate (docs/signaling.md), reconnection with a fresh ticket,
// and the keep-alive ping. What each message means is the entry module's business.

import { mark, requestJoin, say, state } from "./state.js";

let handlers = { message: () => {}, end: () => {} };

// `message(object)` for each message; `end(text)` when the call cannot go on.
export function onSignaling(given) { handlers = given; }

export function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
  }
}

// `hold`: open on the pre-join screen; the server admits nobody until `join` (the click).
export function connect({ hold = false } = {}) {
  const ticket = encodeURIComponent(state.grant.builtin.ticket);
  const socket = new WebSocket(`${state.grant.builtin.ws_url}?ticket=${ticket}${hold ? "&hold=1" : ""}`);
  state.socket = socket;
  socket.onopen = () => mark("socket");
  socket.onmessage = (event) => {
    try { handlers.message(JSON.parse(event.data)); } catch (error) { console.warn(error); }
  };
  socket.onclose = (event) => {
    if (state.socket !== socket || state.leaving) return;
    if (!state.joined) { // the waiting socket: open another for the click, with a fresh ticket
      state.socket = null;
      clearTimeout(lobbyTimer);
      lobbyTimer = setTimeout(() => refreshLobby().catch(() => {}), 1000);
      return;
    }
    if ([4401, 4403, 4404, 4410].includes(event.code) && state.retries > 2) {
      handlers.end(`The call could not continue (${event.reason || event.code}).`);
      return;
    }
    reconnect();
  };
  clearInterval(state.pingTimer);
  state.pingTimer = setInterval(() => send({ type: "ping" }), 15000);
  if (hold) { // a ticket lives a minute: replace the waiting socket before it expires
    const left = new Date(state.grant.builtin.ticket_expires_at) - Date.now();
    clearTimeout(lobbyTimer);
    lobbyTimer = setTimeout(() => refreshLobby().catch(() => {}), Math.max(5000, left - 10000));
  }
}

// The pre-join screen's socket: connected and waiting, so the click costs no handshake.
let lobbyTimer = null;

// Resolves once the waiting socket is open (or could not be: the click then makes another).
export function openLobby() {
  if (!state.grant || state.grant.mode !== "builtin" || state.joined) return Promise.resolve();
  connect({ hold: true });
  return settled(state.socket);
}

function settled(socket) {
  if (socket.readyState !== WebSocket.CONNECTING) return Promise.resolve();
  return new Promise((resolve) => {
    socket.addEventListener("open", resolve, { once: true });
    socket.addEventListener("close", resolve, { once: true });
  });
}

async function refreshLobby() {
  if (state.joined || state.leaving) return;
  const old = state.socket;
  state.socket = null;
  if (old) old.close(1000);
  state.grant = await requestJoin();
  if (!state.joined) connect({ hold: true });
}

// Forget the waiting socket (it could not be used): its closing is nobody's business.
export function dropLobby() {
  clearTimeout(lobbyTimer);
  const old = state.socket;
  state.socket = null;
  if (old) old.close(1000);
}

// The click: say `join` on the waiting socket; false if there is none to use.
export async function joinLobby() {
  clearTimeout(lobbyTimer);
  const socket = state.socket;
  if (socket) await settled(socket); // still connecting: a moment, not a new handshake
  if (!socket || state.socket !== socket || socket.readyState !== WebSocket.OPEN) return false;
  if (new Date(state.grant.builtin.ticket_expires_at) - Date.now() < 2000) return false;
  socket.send(JSON.stringify({ type: "join" }));
  return true;
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
      handlers.end(error.message);
    } else {
      reconnect();
    }
  }
}

export function disconnect() {
  clearInterval(state.pingTimer);
  clearTimeout(lobbyTimer);
  if (state.socket) state.socket.close(1000);
}
