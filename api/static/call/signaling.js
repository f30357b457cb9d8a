// Signaling: the WebSocket to callgate (docs/signaling.md), reconnection with a fresh ticket,
// and the keep-alive ping. What each message means is the entry module's business.

import { requestJoin, say, state } from "./state.js";

let handlers = { message: () => {}, end: () => {} };

// `message(object)` for each message; `end(text)` when the call cannot go on.
export function onSignaling(given) { handlers = given; }

export function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
  }
}

export function connect() {
  const url = `${state.grant.builtin.ws_url}?ticket=${encodeURIComponent(state.grant.builtin.ticket)}`;
  const socket = new WebSocket(url);
  state.socket = socket;
  socket.onmessage = (event) => {
    try { handlers.message(JSON.parse(event.data)); } catch (error) { console.warn(error); }
  };
  socket.onclose = (event) => {
    if (state.socket !== socket || state.leaving) return;
    if ([4401, 4403, 4404, 4410].includes(event.code) && state.retries > 2) {
      handlers.end(`The call could not continue (${event.reason || event.code}).`);
      return;
    }
    reconnect();
  };
  clearInterval(state.pingTimer);
  state.pingTimer = setInterval(() => send({ type: "ping" }), 15000);
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
  if (state.socket) state.socket.close(1000);
}
