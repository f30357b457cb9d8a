"""The API under a schema fuzzer: schemathesis, every check enabled, over every operation of the
OpenAPI document, once per kind of caller (an API key of each scope, a host's and a client's
join link), against a real server. It must find nothing: no 5xx, and every answer has a
documented status, content type and schema. The figures go to docs/security.md.

Bounded so it fits CI: a fixed seed and `MAX_EXAMPLES` generated cases per operation and phase.
The failure limit on join credentials is lifted for this server (the limiter has its own tests
in test_limits.py), and AI jobs go to the OpenAI stand-in (without a provider, asking for a job
is a documented 503); everything else runs as configured by default.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.accounts import Scope, do_create_key
from core.clock import SystemClock
from core.database import Database
from tests.standins.openai import OpenAIStandIn
from tests.support import databases as support
from tests.support.bookings import bearer, booking_body, credential_of
from tests.support.liveserver import ROOT, LiveServer, start_server

MAX_EXAMPLES = 6
SEED = "20261130"
CONFIG = ROOT / "tests" / "fuzz" / "schemathesis.toml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@contextmanager
def openai_standin() -> Iterator[str]:
    """The OpenAI stand-in on its own event loop in a thread (this test is synchronous); its
    base URL."""
    started: queue.Queue[str] = queue.Queue()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
        async with OpenAIStandIn() as server:
            started.put(server.base_url)
            await holder["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield started.get(timeout=60)
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)


def api_keys(database_url: str) -> dict[Scope, str]:
    async def make() -> dict[Scope, str]:
        db = Database(database_url)
        try:
            async with db.session() as session:
                now = SystemClock().now()
                return {s: (await do_create_key(session, s, "fuzz", now))[1] for s in Scope}
        finally:
            await db.close()

    return support.run_blocking(make)


def fuzz(base_url: str, header: str, reports: Path) -> subprocess.Popen[str]:
    """Start one schemathesis run with `header` on every request (its JSON report goes to
    `reports`)."""
    reports.mkdir(parents=True)
    command = [
        str(SCHEMATHESIS), "--config-file", str(CONFIG), "--no-color", "run",
        f"{base_url}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
        "--seed", SEED, "--workers", "1", "--phases", "examples,coverage,fuzzing",
        "--wait-for-schema", "60", "--request-timeout", "30", "-H", header,
        "--report", "json", "--report-dir", str(reports),
    ]
    return subprocess.Popen(command, cwd=reports, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def report_of(run: subprocess.Popen[str], reports: Path) -> dict[str, Any]:
    output, _ = run.communicate(timeout=1500)
    found = sorted(reports.glob("*.json"))
    assert found, output
    report: dict[str, Any] = json.loads(found[-1].read_text())
    report["output"] = output[-20_000:]
    return report


def run_everyone(keys: dict[Scope, str], server: LiveServer, tmp_path: Path) -> dict[
    str, dict[str, Any]
]:
    """Book a session on `server`, then fuzz it as every caller at once; the reports."""
    try:
        created = httpx.post(
            f"{server.base_url}/v1/bookings", headers=bearer(keys[Scope.SCHEDULER]),
            json=booking_body(datetime.now(UTC), purposes=[
                "recording.audio", "recording.video", "transcription", "ai.summary",
                "ai.agenda",
            ]), timeout=30,
        )
        assert created.status_code == 201, created.text
        host, client = (credential_of(p) for p in created.json()["participants"])
        callers = {f"key:{s.value}": f"Authorization: Bearer {k}" for s, k in keys.items()}
        callers["link:host"] = f"X-Join-Credential: {host}"
        callers["link:client"] = f"X-Join-Credential: {client}"
        folders = {who: tmp_path / who.replace(":", "-") for who in callers}
        # The callers in parallel: the fuzzer's own work (generating cases) dominates.
        runs = {who: fuzz(server.base_url, header, folders[who])
                for who, header in callers.items()}
        results = {who: report_of(run, folders[who]) for who, run in runs.items()}
    finally:
        server.stop()
    return results


@pytest.mark.timeout(1800)
def test_the_fuzzer_finds_nothing(sqlite_url: str, tmp_path: Path) -> None:
    keys = api_keys(sqlite_url)
    with openai_standin() as openai_url:
        overrides = {"join_failures_per_minute": 10**6, "openai_base_url": openai_url,
                     "openai_api_key": "fuzz"}
        results = run_everyone(keys, start_server(sqlite_url, tmp_path / "data", overrides),
                               tmp_path)
    rows = [
        f"{who}: {r['operations']['tested']} operations, {r['test_cases']['generated']} cases, "
        f"{r['test_cases']['unique_failures']} failures, {r['running_time']:.0f} s"
        for who, r in results.items()
    ]
    print("\n".join(["schemathesis figures:", *rows]))
    failed = {who: r["output"] for who, r in results.items()
              if r["exit_code"] != 0 or r["failures"] or r["errors"]}
    assert not failed, "\n\n".join(f"== {who}\n{out}" for who, out in failed.items())
    for result in results.values():
        assert result["operations"]["tested"] == result["operations"]["total"]
        assert result["operations"]["total"] >= 40
