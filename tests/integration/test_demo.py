"""What `make run` seeds works: the printed links join, the printed keys authenticate."""

from __future__ import annotations

import httpx

from api.demo import seed_demo
from core.runtime import Runtime
from tests.support.bookings import bearer


async def test_demo_links_and_keys_work(runtime: Runtime, client: httpx.AsyncClient) -> None:
    demo = await seed_demo(runtime)
    assert demo.created
    for link in (demo.host_link, demo.client_link):
        credential = link.rsplit("/join/", 1)[1]
        joined = await client.post("/v1/join", json={"credential": credential})
        assert joined.status_code == 200, joined.text
    roles = {
        (await client.post("/v1/join", json={"credential": link.rsplit("/", 1)[1]})).json()[
            "participant"
        ]["role"]
        for link in (demo.host_link, demo.client_link)
    }
    assert roles == {"host", "client"}
    path = f"/v1/bookings/{demo.booking_id}"
    booking = await client.get(path, headers=bearer(demo.scheduler_key))
    assert booking.status_code == 200
    log = await client.get("/v1/admin/consent-log", headers=bearer(demo.admin_key))
    assert log.status_code == 200


async def test_second_start_reuses_the_live_demo(runtime: Runtime) -> None:
    first = await seed_demo(runtime)
    again = await seed_demo(runtime)
    assert not again.created
    assert again.booking_id == first.booking_id
    assert again.host_link == first.host_link
    assert again.admin_key == first.admin_key
