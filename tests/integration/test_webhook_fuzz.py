"""Fuzzing the webhook endpoint with deliveries a generator makes (seeded, so a failure
reproduces): correctly signed bodies of every awkward kind are never a 5xx (2xx, or 400 with a
one-line reason), and what was accepted is stored exactly; deliveries altered after signing are
never accepted. `pytest -s` prints the figures the README quotes."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.ingress import signatures
from tests.integration import test_webhooks as hooks

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

SEED = 20261205
ROUNDS = 9
BATCH = 8
OTHER_SECRET = "whsec_" + base64.b64encode(b"another secret of 24 byte").decode()

Body = Callable[[random.Random], bytes]
Mutation = Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]]


def _text(rng: random.Random) -> str:
    alphabet = "abc xyz_-/.:é€😀\u2028\t\"\\'"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 6 if depth < 4 else 3)
    if kind == 0:
        return rng.randint(-(10**18), 10**18)
    if kind == 1:
        return rng.uniform(-1e300, 1e300)
    if kind == 2:
        return _text(rng)
    if kind == 3:
        return rng.choice([None, True, False])
    if kind in (4, 5):
        return {f"k{n}{_text(rng)}": _value(rng, depth + 1) for n in range(rng.randint(0, 4))}
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def _event(rng: random.Random) -> dict[str, Any]:
    return {"id": f"evt_{rng.getrandbits(48):x}", "object": "event", "data": _value(rng)}


def _with(token: bytes) -> Body:
    """A random event with `token` (raw JSON text) as one of its values."""

    def make(rng: random.Random) -> bytes:
        event = _event(rng)
        event["poison"] = "POISON"
        return (
            json.dumps(event, ensure_ascii=rng.random() < 0.5).encode().replace(b'"POISON"', token)
        )

    return make


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice([65, 100, 1000, 50_000])
    return b'{"id": "evt_deep", "x": ' + b"[" * depth + b"]" * depth + b"}"


def _duplicate(rng: random.Random) -> bytes:
    event = json.dumps(_event(rng)).encode()
    return event[:-1] + b', "object": "again"}'


UNSTORABLE: dict[str, Body] = {
    "number past a double": _with(b"1e999"),
    "negative number past a double": _with(b"-2.5E+400"),
    "NaN": _with(b"NaN"),
    "Infinity": _with(b"-Infinity"),
    "NUL escape": _with(b'"ab\\u0000cd"'),
    "lone high surrogate": _with(b'"x\\ud83d"'),
    "lone low surrogate": _with(b'"\\ude00y"'),
    "NUL escape in a key": _with(b'{"k\\u0000": 1}'),
    "integer of 5000 digits": _with(b"9" * 5000),
    "nesting too deep": _deep,
    "duplicate key": _duplicate,
}
STORABLE: dict[str, Body] = {
    "random event": lambda rng: json.dumps(_event(rng), ensure_ascii=rng.random() < 0.5).encode(),
    "surrogate pair escape": _with(b'"\\ud83d\\ude00"'),
    "largest double": _with(b"1.7976931348623157e308"),
    "integer of 1000 digits": _with(b"8" * 1000),
    "nesting 64 deep": _with(b"[" * 63 + b"]" * 63),
    "truncated JSON": lambda rng: json.dumps(_event(rng)).encode()[: rng.randint(1, 20)],
    "BOM before JSON": lambda rng: "\ufeff".encode() + json.dumps(_event(rng)).encode(),
    "text with a raw NUL": lambda rng: b"a=1\x00b=" + _text(rng).encode(),
    "bytes that are not UTF-8": lambda rng: bytes(rng.getrandbits(8) for _ in range(64)),
    "UTF-8 encoded surrogate": lambda rng: b'{"id": "evt_s", "x": "\xed\xa0\x80"}',
    "empty body": lambda rng: b"",
}


def _sign(scheme: str, body: bytes, delivery_id: str, secret: str | None = None) -> dict[str, str]:
    now = int(time.time())
    if scheme == "standard":
        return hooks.signed(body, delivery_id, now, secret or hooks.SECRET)
    if scheme == "github":
        return {
            "x-hub-signature-256": signatures.sign_github(secret or hooks.GH_SECRET, body),
            "x-github-delivery": delivery_id,
        }
    return {"stripe-signature": signatures.sign_stripe(secret or hooks.STRIPE_SECRET, now, body)}


SOURCES = {"standard": "billing", "github": "repo", "stripe": "payments"}


def _mutations(
    scheme: str,
) -> dict[str, Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]]]:
    """Ways to alter a correctly signed delivery after signing: none may be accepted."""

    def flip(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return bytes([body[0] ^ 0x01]) + body[1:], headers

    def append(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return body + b" ", headers

    def cut(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return body[:-1], headers

    def other_secret(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        secret = {"standard": OTHER_SECRET, "github": "not it", "stripe": "whsec_not_it"}[scheme]
        return body, _sign(scheme, body, "m_other", secret) | _ids(headers)

    def unsigned(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        name = {"standard": "webhook-signature", "github": "x-hub-signature-256"}.get(
            scheme, "stripe-signature"
        )
        return body, {k: v for k, v in headers.items() if k != name}

    found: dict[str, Mutation] = {
        "flipped body byte": flip,
        "appended body byte": append,
        "cut body": cut,
        "signed with another secret": other_secret,
        "signature removed": unsigned,
    }
    if scheme == "standard":

        def new_id(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            return body, {**headers, "webhook-id": headers["webhook-id"] + "x"}

        def later(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            stamp = int(headers["webhook-timestamp"]) + 1
            return body, {**headers, "webhook-timestamp": str(stamp)}

        def stale(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            stamp = int(time.time()) - 400
            signature = signatures.sign_standard(hooks.SECRET, headers["webhook-id"], stamp, body)
            return body, {
                **headers,
                "webhook-timestamp": str(stamp),
                "webhook-signature": signature,
            }

        found |= {"id changed": new_id, "timestamp changed": later, "stale but signed": stale}
    if scheme == "stripe":

        def moved(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            t, v1 = headers["stripe-signature"].split(",")
            return body, {"stripe-signature": f"t={int(t[2:]) - 1},{v1}"}

        found["t= changed"] = moved
    return found


def _ids(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in ("webhook-id", "x-github-delivery")}


async def _stored(db: dbpool.Pool, task_id: int) -> Any:
    task = await dbtasks.get_task(db, task_id)
    assert task is not None
    return task.input


class TestFuzz:
    async def test_signed_bodies_are_never_5xx_and_altered_ones_never_accepted(
        self, db: dbpool.Pool
    ) -> None:
        """Every signed kind x scheme x round: 2xx or 400 with a reason (unstorable kinds
        always 400); accepted bodies stored exactly; every mutation refused."""
        rng = random.Random(SEED)  # noqa: S311 - seeded on purpose: a failure reproduces
        outcomes: Counter[str] = Counter()
        accepted_bad = 0
        sent = 0
        kinds: set[str] = set()
        async with hooks.durable_intake(db) as intake, hooks.serving(intake) as endpoint:
            jobs = []
            for round_ in range(ROUNDS):
                for scheme, source in SOURCES.items():
                    for kind, make in (UNSTORABLE | STORABLE).items():
                        jobs.append(("signed", scheme, source, kind, make(rng), round_))
                    jobs.extend(
                        ("altered", scheme, source, kind, _event_body(rng), round_)
                        for kind in _mutations(scheme)
                    )

            async def run(job: tuple[str, str, str, str, bytes, int]) -> None:
                nonlocal accepted_bad, sent
                what, scheme, source, kind, body, round_ = job
                delivery_id = f"{what}-{scheme}-{round_}-{abs(hash(kind))}"
                headers = _sign(scheme, body, delivery_id)
                if what == "altered":
                    body, headers = _mutations(scheme)[kind](body, headers)
                status, answer, _ = await endpoint.post(endpoint.url(source=source), body, headers)
                sent += 1
                kinds.add(f"{what}:{kind}")
                outcomes[f"{what} {status}"] += 1
                assert status < 500, (scheme, kind, status, answer)
                if what == "altered":
                    accepted_bad += status < 300
                    return
                if kind in UNSTORABLE:
                    assert status == 400, (scheme, kind, status, answer)
                if status == 400:
                    assert "\n" not in answer["reason"]
                if status == 202:
                    stored = await _stored(db, answer["task_id"])
                    assert stored["body"] == _expected(body), (scheme, kind)

            for start in range(0, len(jobs), BATCH):
                await asyncio.gather(*(run(job) for job in jobs[start : start + BATCH]))
        print(
            f"\nfuzz: {sent} requests, {len(kinds)} kinds x 3 schemes, "
            f"accepted bad deliveries: {accepted_bad}, outcomes: {dict(sorted(outcomes.items()))}"
        )
        assert accepted_bad == 0
        assert sent == len(jobs) >= 700


def _event_body(rng: random.Random) -> bytes:
    return json.dumps(_event(rng)).encode()


def _expected(body: bytes) -> Any:
    """What the task's `body` holds for an accepted body: the JSON, the text, or null."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None if "\x00" in text else text
