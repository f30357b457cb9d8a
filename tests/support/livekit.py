"""The real LiveKit server for the LiveKit tests, and the load balancer its webhooks go to.

`make test` builds `livekit-server` from its Go module at a pinned release into var/bin
(`CALLGATE_TEST_LIVEKIT_SERVER` names the binary). `LiveKitServer` runs it in dev mode bound to
127.0.0.1 only, on free ports (HTTP for the API and signaling, RTC over TCP and one UDP port),
with loopback ICE candidates, the API key and secret callgate is given, and `webhook.urls`
pointing at a `Balancer`: a small round-robin HTTP forwarder standing where a deployment's load
balancer stands, whose backends (callgate nodes) each test sets. One server serves the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import itertools
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

ROOT = Path(__file__).resolve().parents[2]
LIVEKIT_SERVER_VERSION = "1.13.5"  # the Makefile's pin (LIVEKIT_SERVER)
BINARY = Path(
    os.environ.get("CALLGATE_TEST_LIVEKIT_SERVER")
    or ROOT / f"var/bin/livekit-server-{LIVEKIT_SERVER_VERSION}"
)
LK_KEY = "APIcallgate"
LK_SECRET = "callgate-test-livekit-secret-" + "k" * 24  # LiveKit wants >= 32 characters
WEBHOOK_PATH = "/v1/livekit/webhook"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Balancer:
    """Forwards each POST to the next backend in turn (another one if that one is down), as a
    load balancer in front of callgate nodes does; answers 503 with no backend up."""

    def __init__(self) -> None:
        self.backends: list[str] = []
        self.delivered: list[tuple[str, int]] = []  # (backend, status) per forwarded request
        self.events: list[tuple[str, str, int]] = []  # LiveKit's (event, room, status)
        self._turn = itertools.count()
        self._lock = threading.Lock()
        balancer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() in ("authorization",
                                                                           "content-type")
                }
                status, answer = balancer.forward(self.path, body, headers)
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def forward(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        with self._lock:
            backends = list(self.backends)
            start = next(self._turn)
        for i in range(len(backends)):
            backend = backends[(start + i) % len(backends)]
            try:
                answer = httpx.post(backend + path, content=body, headers=headers, timeout=10)
            except httpx.HTTPError:
                continue  # that node is down: the next one takes it
            with self._lock:
                self.delivered.append((backend, answer.status_code))
                self.events.append((*_event_of(body), answer.status_code))
            return answer.status_code, answer.content
        return 503, b"no backend"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _event_of(body: bytes) -> tuple[str, str]:
    try:
        event = json.loads(body)
    except ValueError:
        return "", ""
    room = event.get("room", {}).get("name", "") or event.get("egressInfo", {}).get("roomName", "")
    return str(event.get("event", "")), str(room)


@dataclass
class LiveKitServer:
    """A livekit-server process; `url` is what callgate's `livekit_url` is set to."""

    binary: Path
    workdir: Path
    webhook_url: str
    key: str = LK_KEY
    secret: str = LK_SECRET
    port: int = field(default_factory=free_port)
    tcp_port: int = field(default_factory=free_port)
    udp_port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "livekit.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def config(self) -> str:
        return "\n".join([
            f"port: {self.port}",
            "bind_addresses: [127.0.0.1]",
            "development: true",
            "rtc:",
            f"  tcp_port: {self.tcp_port}",
            f"  udp_port: {self.udp_port}",
            "  use_external_ip: false",
            "  node_ip: 127.0.0.1",
            "  enable_loopback_candidate: true",
            "keys:",
            f"  {self.key}: {self.secret}",
            "webhook:",
            f"  api_key: {self.key}",
            f"  urls: [{self.webhook_url}{WEBHOOK_PATH}]",
            "room:",
            "  auto_create: false",  # only rooms callgate created exist
            "logging:",
            "  level: info",
            "",
        ])

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "livekit.yaml"
        config.write_text(self.config())
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [str(self.binary), "--config", str(config)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=self.workdir,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"livekit-server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"livekit-server did not start:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def livekit_binary() -> Path:
    """The built server; a missing one fails the test (never a skip): `make test` builds it."""
    if not BINARY.is_file() or not os.access(BINARY, os.X_OK):
        pytest.fail(f"livekit-server is missing at {BINARY}: `make test` builds it")
    return BINARY


@pytest.fixture(scope="session")
def balancer() -> Iterator[Balancer]:
    """Where LiveKit sends its webhooks; a test sets `balancer.backends` to its nodes."""
    front = Balancer()
    try:
        yield front
    finally:
        front.close()


@pytest.fixture(scope="session")
def livekit_server(
    balancer: Balancer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveKitServer]:
    server = LiveKitServer(livekit_binary(), tmp_path_factory.mktemp("livekit"), balancer.url)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def webhook_backends(balancer: Balancer) -> Iterator[list[str]]:
    """The balancer's backends for this test (emptied afterwards)."""
    balancer.backends = []
    try:
        yield balancer.backends
    finally:
        balancer.backends = []


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """An app already running its lifespan, served by uvicorn on a free port (its base URL)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 30
    while not server.started:
        if task.done() or asyncio.get_running_loop().time() > deadline:
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
