"""The process's shared resources, opened once and closed in reverse order.

The FastAPI lifespan, the CLI and the worker all build one `Runtime` from `Settings`; domain
services take the parts they need from it (constructor injection), never from globals. The
services built on top of it are held by the composition root (`api.services.Services`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import redis.asyncio as aioredis

# Every process that opens a Runtime maps `bookings.org_id`'s foreign key: the table it names
# must be registered even where nothing else imports core.organizations (a sweep worker).
from core import organizations as _organizations  # noqa: F401
from core.bus import EventBus, InProcessBus, RedisBus
from core.clock import Clock, SystemClock
from core.crypto import Keyring, load_or_create_key_file, private_folder
from core.database import Database
from core.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from core.settings import Settings


def build_keyring(settings: Settings) -> Keyring:
    import base64

    if settings.secret_key is not None:
        secret = settings.secret_key.get_secret_value().encode()
    else:
        secret = load_or_create_key_file(settings.data_dir / "secret.key", 32)
    if settings.master_key is not None:
        master = base64.b64decode(settings.master_key.get_secret_value())
    else:
        master = load_or_create_key_file(settings.data_dir / "master.key", 32)
    return Keyring(
        secret,
        master,
        previous_secrets=[s.get_secret_value().encode() for s in settings.previous_secret_keys],
        previous_masters=[
            base64.b64decode(m.get_secret_value()) for m in settings.previous_master_keys
        ],
    )


@dataclass
class Runtime:
    settings: Settings
    db: Database
    bus: EventBus
    limiter: RateLimiter
    keys: Keyring
    clock: Clock
    redis: aioredis.Redis | None = None

    @classmethod
    def open(cls, settings: Settings, *, clock: Clock | None = None) -> Runtime:
        private_folder(settings.data_dir)
        db = Database(settings.database_url)
        client: aioredis.Redis | None = None
        bus: EventBus
        limiter: RateLimiter
        if settings.redis_url:
            client = aioredis.from_url(  # type: ignore[no-untyped-call]
                settings.redis_url, decode_responses=False
            )
            bus = RedisBus(client, settings.redis_prefix)
            limiter = RedisRateLimiter(client, settings.redis_prefix)
        else:
            bus = InProcessBus()
            limiter = MemoryRateLimiter()
        return cls(
            settings=settings,
            db=db,
            bus=bus,
            limiter=limiter,
            keys=build_keyring(settings),
            clock=clock or SystemClock(),
            redis=client,
        )

    async def close(self) -> None:
        await self.bus.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        await self.db.close()
