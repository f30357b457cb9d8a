"""The service container: every long-lived domain service, built once in the app's lifespan.

`Services.open` enters each service on the lifespan's exit stack (so they close in reverse
order) and returns one typed object; routers receive what they need through the dependencies
in `api.deps` (`ServicesDep`, `GateDep`, `RecorderDep`, ...), never by a string key. It lives in
api/ because it names services of every domain.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

from api.subjects import privacy_service
from consent.live import LiveGate
from core.heap import fix_thresholds
from core.runtime import Runtime
from core.webhooksender import Sender
from media.audio import RecordedAudio
from media.egress import Egress
from media.recorder import Recorder
from privacy.service import Privacy
from signaling.hub import Hub
from signaling.join import JoinReader
from signaling.lifecycle import Lifecycle
from signaling.livekit import Rooms
from summaries.service import AiJobs, ai_jobs


@dataclass
class Services:
    runtime: Runtime
    # The live consent gate. Capture asks for it on every frame through `current_gate`; a
    # test may set it to None to take the gate away, and capture then fails closed.
    gate: LiveGate | None
    hub: Hub
    recorder: Recorder
    egress: Egress
    rooms: Rooms
    join: JoinReader
    ai_jobs: AiJobs
    privacy: Privacy
    lifecycle: Lifecycle
    webhooks: Sender

    @classmethod
    async def open(cls, runtime: Runtime, stack: AsyncExitStack) -> Services:
        """Enter every service on `stack`, in the order they depend on each other."""
        fix_thresholds(runtime.settings.heap_threshold_kib)
        gate = await stack.enter_async_context(LiveGate(runtime))
        built: list[Services] = []

        def current_gate() -> LiveGate | None:
            return built[0].gate if built else gate

        hub = await stack.enter_async_context(Hub(runtime))
        recorder = await stack.enter_async_context(Recorder(runtime, gate=current_gate))
        egress = await stack.enter_async_context(
            Egress(runtime, gate=current_gate, control=recorder.switch, store=recorder.store)
        )
        rooms = await stack.enter_async_context(Rooms(runtime))
        join = await stack.enter_async_context(JoinReader(runtime))
        jobs = await stack.enter_async_context(ai_jobs(runtime, RecordedAudio(runtime)))
        privacy = await stack.enter_async_context(privacy_service(runtime))
        lifecycle = await stack.enter_async_context(Lifecycle(runtime, after_session=jobs))
        webhooks = await stack.enter_async_context(Sender(runtime))
        services = cls(
            runtime, gate, hub, recorder, egress, rooms, join, jobs, privacy, lifecycle, webhooks
        )
        built.append(services)
        return services
