"""TURN credentials from callgate against a real coturn with `use-auth-secret`.

The test starts `/usr/bin/turnserver` on a free loopback port, takes the TURN credential from
`POST /v1/join` and allocates a relay with aioice's TURN client; an already-expired credential
built by the same function is refused.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from core.accounts import Scope
from core.clock import ManualClock
from signaling.ice import turn_credential
from tests.support.bookings import book, credential_of

pytestmark = pytest.mark.usefixtures("database_url")

SECRET = "coturn-static-auth-secret-for-tests"
TURNSERVER = "/usr/bin/turnserver"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def coturn(tmp_path: Path) -> AsyncIterator[int]:
    """coturn on a free loopback port, REST-API auth with SECRET; yields once it serves."""
    port = free_udp_port()
    relay = free_udp_port()
    log = tmp_path / "turn.log"
    process = await asyncio.create_subprocess_exec(
        TURNSERVER, "-n",
        "--listening-ip=127.0.0.1", f"--listening-port={port}",
        "--relay-ip=127.0.0.1", f"--min-port={relay}", f"--max-port={relay + 20}",
        "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=callgate.test",
        "--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay", "--allow-loopback-peers",
        f"--userdb={tmp_path / 'turndb'}", f"--pidfile={tmp_path / 'turn.pid'}",
        f"--log-file={log}", "--simple-log", "--no-stdout-log",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            if log.exists() and "Total General servers" in log.read_text(errors="replace"):
                break
            assert process.returncode is None, "coturn exited"
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("coturn did not start")
        yield port
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture
def settings_overrides(coturn: int) -> dict[str, Any]:
    return {
        "turn_urls": [f"turn:127.0.0.1:{coturn}?transport=udp"],
        "turn_secret": SECRET,
        "turn_credential_ttl_s": 600,
    }


class Relay(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def allocate(port: int, username: str, password: str) -> tuple[str, int]:
    """A TURN allocation on coturn with these credentials; its relayed address."""
    transport, protocol = await create_turn_endpoint(
        Relay, ("127.0.0.1", port), username, password, lifetime=60
    )
    relayed: tuple[str, int] = transport.get_extra_info("sockname")
    transport.close()  # deletes the allocation (a Refresh with lifetime 0)
    await asyncio.wait_for(protocol.closed, 10)
    return relayed


async def test_coturn_accepts_callgate_credential_and_refuses_an_expired_one(
    client: httpx.AsyncClient,
    api_keys: dict[Scope, str],
    clock: ManualClock,
    coturn: int,
) -> None:
    created = await book(client, api_keys[Scope.SCHEDULER], clock.now(), minutes=30)
    joined = (await client.post("/v1/join", json={"credential": credential_of(
        created["participants"][1])})).json()
    turn = next(s for s in joined["builtin"]["ice_servers"] if s.get("username"))
    relayed = await allocate(coturn, turn["username"], turn["credential"])
    assert relayed[0] == "127.0.0.1"
    assert relayed[1] > 0

    past = clock.now() - timedelta(hours=2)
    expired = turn_credential(
        SECRET, uuid.UUID(created["participants"][1]["id"]), past, timedelta(minutes=10),
        past + timedelta(hours=1),
    )
    assert int(expired.username.split(":")[0]) < clock.now().timestamp()
    with pytest.raises(stun.TransactionFailed) as refused:
        await allocate(coturn, expired.username, expired.password)
    assert refused.value.response.attributes["ERROR-CODE"][0] == 401

    wrong = turn_credential(
        "not-the-secret", uuid.UUID(created["participants"][1]["id"]), clock.now(),
        timedelta(minutes=10), clock.now() + timedelta(hours=1),
    )
    with pytest.raises(stun.TransactionFailed):
        await allocate(coturn, wrong.username, wrong.password)
