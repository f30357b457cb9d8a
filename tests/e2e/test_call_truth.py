"""A page that never lies: two real browsers go through random sequences of grant, withdraw,
start, stop, leave, rejoin and a dropped signaling socket. After each step the server's own
record (the recordings API: which tracks have an open file) must match what the step implies,
both pages must show exactly that for every person within 1 s, and no file may grow for a
track whose purpose is not granted. The seed is printed (`CALLGATE_TEST_SEED` replays one)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from core.purposes import RecordingAccess
from tests.e2e.test_call_page import open_join, seed
from tests.support.liveserver import LiveServer
from tests.support.signaling import Person

pytestmark = pytest.mark.e2e

SEQUENCES = 30
STEPS = 3  # per sequence
KINDS = ("audio", "video")
PAGE_DEADLINE_S = 1.0  # the pages show the server's record within this
SERVER_DEADLINE_S = 30.0  # the server reaches the state a step implies within this


@pytest.fixture
def live_server_overrides() -> dict[str, Any]:
    return {"signaling_reconnect_grace_s": 1}


@dataclass
class Someone:
    person: Person
    page: Page
    present: bool = True
    granted: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(KINDS, False))


@dataclass
class Call:
    server: LiveServer
    http: httpx.AsyncClient
    booking_id: str
    host: Someone
    client: Someone
    on: bool = False
    sizes: dict[str, int] = field(default_factory=dict)  # ended recording id -> its file size

    @property
    def people(self) -> tuple[Someone, Someone]:
        return self.host, self.client

    def expected(self) -> dict[tuple[str, str], bool]:
        return {
            (str(s.person.id), kind): self.on and s.present and s.granted[kind]
            for s in self.people for kind in KINDS
        }

    async def rows(self) -> list[dict[str, Any]]:
        response = await self.http.get(
            f"/v1/bookings/{self.booking_id}/recordings",
            headers={"X-Join-Credential": self.host.person.credential},
        )
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()["recordings"]
        return rows


def recorded(rows: list[dict[str, Any]], who: str, kind: str) -> bool:
    return any(
        r["participant_id"] == who and r["kind"] == kind and r["ended_at"] is None for r in rows
    )


def shown(tracks: dict[str, bool]) -> str:
    parts = [kind for kind in KINDS if tracks[kind]]
    return f"recording {' and '.join(parts)}" if parts else "not recording"


TILES = """() => Object.fromEntries([...document.querySelectorAll('#tiles .tile')].map(
  (t) => [t.dataset.peer, t.querySelector('.rec').textContent]))"""


async def server_settles(call: Call, what: str) -> list[dict[str, Any]]:
    """The server's record once it matches the step (each track open iff recording is on, the
    person is in the call and allows that track)."""
    want = call.expected()
    deadline = time.monotonic() + SERVER_DEADLINE_S
    while True:
        rows = await call.rows()
        have = {key: recorded(rows, *key) for key in want}
        if have == want:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"after {what}: the server records {have}, expected {want}")
        await asyncio.sleep(0.1)


async def pages_agree(call: Call, rows: list[dict[str, Any]], what: str) -> None:
    """Both pages (those in the call) show every present person as the server records them."""
    truth = {
        str(s.person.id): shown({k: recorded(rows, str(s.person.id), k) for k in KINDS})
        for s in call.people
    }
    present = {str(s.person.id) for s in call.people if s.present}
    deadline = time.monotonic() + PAGE_DEADLINE_S
    for viewer in call.people:
        if not viewer.present:
            continue
        while True:
            tiles: dict[str, str] = await viewer.page.evaluate(TILES)
            wrong = {
                who: (tiles.get(who), truth[who]) for who in truth
                if (who in present and tiles.get(who) != truth[who])
                or (who not in present and tiles.get(who, "not recording") != "not recording")
            }
            if not wrong:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"after {what}: {viewer.person.name}'s page shows (shown, recorded) {wrong}"
                )
            await asyncio.sleep(0.05)


def file_sizes(server: LiveServer, rows: list[dict[str, Any]]) -> dict[str, int]:
    sizes = {}
    for row in rows:
        files = list(Path(server.settings.data_dir).rglob(f"{row['id']}*"))
        sizes[row["id"]] = sum(f.stat().st_size for f in files if f.is_file())
    return sizes


def nothing_grows_unless_granted(call: Call, rows: list[dict[str, Any]], what: str) -> None:
    sizes = file_sizes(call.server, rows)
    allowed = call.expected()
    for row in rows:
        key = (row["participant_id"], row["kind"])
        if allowed[key]:
            continue
        assert row["ended_at"] is not None, f"after {what}: {key} has an open file: {row}"
        # A file ended at the last check (and flushed by then) never changes again.
        before = call.sizes.get(row["id"])
        if before:
            assert sizes[row["id"]] == before, f"after {what}: the file of {key} grew: {row}"
    call.sizes = {row["id"]: sizes[row["id"]] for row in rows if row["ended_at"] is not None}


# the steps a person can take


async def choose(someone: Someone, kind: str, allow: bool) -> None:
    page = someone.page
    panel = page.locator("#consent-incall")
    if await panel.is_hidden():
        await page.get_by_role("button", name="Recording choices").click()
    fieldset = panel.locator(f"fieldset[data-purpose='recording.{kind}']")
    await fieldset.get_by_label("Allow" if allow else "Do not allow", exact=True).check()
    await expect(fieldset.locator(".decided")).to_contain_text(
        "granted" if allow else "withdrawn"
    )
    someone.granted[kind] = allow


async def switch(call: Call, on: bool) -> None:
    page = call.host.page
    label = {True: "Stop recording", False: "Start recording"}
    await page.get_by_role("button", name=label[call.on]).click()
    await expect(page.get_by_role("button", name=label[on])).to_be_visible()
    call.on = on


async def leave(someone: Someone) -> None:
    await someone.page.get_by_role("button", name="Leave").click()
    await expect(someone.page.locator("#ended")).to_be_visible()
    someone.present = False


async def join(someone: Someone) -> None:
    page = someone.page
    await expect(page.locator("#prejoin fieldset")).to_have_count(2)
    await page.get_by_role("button", name="Join the call").click()
    await expect(page.locator("#call")).to_be_visible()
    await page.wait_for_function("() => window.callgate.me !== null")
    someone.present = True


async def rejoin(someone: Someone) -> None:
    await someone.page.get_by_role("button", name="Join again").click()
    await join(someone)


async def drop_socket(someone: Someone) -> None:
    """The signaling socket drops (as on a network change); the page reconnects itself."""
    page = someone.page
    await page.evaluate("() => { window.callgate.me = null; window.callgate.socket.close(); }")
    await page.wait_for_function("() => window.callgate.me !== null", timeout=15_000)


Step = tuple[str, Callable[[], Awaitable[None]]]


def possible_steps(call: Call) -> list[Step]:
    steps: list[Step] = []
    for someone in call.people:
        name = someone.person.name
        if not someone.present:
            steps.append((f"{name} rejoins", lambda s=someone: rejoin(s)))
            continue
        for kind in KINDS:
            allow = not someone.granted[kind]
            verb = "allows" if allow else "withdraws"
            steps.append(
                (f"{name} {verb} {kind}", lambda s=someone, k=kind, a=allow: choose(s, k, a))
            )
        steps.append((f"{name} leaves", lambda s=someone: leave(s)))
        steps.append((f"{name}'s socket drops", lambda s=someone: drop_socket(s)))
    if call.host.present:
        on = not call.on
        steps.append((f"host {'starts' if on else 'stops'}", lambda: switch(call, on)))
    return steps


async def test_both_pages_show_what_the_server_records_through_random_sequences(
    browser: Browser, live_server: LiveServer
) -> None:
    seed_value = int(os.environ.get("CALLGATE_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"CALLGATE_TEST_SEED={seed_value}")
    rng = random.Random(seed_value)
    # `participants`: the host's link reads every person's rows, the server's whole view.
    seeded = await seed(live_server, access=RecordingAccess.PARTICIPANTS)
    host_page = await open_join(browser, live_server, seeded.host)
    client_page = await open_join(browser, live_server, seeded.client)
    async with httpx.AsyncClient(base_url=live_server.base_url, trust_env=False) as http:
        call = Call(
            live_server, http, str(seeded.booking_id),
            Someone(seeded.host, host_page), Someone(seeded.client, client_page),
        )
        for someone in call.people:
            await join(someone)
        done: list[str] = []
        for sequence in range(SEQUENCES):
            for _ in range(STEPS):
                what, step = rng.choice(possible_steps(call))
                done.append(what)
                label = f"sequence {sequence}, {what} (seed {seed_value}; steps: {done[-8:]})"
                await step()
                rows = await server_settles(call, label)
                await pages_agree(call, rows, label)
                nothing_grows_unless_granted(call, rows, label)


async def test_withdrawing_everything_shows_not_recording_on_both_pages(
    browser: Browser, live_server: LiveServer
) -> None:
    """The case from the report: the client withdraws video, then audio; their page closes its
    recording connection, and both pages must stop saying "recording audio"."""
    # `participants`: the host's link reads every person's rows, the server's whole view.
    seeded = await seed(live_server, access=RecordingAccess.PARTICIPANTS)
    host_page = await open_join(browser, live_server, seeded.host)
    client_page = await open_join(browser, live_server, seeded.client)
    async with httpx.AsyncClient(base_url=live_server.base_url, trust_env=False) as http:
        call = Call(
            live_server, http, str(seeded.booking_id),
            Someone(seeded.host, host_page), Someone(seeded.client, client_page),
        )
        for someone in call.people:
            await join(someone)
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("host allows audio", lambda: choose(call.host, "audio", True)),
            ("client allows audio", lambda: choose(call.client, "audio", True)),
            ("client allows video", lambda: choose(call.client, "video", True)),
            ("host starts", lambda: switch(call, True)),
            ("client withdraws video", lambda: choose(call.client, "video", False)),
            ("client withdraws audio", lambda: choose(call.client, "audio", False)),
        ]
        for what, step in steps:
            await step()
            rows = await server_settles(call, what)
            await pages_agree(call, rows, what)
            nothing_grows_unless_granted(call, rows, what)
        await client_page.wait_for_function("() => window.callgate.recorder === null")
        tile = host_page.locator(f".tile[data-peer='{seeded.client.id}'] .rec")
        await expect(tile).to_have_text("not recording")
