"""A signaling room as one node sees it: who is present (on any node), which sockets are here,
and the consent and recording state every newcomer is welcomed with.

The hub (`signaling.hub`) owns the rooms and drives them from sockets, the bus and other nodes;
a room only keeps its own state consistent and tells its local sockets.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from consent.purposes import Decision
from core.events import ConsentChanged, RecordingSwitched, TrackRecording
from signaling.connection import Connection
from signaling.fanout import Presence
from signaling.protocol import (
    ByeReason,
    Consent,
    ConsentState,
    IceServer,
    Peer,
    PeerJoined,
    PeerLeft,
    PeerUpdated,
    Recording,
    RecordingState,
    RecordingSwitch,
    Signal,
    Welcome,
    _Message,
    encode,
)


@dataclass
class Room:
    name: str
    booking_id: str
    closes_at: datetime
    peers: dict[str, Peer] = field(default_factory=dict)  # present, on any node
    nodes: dict[str, str] = field(default_factory=dict)  # peer id -> node holding the socket
    local: dict[str, Connection] = field(default_factory=dict)
    leaving: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    consent: dict[tuple[str, str], Decision] = field(default_factory=dict)
    recording: dict[str, RecordingState] = field(default_factory=dict)
    deadline: asyncio.TimerHandle | None = None  # fires at `closes_at` (the sweep backs it up)

    def broadcast(self, message: _Message, *, exclude: str | None = None) -> None:
        text = encode(message)
        for pid, conn in self.local.items():
            if pid != exclude:
                conn.send(text)

    def welcome(self, peer: Peer, ice_servers: list[IceServer], *, resumed: bool) -> Welcome:
        """What `peer` is greeted with: everyone else present, every decision and what is
        being recorded of whom."""
        return Welcome(
            id=peer.id, name=peer.name, role=peer.role, room=self.name,
            peers=[p for pid, p in self.peers.items() if pid != peer.id],
            consent=[
                ConsentState(who=who, purpose=purpose, decision=decision)
                for (who, purpose), decision in self.consent.items()
            ],
            recording=[
                self.recording.get(pid, RecordingState(who=pid)) for pid in self.peers
            ],
            ice_servers=ice_servers, resumed=resumed,
        )

    def rename(self, pid: str, name: str) -> None:
        """A name corrected: every page shows it."""
        peer = self.peers.get(pid)
        if peer is None or peer.name == name:
            return
        renamed = peer.model_copy(update={"name": name})
        self.peers[pid] = renamed
        conn = self.local.get(pid)
        if conn is not None:
            conn.peer = renamed
        self.broadcast(PeerUpdated(peer=renamed))

    def on_frame(self, data: dict[str, Any], node: str) -> bool:
        """A room event from node `node` (signaling/fanout.py). True when it replaced a
        socket here, so the room may now be unused."""
        kind = data.get("kind")
        if kind == "signal":
            text = data.get("text")
            if not isinstance(text, str):  # from a node of the version before "text"
                sender, payload = str(data["from"]), data["payload"]
                text = encode(Signal.model_construct(from_=sender, payload=payload))
            self.deliver(str(data["to"]), text)
        elif kind == "join":
            return self.remote_join(Peer.model_validate(data["peer"]), node)
        elif kind == "leave":
            self.remote_leave(str(data["id"]), node)
        return False

    def deliver(self, to: str, text: str) -> None:
        """A signal relayed from another node, as text, for `to`'s socket if it is here."""
        target = self.local.get(to)
        if target is not None and type(text) is str:
            target.send(text)

    def remote_join(self, peer: Peer, node: str) -> bool:
        """Another node took `peer`'s socket. True when that replaced a socket here (the same
        person connected again there: that one wins), so the room may now be unused."""
        pid = peer.id
        old = self.local.pop(pid, None)
        if old is not None:
            old.finish(ByeReason.REPLACED)
        pending = self.leaving.pop(pid, None)
        if pending is not None:
            pending.cancel()
        known = pid in self.peers
        self.peers[pid] = peer
        self.nodes[pid] = node
        if not known:
            self.broadcast(PeerJoined(peer=peer), exclude=pid)
        return old is not None

    def apply_consent(self, event: ConsentChanged) -> None:
        """Remember a decision and tell the room."""
        who, purpose = str(event.subject_id), event.purpose.value
        self.consent[(who, purpose)] = event.decision
        self.broadcast(Consent(who=who, purpose=purpose, decision=event.decision))

    def apply_recording(self, event: RecordingSwitched | TrackRecording) -> None:
        """The recorder's per-track states (`kind` audio/video, `state` recording/paused/idle)
        become per-person `recording` messages; the host's booking-wide start/stop (`control`)
        becomes `recording-state`, and a stop also turns everyone's tracks off."""
        if isinstance(event, RecordingSwitched):
            self.broadcast(RecordingSwitch(on=event.control == "started"))
            if event.control == "stopped":
                for who in list(self.recording):
                    self._set_recording(RecordingState(who=who))
            return
        who = str(event.subject_id)
        current = self.recording.get(who, RecordingState(who=who))
        on = event.state == "recording"
        self._set_recording(current.model_copy(update={event.kind: on}))

    def _set_recording(self, state: RecordingState) -> None:
        if self.recording.get(state.who, RecordingState(who=state.who)) == state:
            return
        self.recording[state.who] = state
        self.broadcast(Recording(who=state.who, audio=state.audio, video=state.video))

    def remote_leave(self, pid: str, node: str) -> None:
        """Another node says this person left (only that person's own node can)."""
        if self.nodes.get(pid) == node:
            self.peers.pop(pid, None)
            self.nodes.pop(pid, None)
            self.broadcast(PeerLeft(id=pid))

    def reconcile(self, present: dict[str, Presence], node_id: str) -> list[str]:
        """Match the room to Redis presence as seen from node `node_id`: people on other
        nodes whose entries expired are announced gone (and returned), people present
        elsewhere that this node missed are announced here."""
        gone = [
            pid for pid, node in self.nodes.items() if node != node_id and pid not in present
        ]
        for pid in gone:
            self.peers.pop(pid, None)
            self.nodes.pop(pid, None)
            self.broadcast(PeerLeft(id=pid))
        for pid, presence in present.items():
            if pid not in self.peers and presence.node != node_id:
                self.peers[pid] = presence.peer
                self.nodes[pid] = presence.node
                self.broadcast(PeerJoined(peer=presence.peer), exclude=pid)
        return gone
