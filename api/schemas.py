"""Response bodies of the routes that build them from domain views, so /openapi.json documents
every body. The wire format is the domains' views as they are (times as RFC 3339 strings, ids
as strings, codes as their values).

`Body` is strict: a value of the wrong type is a server error, never silently converted. It
also lets through fields a domain view adds before its model here names them
(`extra="allow"`), and routes use `response_model_exclude_unset`, so no field appears or
disappears on the wire because of these models.

Size (just over 400 lines): declarations only, no logic; several routers share these models
(notice views, entries, pages), so splitting them by router would copy or cross-import them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TIME = "RFC 3339 time (UTC)."


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


# -- consent ---------------------------------------------------------------------------------


class LedgerEntry(Body):
    """One consent ledger entry."""

    seq: int
    id: str
    at: str = Field(description=TIME)
    booking_id: str
    subject_id: str = Field(description="The pseudonymous participant id.")
    purpose: str
    decision: str = Field(description="granted, denied or withdrawn.")
    notice_id: str
    notice_sha256: str
    method: str
    actor: str = Field(description="subject, or guardian for a minor.")
    prev_hash: str
    entry_hash: str


class NoticeShown(Body):
    id: str
    version: int
    language: str
    text: str = Field(description="The notice as published (Markdown); what `sha256` hashes.")
    sha256: str
    html: str | None = Field(
        default=None,
        description="The text rendered for people: raw HTML disabled, then sanitized.",
    )


class PurposeState(Body):
    purpose: str
    notice: NoticeShown
    decision: str | None
    decided_at: str | None = Field(description=TIME)
    retention_days: int | None = Field(
        default=None, description="Days the data made for this purpose is kept."
    )
    reconsent_required: bool = Field(
        description="The person's grant was given under a notice version a material change "
        "replaced: ask again (the grant stops counting when the change takes effect)."
    )
    notice_change: str | None = Field(description="What changed (with reconsent_required).")


class ConsentOverview(Body):
    booking_id: str
    subject_id: str
    purposes: list[PurposeState]


class LogRow(LedgerEntry):
    subject_external_id: str | None
    subject_display_name: str | None
    notice_version: int | None = Field(
        default=None, description="The version of the notice the person was shown."
    )
    outdated_by: dict[str, Any] | None = Field(
        default=None,
        description="On a grant under a version a material change replaced: that change's "
        "`version`, `effective_at` and `change_note`.",
    )


class LogPage(Body):
    items: list[LogRow]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")


class ChainHead(Body):
    seq: int
    entry_hash: str


class ChainReport(Body):
    ok: bool
    entries: int
    head: ChainHead
    first_bad_seq: int | None
    problem: str | None
    detail: str | None
    checkpoints: list[dict[str, Any]]


class CheckpointView(Body):
    id: str
    seq: int
    entry_hash: str
    signed_at: str = Field(description=TIME)
    key_id: str
    public_key: str
    algorithm: str
    signature: str
    signed_message: str


class CheckpointList(Body):
    items: list[CheckpointView]


class CheckpointExport(Body):
    algorithm: str
    public_key: str
    key_id: str
    exported_at: str = Field(description=TIME)
    checkpoints: list[CheckpointView]


class NoticeView(Body):
    id: str
    purpose: str
    version: int
    language: str
    text: str
    sha256: str
    source: str
    created_at: str = Field(description=TIME)
    material: bool = Field(description="A material change: earlier grants stop counting.")
    change_note: str | None
    effective_at: str | None = Field(description="When a material change takes effect. " + TIME)


class NoticeList(Body):
    items: list[NoticeView]


class ReceiptKey(Body):
    kid: str
    alg: str
    public_key: str = Field(description="Base64 of the raw Ed25519 public key.")
    jwk: dict[str, str] = Field(description="The same key as a JWK (RFC 8037).")


class IntegrityAlarm(Body):
    id: str
    detected_at: str = Field(description=TIME)
    first_bad_seq: int | None
    problem: str | None
    detail: str | None
    head_seq: int | None
    acknowledged_at: str | None = Field(description=TIME)
    acknowledged_by: str | None


class IntegrityStatus(Body):
    status: str = Field(description="`ok` or `tampered`.")
    alarm: IntegrityAlarm | None = Field(description="The standing (unacknowledged) alarm.")
    alarms: list[IntegrityAlarm] = Field(description="The recent alarms, newest first.")
    last_check: ChainReport | None = Field(description="This node's last walk of the chain.")
    last_check_at: str | None = Field(description=TIME)


class Acknowledged(Body):
    acknowledged: list[IntegrityAlarm]


class TimelineBooking(Body):
    id: str
    title: str
    starts_at: str
    ends_at: str
    status: str
    recording_policy: str
    requested_purposes: list[str]


class TimelineParticipant(Body):
    id: str
    external_id: str
    display_name: str
    role: str


class Presence(Body):
    subject_id: str
    joined_at: str
    left_at: str | None


class TimelineRecording(Body):
    subject_id: str
    kind: str
    state: str
    started_at: str
    ended_at: str | None


class ConsentTimeline(Body):
    booking: TimelineBooking
    participants: list[TimelineParticipant]
    entries: list[LedgerEntry]
    presence: list[Presence] = Field(description="Presence intervals this node saw.")
    recordings: list[TimelineRecording]


# -- AI jobs and outputs -------------------------------------------------------------------


class JobView(Body):
    id: str
    booking_id: str
    kind: str
    status: str
    attempts: int
    provider_attempts: int
    progress: int
    error_code: str | None
    error: str | None
    result_id: str | None
    created_at: str = Field(description=TIME)
    started_at: str | None
    finished_at: str | None


class JobList(Body):
    available: bool = Field(description="Whether an AI provider is configured.")
    jobs: list[JobView]


class OutputMeta(Body):
    id: str
    booking_id: str
    job_id: str
    purpose: str
    language: str
    created_at: str = Field(description=TIME)
    retain_until: str = Field(description=TIME)


class ActionItem(Body):
    owner: str
    task: str


class SummaryView(OutputMeta):
    summary: str
    decisions: list[str]
    action_items: list[ActionItem]
    speakers: int = Field(description="How many people's words the summary was made from.")


class AgendaView(OutputMeta):
    items: list[dict[str, Any]] = Field(description="Agenda items with their time boxes.")


class Segment(Body):
    speaker: str = Field(description="A pseudonymous label.")
    start_ms: int
    end_ms: int
    text: str


class TranscriptView(OutputMeta):
    segments: list[Segment]


class RegisterRow(Body):
    id: str
    at: str = Field(description=TIME)
    booking_id: str
    job_id: str | None
    purpose: str
    subjects: list[str]
    data_categories: list[str]
    consent_entries: list[str]
    provider: str
    model: str
    endpoint: str
    input_bytes: int
    outcome: str
    detail: str


class RegisterPage(Body):
    entries: list[RegisterRow]


class ReadRow(Body):
    """One read of a recording, transcript or summary."""

    at: str = Field(description=TIME)
    booking_id: str
    kind: str = Field(description="recording, transcript or summary.")
    item_id: str
    reader: dict[str, str] = Field(description="`participant_id`, or `api_key_id`.")
    subjects: list[str] = Field(description="Whose data it held (participant ids).")
    bytes: int = Field(description="How many bytes were sent.")


class ReadLog(Body):
    reads: list[ReadRow]


# -- privacy -------------------------------------------------------------------------------


class SubjectMatch(Body):
    external_id: str
    display_names: list[str]
    bookings: int
    last_booking_at: str | None
    restricted: bool
    erased: bool


class SubjectSearch(Body):
    subjects: list[SubjectMatch]


class ErasureView(Body):
    id: str
    at: str = Field(description=TIME)
    tombstone: str = Field(description="What now stands for the person everywhere.")
    counts: dict[str, Any] = Field(description="What was erased, per domain.")


class RestrictionView(Body):
    external_id: str
    restricted: bool
    restricted_at: str | None


class WithdrawalView(Body):
    id: str
    at: str = Field(description=TIME)
    booking_id: str
    purpose: str
    entry_id: str
    deleted: dict[str, Any]


class WithdrawResult(Body):
    entry: LedgerEntry
    withdrawal: WithdrawalView


class RetentionRunView(Body):
    id: str
    started_at: str
    finished_at: str
    dry_run: bool
    trigger: str
    counts: dict[str, Any]


class RetentionRunResult(RetentionRunView):
    kept: dict[str, Any] = Field(description="Expired but kept (the append-only ledger).")


class RetentionCategory(Body):
    category: str
    retention_days: int
    expired: int
    action: str
    last_purged: int | None


class RetentionStatus(Body):
    interval_s: int
    last_run: RetentionRunView | None
    categories: list[RetentionCategory]


# -- recording, health, webhooks -----------------------------------------------------------


class RecordingSwitch(Body):
    booking_id: str
    recording: bool = Field(description="Whether recording is on for the booking now.")


class Health(Body):
    status: str


class Readiness(Body):
    status: str = Field(description="ready or unavailable (503).")
    checks: dict[str, str] = Field(description="Each dependency: ok, or why not.")


class WebhookAck(Body):
    status: str = Field(
        description="ok; duplicate for an event id seen before; refused for a join of someone "
        "kept out of the room (removed again)."
    )
    id: str
