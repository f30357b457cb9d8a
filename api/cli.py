"""The `callgate` command: serve, migrate, keys, demo (and the domains' own sub-commands).

A composition root like the app factory, so it lives in api/, above every domain; the domains
are imported inside the commands that need them, so `callgate migrate` loads no media stack.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from core.accounts import Scope, do_create_key, do_revoke_key
from core.clock import SystemClock
from core.database import Database
from core.errors import CallgateError
from core.migrate import upgrade
from core.organizations import (
    DEFAULT_ORG,
    OrgSettings,
    RetentionDays,
    access_org,
    do_create_org,
    do_update_settings,
    effective_settings,
    get_orgs,
)
from core.runtime import build_keyring
from core.settings import Settings

app = typer.Typer(help="callgate: booked live video sessions with consent-first recording.")
keys = typer.Typer(help="Manage API keys (shown once, stored hashed).")
app.add_typer(keys, name="keys")
orgs = typer.Typer(help="Organizations: the tenants one callgate serves.")
app.add_typer(orgs, name="orgs")
ledger = typer.Typer(help="The consent ledger: verify the chain, sign its head.")
app.add_typer(ledger, name="ledger")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Run the HTTP/WebSocket server."""
    import uvicorn

    uvicorn.run(
        "api.app:create_app", factory=True, host=host, port=port, workers=workers,
        # X-Forwarded-For is read by the app itself, only from `trusted_proxies` (api/limits.py).
        log_level="warning", proxy_headers=False,
        # uvloop and httptools (C) rather than whatever "auto" finds; no uvicorn access log:
        # the app logs every request itself (JSON, with its request id and route).
        loop="uvloop", http="httptools", access_log=False,
        # Signaling frames are limited to 64 KiB (docs/signaling.md): refuse bigger ones (1009)
        # before buffering them, and skip per-socket deflate state (small JSON messages).
        ws_max_size=64 * 1024, ws_per_message_deflate=False,
        # Less held per open socket, no WebSocket pings (api/wsprotocol.py).
        ws="api.wsprotocol:SignalingProtocol",
    )


@app.command()
def migrate() -> None:
    """Bring the configured database to the newest schema."""
    settings = Settings()
    asyncio.run(upgrade(settings.database_url))
    typer.echo("database is up to date")


@keys.command("create")
def keys_create(
    scope: Annotated[
        Scope, typer.Option(help="scheduler, admin, auditor, metrics or operator.")
    ],
    label: Annotated[str, typer.Option(help="What the key is for.")] = "",
    org: Annotated[
        str, typer.Option(help="The organization the key belongs to (not for operator keys).")
    ] = DEFAULT_ORG,
) -> None:
    """Create an API key and print it (the only time it is shown)."""

    async def run() -> str:
        db = Database(Settings().database_url)
        try:
            async with db.session() as session:
                if scope is not Scope.OPERATOR:
                    await access_org(session, org)
                _, plaintext = await do_create_key(
                    session, scope, label, SystemClock().now(), org
                )
            return plaintext
        finally:
            await db.close()

    typer.echo(_or_exit(run))


def _or_exit(run: Callable[[], Coroutine[Any, Any, str]]) -> str:
    """The command's output, or its error on stderr and exit status 1."""
    try:
        return asyncio.run(run())
    except CallgateError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None


RETENTION_HELP = (
    "CATEGORY=DAYS (1 to 3653), or CATEGORY=default for the deployment's period; categories: "
    + ", ".join(RetentionDays.model_fields)
)


def _retention(pairs: list[str]) -> dict[str, int | None]:
    """`CATEGORY=DAYS` pairs as `OrgSettings.retention_days` changes, checked as the API
    checks them (a bad one exits 2 and changes nothing)."""
    out: dict[str, int | None] = {}
    for pair in pairs:
        category, _, days = pair.partition("=")
        value = days.strip()
        if value == "default":
            out[category.strip()] = None
            continue
        if not value.lstrip("-").isdigit():
            raise typer.BadParameter(f"{pair!r}: {RETENTION_HELP}")
        out[category.strip()] = int(value)
    try:
        RetentionDays.model_validate(out)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise typer.BadParameter(f"{where}: {first['msg']}") from None
    return out


@orgs.command("create")
def orgs_create(
    org_id: Annotated[str, typer.Argument(help="Lower-case letters, digits and '-'.")],
    name: Annotated[str, typer.Option(help="The organization's name.")],
    retention: Annotated[
        list[str] | None, typer.Option("--retention", help=RETENTION_HELP)
    ] = None,
) -> None:
    """Create an organization (its settings are the deployment's until changed through
    `PATCH /v1/operator/orgs/{id}` or `callgate orgs retention`); then `callgate keys create
    --org ID --scope admin`."""

    from consent.notices import seed_notices

    settings = Settings()
    periods = _retention(retention or [])
    overrides = OrgSettings.model_validate({"retention_days": periods} if periods else {})

    async def run() -> str:
        db = Database(settings.database_url)
        try:
            async with db.session() as session:
                org = await do_create_org(
                    session, org_id, name, overrides, SystemClock().now()
                )
            await seed_notices(db, effective_settings(settings, org), SystemClock().now(), org.id)
            return f"created organization {org.id}"
        finally:
            await db.close()

    typer.echo(_or_exit(run))


@orgs.command("retention")
def orgs_retention(
    org_id: Annotated[str, typer.Argument(help="The organization's id.")],
    periods: Annotated[list[str], typer.Argument(help=RETENTION_HELP)],
) -> None:
    """Set an organization's retention periods (as `PATCH /v1/operator/orgs/{id}` with
    `settings.retention_days`); its notices state the new days at once. Prints the
    organization's own periods as JSON."""

    from consent.notices import seed_notices

    settings = Settings()
    changes = {"retention_days": _retention(periods)}

    async def run() -> str:
        db = Database(settings.database_url)
        now = SystemClock().now()
        try:
            async with db.session() as session:
                org = await access_org(session, org_id)
                do_update_settings(org, changes, now)
                own = org.settings.get("retention_days", {})
                effective = effective_settings(settings, org)
            await seed_notices(db, effective, now, org_id)
            return json.dumps({"id": org_id, "retention_days": own})
        finally:
            await db.close()

    typer.echo(_or_exit(run))


@orgs.command("list")
def orgs_list() -> None:
    """Print each organization as a JSON line."""

    async def run() -> str:
        db = Database(Settings().database_url)
        try:
            async with db.session() as session:
                rows = await get_orgs(session)
            return "\n".join(
                json.dumps({"id": o.id, "name": o.name, "settings": o.settings}) for o in rows
            )
        finally:
            await db.close()

    typer.echo(_or_exit(run))


@keys.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key id (16 hex digits) or the whole key.")],
) -> None:
    """Revoke an API key at once."""

    async def run() -> str:
        db = Database(Settings().database_url)
        try:
            async with db.session() as session:
                return (await do_revoke_key(session, key, SystemClock().now())).id
        finally:
            await db.close()

    try:
        key_id = asyncio.run(run())
    except CallgateError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {key_id}")


@keys.command("rotate-master")
def keys_rotate_master() -> None:
    """Re-wrap every person's data key and re-seal every webhook signing secret under the
    current master key (CALLGATE_MASTER_KEY), unwrapping with CALLGATE_PREVIOUS_MASTER_KEYS;
    safe to run again after an interruption. Once it reports 0 left, the previous master keys
    can be removed."""
    from core.datakeys import do_rewrap_data_keys
    from core.webhooks import do_seal_secrets

    settings = Settings()

    async def run() -> str:
        db = Database(settings.database_url)
        keyring = build_keyring(settings)
        try:
            done = await do_rewrap_data_keys(db, keyring)
            secrets = await do_seal_secrets(db, keyring)
        finally:
            await db.close()
        return (
            f"re-wrapped {done.rewrapped} data keys ({done.current} were already current), "
            f"re-sealed {secrets} webhook secrets"
        )

    typer.echo(asyncio.run(run()))


@app.command()
def demo() -> None:
    """Seed the demo (API keys and a booking starting now) and print what to open."""
    from api.demo import describe, seed_demo
    from core.runtime import Runtime

    async def run() -> str:
        settings = Settings()
        runtime = Runtime.open(settings)
        try:
            return describe(await seed_demo(runtime), settings.base_url())
        finally:
            await runtime.close()

    typer.echo(asyncio.run(run()))


@app.command("settings")
def settings_command() -> None:
    """Print every setting as a Markdown table (the README's configuration table)."""
    from core.settings import settings_table

    typer.echo(settings_table())


@ledger.command("verify")
def ledger_verify() -> None:
    """Walk the consent chain and its checkpoints; exit 1 at the first bad entry."""
    from consent.cli import run_verify

    raise typer.Exit(run_verify(Settings()))


@ledger.command("verify-receipt")
def ledger_verify_receipt(
    file: Annotated[Path, typer.Argument(help="The receipt (.jws) a person downloaded.")],
    public_key: Annotated[
        str, typer.Option(help="The deployment's Ed25519 public key, base64 (receipt-key).")
    ],
) -> None:
    """Check a consent receipt offline with only the public key (exit 1 when it fails)."""
    from consent.receipts import public_key_from, verify_receipt

    check = verify_receipt(file.read_text(encoding="utf-8"), public_key_from(public_key))
    typer.echo(json.dumps(check.view(), indent=2))
    raise typer.Exit(0 if check.ok else 1)


@ledger.command("checkpoint")
def ledger_checkpoint() -> None:
    """Sign the consent chain's current head now and print the checkpoint."""
    from consent.cli import run_checkpoint

    raise typer.Exit(run_checkpoint(Settings()))


retention = typer.Typer(help="Retention: delete what outlived its period, per data category.")
app.add_typer(retention, name="retention")


@retention.command("run")
def retention_run(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go; change "
                                          "nothing.")] = False,
) -> None:
    """Purge every category once and print the counts (as JSON)."""
    import json

    from api.subjects import privacy_service
    from core.logs import configure_logging
    from core.runtime import Runtime
    from privacy.records import Trigger

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)  # logs (counts) to stderr

    async def run() -> dict[str, object]:
        runtime = Runtime.open(settings)
        try:
            privacy = privacy_service(runtime, periodic=False)
            return await privacy.run_retention(dry_run=dry_run, trigger=Trigger.CLI)
        finally:
            await runtime.close()

    typer.echo(json.dumps(asyncio.run(run()), indent=2))


@app.command()
def worker() -> None:
    """Run AI jobs (agenda, transcription, summary) from the Redis queue."""
    from api.subjects import retention_cron  # the periodic purge runs here too (Redis lock)
    from media.audio import RecordedAudio
    from summaries.worker import run_worker

    settings = Settings()
    asyncio.run(
        run_worker(settings, audio=RecordedAudio, cron_jobs=retention_cron(settings))
    )


def main() -> None:
    app()
