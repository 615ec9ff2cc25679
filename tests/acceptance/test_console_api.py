"""The console's API as a daemon serves it: its OpenAPI document, fuzzed with Schemathesis.

`appliance run` on 127.0.0.1 (the box owner's console, every tenant); Schemathesis reads
/api/v1/openapi.json and sends generated requests to every operation, writes with the owner's
CSRF token: no answer may be a 5xx, and every answer must fit the document (its status, its
content type, its body's schema).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import pytest
import pytest_asyncio
import schemathesis
from schemathesis import checks
from schemathesis.core.result import Ok

from appliance.db import pool as dbpool
from tests.support import daemon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EXAMPLES = 15  # per operation
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest_asyncio.fixture(loop_scope="session")
async def served(db: dbpool.Pool, database_dsn: str, tmp_path: Path) -> AsyncIterator[str]:
    """The base URL of a daemon's console on 127.0.0.1 (no test workflows registered), also
    on the serve socket `<tmp_path>/console.sock` with a grant of viewer in acme to Alice."""
    overrides: dict[str, Any] = {
        "engine.workflow_modules": [],
        "console.serve_socket": str(tmp_path / "console.sock"),
        "console.grants": [{"login": "alice@example.com", "tenants": ["acme"], "role": "viewer"}],
    }
    async with daemon.running(database_dsn, tmp_path, name="console", overrides=overrides) as run:
        yield f"http://127.0.0.1:{run.health_port}"


async def owner_token(base_url: str) -> tuple[str, dict[str, Any]]:
    """The owner's CSRF token and /me."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/api/v1/me") as me:
        assert me.status == 200
        body: dict[str, Any] = await me.json()
    return str(body["csrf_token"]), body


def fuzz(base_url: str, token: str) -> int:
    """Every operation of the document, EXAMPLES generated requests each; how many ran."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json")
    calls = 0
    for found in schema.exclude(path="/api/v1/events").get_all_operations():
        assert isinstance(found, Ok), found
        operation = found.ok()

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def call(case: schemathesis.Case[Any]) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(
                base_url=base_url, headers={"X-CSRF-Token": token}, checks=CHECKS
            )

        call()
    return calls


class TestOpenApi:
    async def test_the_document_is_openapi_3_1_with_every_operation(self, served: str) -> None:
        """/api/v1/openapi.json is OpenAPI 3.1, with the task, approval and event paths."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{served}/api/v1/openapi.json") as answer,
        ):
            document = await answer.json()

        assert document["openapi"] == "3.1.0"
        assert {"/api/v1/tasks", "/api/v1/approvals/{approval_id}/votes", "/api/v1/events"} <= set(
            document["paths"]
        )
        assert "TaskSummary" in document["components"]["schemas"]

    async def test_the_loopback_console_is_the_box_owners(self, served: str) -> None:
        """On 127.0.0.1 the person is the box owner, admin of every tenant."""
        _, me = await owner_token(served)

        assert me["via"] == "loopback"
        assert me["roles"] == {"acme": "admin", "default": "admin", "globex": "admin"}

    async def test_the_serve_socket_is_private_and_trusts_the_headers(
        self, served: str, tmp_path: Path
    ) -> None:
        """The daemon's serve socket is mode 0600; there the headers name the person."""
        path = tmp_path / "console.sock"
        headers = {"Tailscale-User-Login": "alice@example.com", "X-Forwarded-For": "100.64.0.9"}
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(path)), headers=headers
            ) as session,
            session.get("http://console.example.ts.net/api/v1/me") as answer,
        ):
            me = await answer.json()

        assert path.stat().st_mode & 0o777 == 0o600
        assert (me["login"], me["via"], me["roles"]) == (
            "alice@example.com",
            "serve",
            {"acme": "viewer"},
        )

    async def test_fuzzing_finds_no_server_error_and_no_schema_violation(self, served: str) -> None:
        """Generated requests to every operation: no 5xx, every answer fits the document."""
        token, _ = await owner_token(served)

        calls = await asyncio.to_thread(fuzz, served, token)

        assert calls >= EXAMPLES
