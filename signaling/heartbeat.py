"""The presence heartbeat of a node's rooms, with Redis behind them (`signaling.fanout`).

Each beat pushes this node's presence entries forward and reconciles every room with everyone
else's: a missed pub/sub message or a dead node is corrected here. The hub (`signaling.hub`)
runs it from its sweep; it knows the rooms only through `signaling.room`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from signaling.fanout import Fanout
from signaling.protocol import Peer
from signaling.room import Room

BEAT_SLICE = 50  # rooms (or presence entries) per Redis round trip of the heartbeat


async def beat(
    fanout: Fanout, rooms: dict[str, Room], node_id: str, gone: Callable[[Room, str], None]
) -> None:
    """Push this node's presence forward and reconcile with everyone else's, a slice of
    rooms per Redis round trip: building and parsing a whole node's worth at once (a
    thousand entries) held the event loop long enough to show in relay latency. `gone` is
    told of each person whose own node stopped renewing their entry (it died: someone must
    tell the gate, idempotent if several nodes do)."""
    mine = list(_mine(rooms, node_id))
    for start in range(0, len(mine), BEAT_SLICE):
        await fanout.present(mine[start:start + BEAT_SLICE])
    names = list(rooms)
    for start in range(0, len(names), BEAT_SLICE):
        members = await fanout.members_of(names[start:start + BEAT_SLICE])
        for name, present in members.items():
            live = rooms.get(name)
            if live is not None:
                for pid in live.reconcile(present, node_id):
                    gone(live, pid)


def _mine(rooms: dict[str, Room], node_id: str) -> Iterable[tuple[str, Peer]]:
    for room in rooms.values():
        for pid in [*room.local, *room.leaving]:
            if pid in room.peers and room.nodes.get(pid) == node_id:
                yield room.name, room.peers[pid]
