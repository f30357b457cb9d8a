"""Probes shared by the recorder tests and the recording benchmark."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from consent.ledger import Entry
from consent.purposes import Decision


@contextlib.contextmanager
def withdrawal_commits() -> Iterator[list[float]]:
    """Wall-clock times at which a transaction inserting a withdrawal finished committing."""
    times: list[float] = []

    def after_flush(session: Session, _context: Any) -> None:
        if any(isinstance(o, Entry) and o.decision is Decision.WITHDRAWN for o in session.new):
            session.info["withdrawal"] = True

    def on_execute(state: ORMExecuteState) -> None:
        # The ledger writer's one-statement append on PostgreSQL (no ORM objects): the
        # decisions travel as an array parameter.
        params = state.parameters
        if isinstance(params, dict) and Decision.WITHDRAWN.value in (params.get("decision") or ()):
            state.session.info["withdrawal"] = True

    def after_commit(session: Session) -> None:
        if session.info.pop("withdrawal", False):
            times.append(time.time())

    event.listen(Session, "after_flush", after_flush)
    event.listen(Session, "do_orm_execute", on_execute)
    event.listen(Session, "after_commit", after_commit)
    try:
        yield times
    finally:
        event.remove(Session, "after_flush", after_flush)
        event.remove(Session, "do_orm_execute", on_execute)
        event.remove(Session, "after_commit", after_commit)


async def offer_to_recorder(
    client: httpx.AsyncClient, headers: dict[str, str], pc: RTCPeerConnection
) -> None:
    """Connect a page's send-only `pc` to the recording peer, as the call page does (one
    non-trickle offer to `POST /v1/recording/offer`, its answer applied)."""
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
    response = await client.post("/v1/recording/offer", headers=headers, json=offer)
    assert response.status_code == 200, response.text
    await pc.setRemoteDescription(RTCSessionDescription(**response.json()))
