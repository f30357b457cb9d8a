"""The demo `make run` seeds: two API keys and a booking starting now with a host and a client.

Keys are shown once by design; for the local demo they are also kept in
`data_dir/demo.json` (mode 0600) so every `make run` can print what to open. A demo booking
whose window has closed is replaced by a fresh one.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from core.accounts import Caller, Scope, do_create_key
from core.organizations import DEFAULT_ORG
from core.purposes import Purpose, RecordingPolicy
from core.runtime import Runtime
from signaling.bookings import (
    BookingRequest,
    Person,
    do_create_booking,
    get_booking,
    join_link,
)


@dataclass(frozen=True)
class Demo:
    scheduler_key: str
    admin_key: str
    booking_id: uuid.UUID
    host_link: str
    client_link: str
    created: bool


def _state_file(runtime: Runtime) -> Path:
    return runtime.settings.data_dir / "demo.json"


def _write_private(path: Path, data: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)


async def _keys(runtime: Runtime, state: dict[str, str]) -> dict[str, str]:
    if "scheduler_key" in state and "admin_key" in state:
        return state
    now = runtime.clock.now()
    async with runtime.db.session() as session:
        scheduler_row, scheduler = await do_create_key(session, Scope.SCHEDULER, "demo", now)
        _, admin = await do_create_key(session, Scope.ADMIN, "demo", now)
    return {
        "scheduler_key": scheduler,
        "scheduler_key_id": scheduler_row.id,
        "admin_key": admin,
    }


async def seed_demo(runtime: Runtime) -> Demo:
    """Seed (or refresh) the demo and return what to show."""
    path = _state_file(runtime)
    state: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    state = await _keys(runtime, state)
    now = runtime.clock.now()
    booking = None
    if "booking_id" in state:
        async with runtime.db.session() as session:
            booking = await get_booking(session, uuid.UUID(state["booking_id"]))
    created = booking is None or booking.ends_at <= now
    if created:
        start = now.replace(second=0, microsecond=0)
        request = BookingRequest(
            title="callgate demo session",
            stated_purpose="Try callgate: join as host in one window and as client in another.",
            language="en",
            starts_at=start,
            ends_at=start + timedelta(hours=2),
            host=Person(external_id="demo-host", display_name="Demo Host", adult=True),
            clients=[Person(external_id="demo-client", display_name="Demo Client", adult=True)],
            requested_purposes=list(Purpose),
            recording_policy=RecordingPolicy.PER_PARTICIPANT,
        )
        caller = Caller(
            key_id=state["scheduler_key_id"], scope=Scope.SCHEDULER, org_id=DEFAULT_ORG
        )
        booking, _ = await do_create_booking(runtime, caller, request)
        state["booking_id"] = str(booking.id)
    assert booking is not None  # noqa: S101 (narrowing: created above or read back)
    _write_private(path, state)
    host, client = booking.participants[0], booking.participants[1]
    return Demo(
        scheduler_key=state["scheduler_key"],
        admin_key=state["admin_key"],
        booking_id=booking.id,
        host_link=join_link(runtime, host),
        client_link=join_link(runtime, client),
        created=created,
    )


def describe(demo: Demo, base_url: str) -> str:
    return "\n".join(
        [
            "",
            "callgate is ready. Open:",
            f"  host join link:   {demo.host_link}",
            f"  client join link: {demo.client_link}",
            f"  admin page:       {base_url}/admin   (log in with the admin key)",
            f"  API docs:         {base_url}/docs",
            "",
            f"  scheduler API key: {demo.scheduler_key}",
            f"  admin API key:     {demo.admin_key}",
            "  (kept for this local demo in the data folder's demo.json, mode 0600)",
            "",
        ]
    )
