"""A real callgate server in a subprocess (uvicorn on a free port), for e2e and multi-node tests.

The process gets its whole configuration through `CALLGATE_*` variables, exactly as an operator
would run it; `stop()` is idempotent and `kill()` is a `kill -9` (a node that dies).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.settings import Settings
from tests import support

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env_value(value: Any) -> str:
    if isinstance(value, list | dict):
        import json

        return json.dumps(value)
    return str(value)


@dataclass
class LiveServer:
    """A running callgate process: its base URL and the settings it was started with."""

    base_url: str
    settings: Settings
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ws_base(self) -> str:
        return self.base_url.replace("http://", "ws://", 1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """Die at once, like a crashed node (SIGKILL, no shutdown hooks)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds the listening TCP socket on `port` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        held = {os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)}
    except OSError:
        return False
    return bool(inodes & held)


def start_server(
    database_url: str, data_dir: Path, overrides: dict[str, Any] | None = None
) -> LiveServer:
    """Start `uvicorn api.app:create_app` on a free port and wait until /healthz answers."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "secret_key": support.SECRET,
        "master_key": support.MASTER,
        "public_base_url": base_url,
        "log_level": "WARNING",
        "log_json": True,
    }
    values.update(overrides or {})
    settings = Settings(**values)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    env.update({f"CALLGATE_{k.upper()}": _env_value(v) for k, v in values.items()})
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"server-{port}.log"
    command = [
        sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--ws-max-size", str(64 * 1024), "--ws-per-message-deflate", "false",
        # as `callgate serve` runs it: its WebSocket protocol, X-Forwarded-For read by the app
        "--ws", "api.wsprotocol:SignalingProtocol", "--no-proxy-headers",
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = LiveServer(base_url, settings, process, log_path, port, env)
    deadline = time.monotonic() + 90  # a loaded CI machine can take long to import
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"callgate exited early:\n{server.log()}")
        try:
            # Another process may have taken the free port first: only our own listener counts.
            if listens(process.pid, port) and httpx.get(
                f"{base_url}/healthz", timeout=1
            ).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"callgate did not start:\n{server.log()}")
        time.sleep(0.1)
