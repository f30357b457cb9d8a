"""The one configuration object, read from `CALLGATE_*` environment variables.

Built once in the app factory (or the CLI) and passed down; nothing reads the environment
at import time. Defaults give a working single machine: SQLite under `var/`, in-process bus,
built-in media, recordings in a local folder.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class MediaMode(enum.StrEnum):
    BUILTIN = "builtin"
    LIVEKIT = "livekit"


class StorageBackend(enum.StrEnum):
    LOCAL = "local"
    S3 = "s3"


class Settings(BaseSettings):
    """Every setting of callgate. The README's configuration table is generated from this."""

    model_config = SettingsConfigDict(
        env_prefix="CALLGATE_", frozen=True, extra="ignore", env_file=None
    )

    database_url: str = Field(
        default="sqlite+aiosqlite:///var/callgate.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://...",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL for bus, presence, rate limits and job queue; unset = in-process.",
    )
    redis_prefix: str = Field(default="callgate", description="Prefix of every Redis key/channel.")
    data_dir: Path = Field(
        default=Path("var"), description="Folder for local state and recordings."
    )
    public_base_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://127.0.0.1:8000"),
        description="Base URL people reach callgate at; join links and WebSocket URLs use it.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to open signaling WebSockets (JSON list); the public base "
        "URL's origin is always allowed.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Server secret (>= 32 chars) for join links and tickets. Unset: generated "
        "once and kept in data_dir/secret.key.",
    )
    master_key: SecretStr | None = Field(
        default=None,
        description="Base64 32-byte key wrapping per-person data keys. Unset: generated once and "
        "kept in data_dir/master.key.",
    )

    previous_secret_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Server secrets rotated out (JSON list): what they made (join links, "
        "tickets, idempotency fingerprints, checkpoint keys) is still accepted while listed.",
    )
    previous_master_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Master keys rotated out (JSON list): still unwrap data keys until "
        "`callgate keys rotate-master` has re-wrapped every one under the current key.",
    )

    media_mode: MediaMode = Field(default=MediaMode.BUILTIN, description="builtin or livekit.")
    livekit_url: str | None = Field(default=None, description="LiveKit server URL (wss://...).")
    livekit_api_key: str | None = Field(default=None, description="LiveKit API key.")
    livekit_api_secret: SecretStr | None = Field(default=None, description="LiveKit API secret.")
    livekit_egress_url: str | None = Field(
        default=None,
        description="Where callgate sends LiveKit Egress API calls; unset: the LiveKit URL "
        "(the server hands them to Egress workers through its Redis).",
    )
    livekit_empty_timeout_s: int = Field(default=300, ge=0, description="Room empty timeout (s).")
    livekit_departure_timeout_s: int = Field(
        default=60, ge=0, description="Room departure timeout (s)."
    )
    livekit_timeout_s: float = Field(
        default=5, gt=0, description="Timeout of one LiveKit server API call (s)."
    )
    livekit_retry_interval_s: float = Field(
        default=15, gt=0, description="How often rooms LiveKit could not create are retried (s)."
    )
    stun_urls: list[str] = Field(
        default_factory=list, description="STUN URLs handed to browsers (JSON list)."
    )
    turn_urls: list[str] = Field(
        default_factory=list, description="TURN URLs handed to browsers (JSON list)."
    )
    turn_secret: SecretStr | None = Field(
        default=None, description="coturn `static-auth-secret` for ephemeral TURN credentials."
    )
    turn_credential_ttl_s: int = Field(
        default=3600, gt=0, description="Upper bound of a TURN credential's life (s)."
    )

    join_lead_minutes: int = Field(
        default=10, ge=0, le=24 * 60, description="How early before start a join link works."
    )
    join_grace_minutes: int = Field(
        default=0, ge=0, le=24 * 60, description="How long after the end a join link works."
    )
    allow_past_bookings: bool = Field(
        default=False,
        description="Accept bookings (and reschedules) whose window has already ended, for "
        "importing past sessions; off, they are refused with 422.",
    )
    max_booking_hours: float = Field(default=8, gt=0, description="Longest bookable session.")
    max_clients: int = Field(default=8, ge=1, le=100, description="Most clients in one booking.")
    ticket_ttl_s: int = Field(
        default=60, gt=0, le=60, description="Life of a single-use signaling ticket (s)."
    )
    recording_retention_days: int = Field(
        default=30, ge=1, description="Days a recording is kept after it ends."
    )
    egress_output_dir: Path | None = Field(
        default=None,
        description="LiveKit mode: the folder LiveKit Egress writes its files to, shared with "
        "callgate at the same path. When set, each finished egress file is taken in: encrypted "
        "under the person's data key into recording storage, listed with the consent entry "
        "that allowed it, and the plaintext deleted. Unset: files stay where Egress put them.",
    )
    storage_backend: StorageBackend = Field(
        default=StorageBackend.LOCAL,
        description="Where sealed recordings live: local (data_dir/recordings) or s3 (an "
        "S3-compatible bucket; data_dir/recordings then only spools files being written).",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (e.g. http://minio:9000); unset = AWS S3.",
    )
    s3_region: str | None = Field(default=None, description="S3 region (e.g. eu-central-1).")
    s3_bucket: str | None = Field(default=None, description="S3 bucket for recordings.")
    s3_access_key_id: str | None = Field(
        default=None, description="S3 access key id; unset = the AWS default credential chain."
    )
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key.")
    s3_prefix: str = Field(
        default="recordings/", description="Key prefix of recording objects in the bucket."
    )
    join_failures_per_minute: int = Field(
        default=10, gt=0,
        description="Failed join credentials per minute, per address and per credential "
        "prefix, before 429 (every endpoint taking a join credential counts).",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (JSON list) of reverse proxies whose "
        "X-Forwarded-For names the client; from anyone else the header is ignored.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024,
        description="Largest request body (bytes); bigger ones get 413 before being parsed.",
    )
    signaling_presence_ttl_s: float = Field(
        default=15, gt=0, description="Life of a signaling presence entry in Redis (s); a dead "
        "node's participants are announced gone this long after its last heartbeat.",
    )
    signaling_reconnect_grace_s: float = Field(
        default=10, ge=0, description="How long a dropped signaling socket may take to come back "
        "before the others see the person leave (s).",
    )
    signaling_idle_timeout_s: float = Field(
        default=60, gt=0, description="Close a signaling socket silent for this long (s).",
    )
    signaling_messages_per_s: int = Field(
        default=50, gt=0, description="Sustained messages per second one signaling socket may "
        "send (bursts of twice this); a flooder is closed with 1008.",
    )
    livekit_client_url: str | None = Field(
        default=None,
        description="A CDN URL the call page loads the livekit-client SDK from (livekit mode); "
        "unset: callgate serves its own copy (`livekit_client_file`), so no third party sees "
        "the participants. Needs `livekit_client_integrity`.",
    )
    livekit_client_integrity: str | None = Field(
        default=None,
        pattern=r"^sha(256|384|512)-[A-Za-z0-9+/]+={0,2}$",
        description="Subresource Integrity of `livekit_client_url` (`sha384-...`): the page "
        "runs the CDN's file only if it is exactly that one.",
    )
    livekit_client_file: Path = Field(
        default=Path("var/vendor/livekit-client-2.23.0/dist/livekit-client.umd.js"),
        description="The livekit-client SDK callgate serves to the call page in livekit mode "
        "(`make install` fetches the pinned version and checks its npm integrity).",
    )
    log_level: str = Field(default="INFO", description="Log level.")
    log_json: bool = Field(default=True, description="JSON logs (false: console lines).")
    openai_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible API base URL (e.g. a local server, so data stays in your "
        "network). AI jobs are unavailable while neither this nor the API key is set.",
    )
    openai_api_key: SecretStr | None = Field(default=None, description="OpenAI API key.")
    openai_model: str = Field(default="gpt-4o-mini", description="Model for agenda and summary.")
    openai_chat_completions: bool = Field(
        default=False,
        description="Use /chat/completions instead of /responses (servers without Responses).",
    )
    openai_transcription_model: str = Field(
        default="gpt-4o-mini-transcribe", description="Model for audio transcription."
    )
    openai_timeout_s: float = Field(default=60, gt=0, description="Timeout of one AI request (s).")
    openai_max_attempts: int = Field(
        default=4, ge=1, le=10, description="Tries per AI request on 429/5xx/timeouts."
    )
    summary_retention_days: int = Field(
        default=90, ge=1, description="Days a summary (and, unless "
        "`CALLGATE_TRANSCRIPT_RETENTION_DAYS` says otherwise, a transcript) is kept."
    )
    transcript_retention_days: int | None = Field(
        default=None, ge=1, description="Days a transcript is kept; unset: "
        "`CALLGATE_SUMMARY_RETENTION_DAYS`.",
    )
    agenda_retention_days: int = Field(default=30, ge=1, description="Days an agenda is kept.")
    minimum_age: int = Field(
        default=13, ge=0, le=18,
        description="Nobody younger is booked (422); 13 refuses every child, as the booking "
        "platforms' own policies do. Minors and children decide with their guardian.",
    )
    participant_access_days: int = Field(
        default=7, ge=0, le=3650,
        description="Days after a session's end during which its participants may still read "
        "its recordings, transcript and summary through their join link (as the booking's "
        "`recording_access` allows); admins read on until retention ends.",
    )
    join_log_retention_days: int = Field(
        default=90, ge=1, description="Days join, recording-download and read logs are kept."
    )
    booking_retention_days: int = Field(
        default=5 * 365 + 1, ge=1,
        description="Days a booking (with its participants) is kept after it ends (5 years).",
    )
    ledger_retention_days: int = Field(
        default=6 * 365 + 2, ge=1,
        description="Days a consent ledger entry is due to be kept (6 years); the ledger is "
        "append-only, so older entries are reported by the purge, not deleted.",
    )
    retention_interval_s: int = Field(
        default=3600, ge=0,
        description="How often the retention purge runs (s); 0 turns the periodic purge off.",
    )
    heap_threshold_kib: int = Field(
        default=128, ge=0, le=32 * 1024, description="C allocations of this size and more are "
        "mmapped and free heap tops over it given back (glibc `mallopt`, KiB), fixed so the "
        "heap does not grow under churn; 0 keeps glibc's own moving thresholds. See "
        "core/heap.py.",
    )
    lifecycle_sweep_interval_s: float = Field(
        default=1, ge=0, description="How often each node sweeps bookings through their "
        "lifecycle (s); 0 turns the periodic sweep off.",
    )
    webhook_log_retention_days: int = Field(
        default=30, ge=1, description="Days sent webhook events and their delivery log are "
        "kept (pending deliveries stay until sent); the events carry pseudonymous ids only.",
    )
    attendance_retention_days: int = Field(
        default=90, ge=1, description="Days attendance (joins and leaves) is kept after the join.",
    )
    webhook_allow_private_targets: bool = Field(
        default=False, description="Let webhook endpoints be http:// and private, loopback or "
        "link-local addresses (tests, a receiver inside your network). Off: https and public "
        "addresses only.",
    )
    webhook_timeout_s: float = Field(
        default=10, gt=0, le=60, description="Timeout of one webhook delivery attempt (s).",
    )
    webhook_poll_interval_s: float = Field(
        default=0.2, gt=0, description="How often the webhook sender looks for new events and "
        "due retries when idle (s).",
    )
    webhook_disable_after_days: float = Field(
        default=5, gt=0, description="Disable an endpoint whose deliveries failed without a "
        "single success for this long (days).",
    )
    webhook_secret_grace_hours: float = Field(
        default=24, ge=0, description="After a secret rotation, how long deliveries are also "
        "signed with the previous secret (h).",
    )
    consent_checkpoint_interval_s: int = Field(
        default=3600, gt=0, description="How often the consent ledger's head is signed (s)."
    )
    consent_verify_interval_s: int = Field(
        default=30, gt=0,
        description="How often each node re-verifies the whole consent ledger (s); tampering "
        "is found within this plus one walk of the chain.",
    )
    consent_integrity_poll_s: float = Field(
        default=1.0, gt=0,
        description="How often each node reads the shared integrity alarm and looks whether a "
        "verification is due (s).",
    )
    consent_operator_name: str = Field(
        default="the operator of this service",
        description="The operator's name (who records/processes), as the default consent "
        "notices name it; set it to your organization's legal name.",
    )
    consent_ai_provider: str | None = Field(
        default=None,
        description="The AI subprocessor's name in the default transcription/ai.* notices. "
        "Unset: `OpenAI`, or the host of CALLGATE_OPENAI_BASE_URL when that is set.",
    )

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @model_validator(mode="after")
    def _storage_complete(self) -> Settings:
        if self.storage_backend is StorageBackend.S3 and not self.s3_bucket:
            raise ValueError("CALLGATE_STORAGE_BACKEND=s3 needs CALLGATE_S3_BUCKET")
        if self.livekit_client_url and not self.livekit_client_integrity:
            raise ValueError(
                "CALLGATE_LIVEKIT_CLIENT_URL needs CALLGATE_LIVEKIT_CLIENT_INTEGRITY (sha384-...)"
            )
        return self

    @property
    def join_lead(self) -> timedelta:
        return timedelta(minutes=self.join_lead_minutes)

    @property
    def join_grace(self) -> timedelta:
        return timedelta(minutes=self.join_grace_minutes)

    @property
    def max_booking_duration(self) -> timedelta:
        return timedelta(hours=self.max_booking_hours)

    @property
    def public_origin(self) -> str:
        url = self.public_base_url
        port = f":{url.port}" if url.port and url.port not in (80, 443) else ""
        return f"{url.scheme}://{url.host}{port}"

    def base_url(self) -> str:
        return str(self.public_base_url).rstrip("/")

    def ai_provider_name(self) -> str:
        """Who the notices name as AI subprocessor: the setting, else whom AI jobs talk to."""
        if self.consent_ai_provider:
            return self.consent_ai_provider
        if self.openai_base_url:
            host = urlsplit(self.openai_base_url).hostname
            return f"the AI service at {host}" if host else self.openai_base_url
        return "OpenAI"


def settings_table() -> str:
    """The README's configuration table, generated from the fields above."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = "(secret)"
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `CALLGATE_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)
