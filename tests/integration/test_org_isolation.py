"""Organizations see nothing of each other, probed from the OpenAPI document itself.

Organization A (the default one) books a session A1 with a minor client, a second session A2,
a webhook endpoint with a delivery, and consent decisions. Then every operation of
`app.openapi()` is sent, with A1's ids in its path, body and query wherever a parameter names
one (`booking_id`, `participant_id`, `external_id`, `q`, `subject`, ...), by every caller that
must not reach A1: each key of organization B, an operator key, the join credentials of A2's
people (a second booking of the same organization) and of B's own booking. A leak is any 5xx,
any hang, any 2xx on an operation aimed at A1's resources, and any 2xx whose body holds one of
A1's identifiers. A new route is covered as soon as it is in the document; a new path
parameter this test does not know fails it until it is added to `targets`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from core.accounts import Scope, do_create_key
from core.clock import ManualClock
from core.runtime import Runtime
from tests.support.bookings import bearer, booking_body, credential_of
from tests.support.consent import decide
from tests.support.waiting import eventually

pytestmark = pytest.mark.usefixtures("app")

METHODS = ("get", "post", "put", "patch", "delete")
TIMEOUT_S = 20.0
# Operations whose only credential is a capability in their own path (the page a join link
# opens): whoever holds A1's link is A1's participant, so there is no other caller to probe.
CAPABILITY_PATHS = frozenset({"/join/{credential}", "/summary/{credential}"})


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"webhook_allow_private_targets": True}


@dataclass(frozen=True)
class Caller:
    name: str
    headers: dict[str, str]
    kind: str  # "key", "credential" or "anonymous"


@dataclass
class World:
    targets: dict[str, str]  # parameter name -> A1's value (ids, external id, ...)
    aimed: frozenset[str]  # the values that make a request "aimed at A1"
    markers: frozenset[str]  # A1's identifiers that must never appear in another's 2xx
    callers: list[Caller]
    a_scheduler: str
    a_admin: str
    a1: dict[str, Any]
    endpoint: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Person:
    headers: dict[str, str]


async def _org_b_keys(client: httpx.AsyncClient, runtime: Runtime) -> tuple[str, dict[str, str]]:
    """An operator key, and organization B (made through the operator API) with one key of
    each organization scope."""
    async with runtime.db.session() as session:
        _, operator = await do_create_key(session, Scope.OPERATOR, "test", runtime.clock.now())
    made = await client.post(
        "/v1/operator/orgs", headers=bearer(operator),
        json={"id": "org-b", "name": "Organization B", "settings": {"minimum_age": 16}},
    )
    assert made.status_code == 201, made.text
    keys = {}
    for scope in (Scope.ADMIN, Scope.SCHEDULER, Scope.AUDITOR, Scope.METRICS):
        answer = await client.post(
            "/v1/operator/orgs/org-b/keys", headers=bearer(operator), json={"scope": scope.value}
        )
        assert answer.status_code == 201, answer.text
        keys[scope.value] = answer.json()["key"]
    return operator, keys


async def _world(
    client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock, api_keys: dict[Scope, str]
) -> World:
    tag = secrets.token_hex(4)
    a_scheduler = api_keys[Scope.SCHEDULER]
    start = clock.now()  # the join window is open: tokens and joins answer
    hook = await client.post(
        "/v1/webhooks/endpoints", headers=bearer(a_scheduler),
        json={"url": f"http://127.0.0.1:9/hooks-{tag}", "description": f"a-hook-{tag}"},
    )
    assert hook.status_code == 201, hook.text
    endpoint = hook.json()
    a1_body = booking_body(
        start, purposes=["recording.audio", "transcription", "ai.summary"],
        title=f"A1 session {tag}",
        host={"external_id": f"a1-host-{tag}", "display_name": f"Ada A1 {tag}", "adult": True},
    )
    a1_body["clients"] = [
        {"external_id": f"a1-client-{tag}", "display_name": f"Cleo A1 {tag}", "age_band": "minor"}
    ]
    made = await client.post("/v1/bookings", json=a1_body, headers=bearer(a_scheduler))
    assert made.status_code == 201, made.text
    a1 = made.json()
    a2 = (await client.post("/v1/bookings", headers=bearer(a_scheduler), json=booking_body(
        start, title=f"A2 session {tag}",
        host={"external_id": f"a2-host-{tag}", "display_name": "A2 Host", "adult": True},
    ))).json()
    host, minor = a1["participants"]
    entry = await decide(client, Person({"X-Join-Credential": credential_of(minor)}),
                         "recording.audio")
    deliveries = f"/v1/webhooks/endpoints/{endpoint['id']}/deliveries"

    async def delivered() -> str | None:
        answer = await client.get(deliveries, headers=bearer(a_scheduler))
        items = answer.json()["items"] if answer.status_code == 200 else []
        return str(items[0]["id"]) if items else None

    await eventually(delivered, "a delivery of A's endpoint")
    delivery_id = await delivered()
    assert delivery_id is not None
    operator, b_keys = await _org_b_keys(client, runtime)
    b_booking = await client.post("/v1/bookings", headers=bearer(b_keys["scheduler"]),
                                  json=booking_body(start, title="B session"))
    assert b_booking.status_code == 201, b_booking.text
    overview = (await client.get(
        "/v1/consent", headers={"X-Join-Credential": credential_of(minor)}
    )).json()
    notice = next(p["notice"]["sha256"] for p in overview["purposes"]
                  if p["purpose"] == "recording.audio")
    targets = {
        "booking_id": a1["id"], "participant_id": minor["id"],
        "external_id": minor["external_id"], "q": minor["external_id"],
        "participant": minor["external_id"], "subject": minor["external_id"],
        "confirm": minor["external_id"], "endpoint_id": endpoint["id"],
        "delivery_id": delivery_id, "recording_id": str(uuid.uuid4()),
        "org_id": "default", "sha256": notice, "notice_sha256": notice,
        "starts_at": (start + timedelta(days=1)).isoformat(),
        "ends_at": (start + timedelta(days=1, hours=1)).isoformat(),
        "display_name": "Mallory", "purpose": "recording.audio", "decision": "granted",
    }
    aimed = {a1["id"], minor["id"], minor["external_id"], endpoint["id"], delivery_id}
    markers = {
        a1["id"], host["id"], minor["id"], host["external_id"], minor["external_id"],
        f"Ada A1 {tag}", f"Cleo A1 {tag}", f"A1 session {tag}", endpoint["id"],
        f"hooks-{tag}", f"a-hook-{tag}", endpoint["secret"], delivery_id, entry["id"],
        credential_of(host), credential_of(minor),
    }
    callers = [Caller(f"org B {scope}", bearer(key), "key") for scope, key in b_keys.items()]
    callers.append(Caller("operator", bearer(operator), "key"))
    for who, person in (("A2 host", a2["participants"][0]), ("A2 client", a2["participants"][1]),
                        ("org B host", b_booking.json()["participants"][0])):
        callers.append(Caller(who, {"X-Join-Credential": credential_of(person)}, "credential"))
    callers.append(Caller("anonymous", {}, "anonymous"))
    return World(targets, frozenset(aimed), frozenset(markers), callers, a_scheduler,
                 api_keys[Scope.ADMIN], a1, endpoint)


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = doc["components"]["schemas"][name]
    return schema


def example(doc: dict[str, Any], schema: dict[str, Any], targets: dict[str, str],
            name: str = "") -> Any:
    """A value for `schema` that passes validation, A1's value where the name is a target."""
    schema = _resolve(doc, schema)
    if name in targets:
        return targets[name]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, []) if _resolve(doc, o).get("type") != "null"]
        if options:
            return example(doc, options[0], targets, name)
    if "enum" in schema:
        return schema["enum"][0]
    if "examples" in schema:
        return schema["examples"][0]
    if schema.get("default") is not None:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object":
        required = schema.get("required", [])
        properties = schema.get("properties", {})
        return {
            key: example(doc, sub, targets, key) for key, sub in properties.items()
            if key in required or key in targets
        }
    if kind == "array":
        if schema.get("minItems", 0) == 0:
            return []
        return [example(doc, schema.get("items", {}), targets)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return False
    if kind == "string":
        return _string(schema)
    return None


def _string(schema: dict[str, Any]) -> str:
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    if schema.get("format") == "date-time":
        return "2030-01-01T00:00:00Z"
    pattern = schema.get("pattern", "")
    for candidate in ("abc-1", "en", "0" * 64, "x" * max(1, schema.get("minLength", 1))):
        if not pattern or re.search(pattern, candidate):
            return candidate
    raise AssertionError(f"no example string for pattern {pattern!r}")


@dataclass(frozen=True)
class Probe:
    method: str
    path: str
    template: str
    query: dict[str, Any]
    body: Any
    aimed: bool  # names one of A1's resources in its path or body (a query only filters)
    accepts: frozenset[str]  # "key", "credential", "anonymous"


def probes(doc: dict[str, Any], world: World) -> list[Probe]:
    """One request per operation of the document, aimed at A1 wherever it can be."""
    out = []
    for template, item in doc["paths"].items():
        if template in CAPABILITY_PATHS:
            continue
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            out.append(_probe(doc, world, method, template, operation))
    return out


def _probe(
    doc: dict[str, Any], world: World, method: str, template: str, operation: dict[str, Any]
) -> Probe:
    path, query, used = template, {}, set()
    accepts = {"anonymous"}
    if operation.get("security"):
        accepts = {"key"}
    for parameter in operation.get("parameters", []):
        name, where = parameter["name"], parameter["in"]
        if where == "header" and name.lower() == "x-join-credential":
            accepts.add("credential")
            if parameter.get("required"):
                accepts.discard("anonymous")
            continue
        if where == "path":
            value = example(doc, parameter["schema"], world.targets, name)
            assert value is not None, f"{template}: add path parameter {name!r} to targets"
            used.add(str(value))
            path = path.replace("{" + name + "}", str(value))
        elif where == "query" and (name in world.targets or parameter.get("required")):
            # a filter: a 2xx is right, as long as it holds nothing of A1 (the markers)
            query[name] = example(doc, parameter["schema"], world.targets, name)
    body = None
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        body = example(doc, content["application/json"]["schema"], world.targets)
        used.update(str(v) for v in (body.values() if isinstance(body, dict) else []))
    return Probe(method, path, template, query, body, bool(used & world.aimed),
                 frozenset(accepts))


async def send(client: httpx.AsyncClient, probe: Probe, caller: Caller) -> httpx.Response:
    async with asyncio.timeout(TIMEOUT_S):
        return await client.request(
            probe.method.upper(), probe.path, params=probe.query, headers=caller.headers,
            json=probe.body if probe.body is not None else None,
        )


def leak(probe: Probe, caller: Caller, answer: httpx.Response, world: World) -> str | None:
    """What is wrong with this answer, if anything."""
    if answer.status_code >= 500:
        return f"{answer.status_code} {answer.text[:200]}"
    if not 200 <= answer.status_code < 300:
        return None
    if probe.aimed:
        return f"{answer.status_code} on A1's resource: {answer.text[:200]}"
    found = [m for m in world.markers if m in answer.text]
    return f"{answer.status_code} with A1's {found}" if found else None


async def test_no_operation_lets_another_org_or_booking_reach_org_a(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime, clock: ManualClock,
    api_keys: dict[Scope, str],
) -> None:
    world = await _world(client, runtime, clock, api_keys)
    doc = app.openapi()
    leaks: list[str] = []
    sent = 0
    for probe in probes(doc, world):
        for caller in world.callers:
            if caller.kind not in probe.accepts:
                continue
            try:
                answer = await send(client, probe, caller)
            except TimeoutError:
                leaks.append(f"{probe.method.upper()} {probe.template} as {caller.name}: hung")
                continue
            sent += 1
            problem = leak(probe, caller, answer, world)
            if problem is not None:
                leaks.append(f"{probe.method.upper()} {probe.template} as {caller.name}: {problem}")
    operations = sum(1 for item in doc["paths"].values() for m in METHODS if m in item)
    assert sent > 3 * operations, f"only {sent} requests for {operations} operations"
    assert leaks == [], "\n".join(leaks)
    await _a_is_untouched(client, world)


async def _a_is_untouched(client: httpx.AsyncClient, world: World) -> None:
    """Nothing the probes sent changed A's booking, people, endpoint or restrictions."""
    a1 = world.a1
    again = await client.get(f"/v1/bookings/{a1['id']}", headers=bearer(world.a_scheduler))
    assert again.status_code == 200
    body = again.json()
    assert body["status"] in ("scheduled", "open")  # the sweep may open it; nobody cancelled
    assert (body["sequence"], body["starts_at"]) == (a1["sequence"], a1["starts_at"])
    assert [p["join_url"] for p in body["participants"]] == [
        p["join_url"] for p in a1["participants"]
    ]
    assert [p["display_name"] for p in body["participants"]] == [
        p["display_name"] for p in a1["participants"]
    ]
    hook = await client.get(f"/v1/webhooks/endpoints/{world.endpoint['id']}",
                            headers=bearer(world.a_scheduler))
    assert hook.status_code == 200
    assert hook.json()["url"] == world.endpoint["url"]
    assert hook.json()["disabled_at"] is None
    admin = bearer(world.a_admin)
    log = await client.get("/v1/admin/consent-log", params={"booking_id": a1["id"]},
                           headers=admin)
    assert [(e["actor"], e["decision"]) for e in log.json()["items"]] == [
        ("subject", "granted")
    ]
    minor = a1["participants"][1]
    found = await client.get("/v1/admin/subjects", params={"q": minor["external_id"]},
                             headers=admin)
    assert [(s["restricted"], s["erased"]) for s in found.json()["subjects"]] == [
        (False, False)
    ]
