"""The security plane around tool calls, tested as attacks: leases, redaction, audit before
every write, calls left in doubt, approvals, and the confined process of each call.

Every tool here runs the way it runs in the daemon: the agent loop (against the Messages API
stand-in, through the real SDK) asks for it, the policy decides, and the call runs in its own
confined process (`tests/support/tools.py`), writing to a local HTTP service that plays the
outside world on a port the egress rule lets through.
"""

from __future__ import annotations

import json
import logging
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import approvals, models, observability, settings, vault
from appliance.agents import client, definitions, loop
from appliance.db import audit as dbaudit
from appliance.db import policies as dbpolicies
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry
from tests.support import engine as support
from tests.support import isolation, messages_api, outside, workflows
from tests.support import tools as support_tools

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "claude-sonnet-4-6"
AGENT = "clerk"
ALL_TOOLS = (
    "note",
    "refund",
    "delete_record",
    "leak",
    "attack",
    "expired_lease",
    "runaway",
    "spill",
    workflows.GATE_TOOL,
)
LABEL = "[redacted:default/payments/api-key]"
FRAGMENT = 20  # any run of this many characters of a secret's form counts as a leak


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[messages_api.Server]:
    """A fresh Messages API stand-in."""
    async with messages_api.running_server() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def service() -> AsyncIterator[outside.Service]:
    """The outside service the tools write to."""
    async with outside.Service().running() as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def box(db: dbpool.Pool) -> vault.Vault:
    """An initialised vault holding the clerk's payments key."""
    opened = await vault.open_vault(db, vault.new_key(), initialise=True)
    await put_secret(db, opened, "api-key", b"sk-live-" + secrets.token_hex(12).encode())
    return opened


async def put_secret(
    db: dbpool.Pool,
    opened: vault.Vault,
    name: str,
    value: bytes,
    *,
    workflow: str = f"agent:{AGENT}",
    integration: str = "payments",
    tenant_id: str = "default",
) -> None:
    await vault.set_secret(
        db,
        opened,
        tenant_id=tenant_id,
        integration=integration,
        workflow=workflow,
        name=name,
        value=value,
        actor="test",
    )


class Harness:
    """An agent with every test tool, run by a real worker with the daemon's tool actions."""

    def __init__(
        self,
        db: dbpool.Pool,
        dsn: str,
        api: messages_api.Server,
        opened: vault.Vault,
        service: outside.Service,
        tmp_path: Path,
    ) -> None:
        self.db = db
        self.dsn = dsn
        self.api = api
        self.vault = opened
        self.service = service
        self.tmp_path = tmp_path
        self.key_file = tmp_path / "secret-dir" / "vault.key"
        self.key_file.parent.mkdir()
        self.key_file.write_bytes(b"not-for-tools")
        self.key_file.chmod(0o600)
        self.cfg = support.engine_settings(node_name="security")

    def runtime(self, model: client.ModelClient, **isolation_settings: Any) -> loop.Runtime:
        isolation_settings.setdefault("egress_ports", (443, self.service.port))
        actions = isolation.tool_actions(
            self.db,
            opened=self.vault,
            hidden_paths=(self.key_file.parent,),
            **isolation_settings,
        )
        return loop.Runtime(self.db, model, self.model_config(), actions)

    def model_config(self) -> settings.ModelSettings:
        return settings.ModelSettings.model_validate(
            {"api_key": self.api.api_key, "base_url": self.api.base_url, "max_retries": 0}
        )

    async def define(self) -> None:
        path = self.tmp_path / "clerk.toml"
        path.write_text(
            f"name = {json.dumps(AGENT)}\nmodel = {json.dumps(MODEL)}\n"
            'persona = "You are a careful clerk."\n'
            f"tools = {json.dumps(list(ALL_TOOLS))}\nmax_tokens = 256\nmax_turns = 4\n"
        )
        await definitions.apply(self.db, definitions.load(path), tenant_id="default", actor="t")

    async def submit(self) -> int:
        await self.define()
        return await support.submit(
            self.db,
            registry.registry,
            self.cfg,
            workflow=loop.WORKFLOW,
            task_input={"agent": AGENT, "prompt": "Do it."},
        )

    async def run(self, task_id: int, **isolation_settings: Any) -> models.Task:
        """Run a worker until the task ends or waits."""
        model = client.ModelClient(self.model_config())
        services = {loop.SERVICE: self.runtime(model, **isolation_settings)}
        try:
            async with support.running_worker(
                self.db, self.dsn, self.cfg, registry.registry, services
            ) as w:
                return await support.wait_for_state(
                    self.db, task_id, workers=[w], states=("succeeded", "failed", "waiting")
                )
        finally:
            await model.close()

    async def call(self, tool: str, arguments: dict[str, Any], **isolation_settings: Any) -> Any:
        """One task that calls one tool; the tool_result block the model got back."""
        self.api.script(messages_api.ToolUseReply(tool, arguments), messages_api.TextReply("Done."))
        task = await self.run(await self.submit(), **isolation_settings)
        assert task.state == "succeeded", task
        return self.tool_result(-1)

    def tool_result(self, index: int) -> dict[str, Any]:
        """The tool_result block of the index-th request to the model."""
        body = self.api.requests_to("/v1/messages")[index].body
        result: dict[str, Any] = body["messages"][-1]["content"][0]
        return result

    async def entries(self, task_id: int, *actions: str) -> list[models.AuditEntry]:
        chain = await dbaudit.list_chain(self.db, f"task:{task_id}")
        return [e for e in chain if not actions or e.action in actions]


@pytest_asyncio.fixture(loop_scope="session")
async def harness(
    db: dbpool.Pool,
    database_dsn: str,
    api: messages_api.Server,
    box: vault.Vault,
    service: outside.Service,
    tmp_path: Path,
) -> Harness:
    """The security harness over an emptied database."""
    return Harness(db, database_dsn, api, box, service, tmp_path)


class TestLeases:
    async def test_a_tool_writes_with_its_leased_secret_after_the_intent_is_committed(
        self, harness: Harness
    ) -> None:
        """note leases the key, writes with it; intent, lease and result are audited in order."""
        result = await harness.call("note", {"port": harness.service.port, "text": "hi"})

        assert "is_error" not in result
        [request] = harness.service.requests
        assert request["authorization"].startswith("Bearer sk-live-")
        [task] = await dbtasks.list_tasks(harness.db, tenant_id="default")
        assert request["idempotency_key"] == f"task-{task.task_id}-step-3"
        actions = [e.action for e in await harness.entries(task.task_id)]
        tool_actions = [a for a in actions if a.startswith(("tool.", "lease."))]
        assert tool_actions == ["tool.decided", "tool.intent", "lease.granted", "tool.result"]

    async def test_a_lease_redeemed_after_it_expired_is_refused(self, harness: Harness) -> None:
        """A lease waited on past its time-to-live gives the tool a clear error, audited."""
        result = await harness.call("expired_lease", {"wait": 1.3}, lease_ttl_seconds=1)

        outcome = json.loads(result["content"])
        assert outcome.startswith("refused: NotAllowedError: redeem refused: lease ")
        assert "expired at" in outcome
        [task] = await dbtasks.list_tasks(harness.db, tenant_id="default")
        [refusal] = await harness.entries(task.task_id, "isolation.refused")
        assert "expired" in refusal.detail["reason"]


class TestAttacksFromInsideTheToolProcess:
    async def test_every_escape_fails_and_the_control_plane_audits_its_refusals(
        self, harness: Harness, database_dsn: str
    ) -> None:
        """Another workflow's or integration's secret, another tenant's task, the database,
        the key file, a spent or forged lease, a signal to the daemon, a write outside."""
        await put_secret(harness.db, harness.vault, "other-key", b"sk-other-workflow-value")
        await put_secret(
            harness.db, harness.vault, "api-key", b"sk-other-integration", integration="mail"
        )
        await put_secret(
            harness.db, harness.vault, "other-key", b"sk-b", workflow="agent:someone-else"
        )
        other = await support.submit(
            harness.db,
            registry.registry,
            harness.cfg,
            workflow=workflows.SLEEPY,
            task_input={"seconds": 0},
            tenant_id="globex",
        )
        port = urllib.parse.urlsplit(database_dsn).port or 5432
        result = await harness.call(
            "attack",
            {
                "other_secret": "other-key-of-b",
                "other_integration": "mail",
                "other_task": other,
                "db_port": port,
                "key_file": str(harness.key_file),
                "outside": str(harness.tmp_path / "escaped.txt"),
            },
        )
        found = json.loads(result["content"])

        refused = {k: v for k, v in found.items() if v.startswith("refused")}
        assert set(refused) == {
            "other_workflow_secret",
            "other_integration_secret",
            "box_credential",
            "other_tenant_task",
            "raw_request",
            "reuse_spent_lease",
            "forged_lease",
            "database_tcp",
            "database_socket",
            "key_file",
            "signal_parent",
            "write_outside",
        }, found
        assert found["own_task"].startswith("ok: ")
        assert found["first_redeem"] == "ok"
        assert json.loads(found["environment"]) == ["HOME", "LANG", "PATH", "TMPDIR"]
        assert "Permission" in found["database_tcp"]
        assert not (harness.tmp_path / "escaped.txt").exists()
        [task] = await dbtasks.list_tasks(harness.db, tenant_id="default")
        refusals = [
            e.detail["request"] for e in await harness.entries(task.task_id, "isolation.refused")
        ]
        assert sorted(refusals) == ["lease", "lease", "lease", "redeem", "redeem", "sql", "task"]


async def everything_written(harness: Harness, caplog: pytest.LogCaptureFixture) -> str:
    """Every row of every table, every log record (message, traceback, and as the daemon's
    JSON formatter writes it), every request the Messages API stand-in got."""
    texts = []
    async with harness.db.acquire() as conn:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'appliance' AND table_type = 'BASE TABLE'"
        )
        for row in tables:
            dumped = await conn.fetchval(
                f"SELECT coalesce(string_agg(t::text, ''), '') "  # noqa: S608 - catalog names
                f"FROM appliance.{row['table_name']} t"
            )
            texts.append(dumped)
    plain, structured = logging.Formatter(), observability.JsonFormatter()
    for record in caplog.records:
        texts += [record.getMessage(), plain.format(record), structured.format(record)]
    texts += [json.dumps(request.body) for request in harness.api.requests]
    return "\n".join(texts)


def leaks(secret: str, written: str) -> list[str]:
    """The forms of `secret` (`support_tools.encoded_forms`) of which some part was written."""
    found = []
    for name, form in support_tools.encoded_forms(secret).items():
        pieces = {form[i : i + FRAGMENT] for i in range(max(1, len(form) - FRAGMENT + 1))}
        if any(piece in written for piece in pieces):
            found.append(name)
    return found


class TestRedaction:
    async def test_the_canary_secret_appears_nowhere_the_system_wrote(
        self, harness: Harness, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Leased, printed, logged and returned by a tool: the canary is in no table, no log
        line and no request to the model; the tool did have it (its result shows the label)."""
        canary = "canary-" + secrets.token_hex(16)
        await put_secret(harness.db, harness.vault, "api-key", canary.encode())
        caplog.set_level("DEBUG")

        result = await harness.call("leak", {})

        assert LABEL in result["content"]
        written = await everything_written(harness, caplog)
        assert canary not in written
        assert f"printed: the key is {LABEL}" in written

    @pytest.mark.parametrize(
        ("how", "shown"),
        [
            ("raise", "ValueError: the service refused [redacted:"),
            ("cause", "RuntimeError: the request failed (caused by KeyError: '[redacted:"),
            ("context", "(caused by PermissionError: [Errno 13] denied: '[redacted:"),
            ("type", f"ToolFailedError: {LABEL}: typed"),
            ("result", f'"value": "{LABEL} '),
            ("stdout", '"done"'),
            ("stderr", '"done"'),
            ("tail", '"done"'),
            ("exit", "exited with status 1"),
            ("crash", "exited with status 3"),
            ("request", "NotAllowedError: [redacted:"),
            ("lease", "NotAllowedError: lease refused: no secret '[redacted:"),
        ],
    )
    async def test_no_way_out_of_a_tool_carries_the_secret_in_any_encoding(
        self, harness: Harness, caplog: pytest.LogCaptureFixture, how: str, shown: str
    ) -> None:
        """Raised (with causes, as the class name), returned, printed, cut by the log's tail,
        in an exit or a crash, in a request or as the name of a lease: plain, base64(url)
        with or without padding, hex either case, inside Basic auth, percent-encoded; no
        piece of it is written anywhere, and the model is told what happened with the label
        in its place."""
        canary = "canary-" + secrets.token_hex(16)
        await put_secret(harness.db, harness.vault, "api-key", canary.encode())
        caplog.set_level("DEBUG")

        result = await harness.call("spill", {"how": how})

        assert shown in result["content"], result
        assert leaks(canary, await everything_written(harness, caplog)) == []


class TestAuditBeforeWrite:
    async def test_when_the_intent_entry_cannot_be_written_the_write_is_not_made(
        self, harness: Harness
    ) -> None:
        """A failing audit insert (a trigger here) stops the call before the tool runs."""
        async with harness.db.acquire() as conn:
            await conn.execute(
                "CREATE FUNCTION appliance.test_refuse_intent() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN IF NEW.action = 'tool.intent' THEN "
                "RAISE EXCEPTION 'audit store refuses'; END IF; RETURN NEW; END $$; "
                "CREATE TRIGGER test_refuse_intent BEFORE INSERT ON appliance.audit_entries "
                "FOR EACH ROW EXECUTE FUNCTION appliance.test_refuse_intent()"
            )
        try:
            harness.api.script(
                messages_api.ToolUseReply("note", {"port": harness.service.port}),
                messages_api.TextReply("Done."),
            )
            task = await harness.run(await harness.submit())
        finally:
            async with harness.db.acquire() as conn:
                await conn.execute(
                    "DROP TRIGGER test_refuse_intent ON appliance.audit_entries; "
                    "DROP FUNCTION appliance.test_refuse_intent()"
                )
        assert harness.service.requests == []
        assert task.state == "succeeded"
        result = harness.tool_result(-1)
        assert result["is_error"] is True
        assert "audit store refuses" in result["content"]
        assert await harness.entries(task.task_id, "lease.granted", "tool.result") == []

    async def interrupt(self, harness: Harness, tool: str) -> int:
        """Start a task whose write holds at a gate, and stop its worker there: the intent is
        committed, the result is not (a crash between the two)."""
        gate = harness.tmp_path / "gate"
        harness.api.script(
            messages_api.ToolUseReply(tool, {"port": harness.service.port, "hold": str(gate)}),
            messages_api.TextReply("Done."),
        )
        task_id = await harness.submit()
        model = client.ModelClient(harness.model_config())
        services = {loop.SERVICE: harness.runtime(model)}
        try:
            async with support.running_worker(
                harness.db, harness.dsn, harness.cfg, registry.registry, services
            ):

                async def intent() -> list[models.AuditEntry] | None:
                    return await harness.entries(task_id, "tool.intent") or None

                await support.wait_until(intent, what="the intent entry")
        finally:
            await model.close()
        gate.touch()
        return task_id

    async def test_an_idempotent_write_in_doubt_is_retried_with_the_same_key(
        self, harness: Harness
    ) -> None:
        """delete_record (idempotent) runs again after the crash, with the same key, once."""
        await dbpolicies.apply_policy(
            harness.db,
            tenant_id="default",
            document_text='[[rules]]\ntools = ["delete_record"]\neffect = "allow"\n',
            actor="test",
        )
        task_id = await self.interrupt(harness, "delete_record")
        task = await harness.run(task_id)

        assert task.state == "succeeded"
        [request] = harness.service.requests
        assert request["idempotency_key"] == f"task-{task_id}-step-3"
        assert len(await harness.entries(task_id, "tool.retried")) == 1
        assert len(await harness.entries(task_id, "tool.intent")) == 2

    async def test_a_non_idempotent_write_in_doubt_waits_for_a_person(
        self, harness: Harness
    ) -> None:
        """note (not idempotent) is not repeated blindly: the task waits for an approval."""
        task_id = await self.interrupt(harness, "note")
        task = await harness.run(task_id)

        assert (task.state, harness.service.requests) == ("waiting", [])
        [pending] = await approvals.list_requests(harness.db, task_id=task_id)
        assert pending.step_key.endswith("#in-doubt")
        await approvals.decide(
            harness.db, approval_id=pending.approval_id, approver="alice", approve=True, reason="ok"
        )
        task = await harness.run(task_id)
        assert task.state == "succeeded"
        assert len(harness.service.requests) == 1


class TestApprovals:
    async def test_a_destructive_call_waits_and_resumes_exactly_at_its_step(
        self, harness: Harness
    ) -> None:
        """delete_record parks the task; after approval it runs once, model:0 is not paid again."""
        harness.api.script(
            messages_api.ToolUseReply("delete_record", {"port": harness.service.port}),
            messages_api.TextReply("Deleted."),
        )
        task_id = await harness.submit()
        task = await harness.run(task_id)

        assert task.state == "waiting"
        assert (task.wait_reason or "").startswith("approval:")
        assert harness.service.requests == []
        [pending] = await approvals.list_requests(harness.db, task_id=task_id)
        assert (pending.tool, pending.action_class) == ("delete_record", "destructive")
        await approvals.decide(
            harness.db, approval_id=pending.approval_id, approver="alice", approve=True, reason="ok"
        )
        task = await harness.run(task_id)

        assert task.state == "succeeded"
        assert len(harness.service.requests) == 1
        assert len(harness.api.requests_to("/v1/messages")) == 2
        steps = [s.name for s in await dbtasks.list_steps(harness.db, task_id)]
        assert steps == ["agent", "retrieve", "model:0", "tool:0:delete_record", "model:1"]

    async def test_a_denied_call_is_told_to_the_model(self, harness: Harness) -> None:
        """A denial goes back to the model as the tool's error; nothing is written."""
        harness.api.script(
            messages_api.ToolUseReply("refund", {"port": harness.service.port, "amount": 5}),
            messages_api.TextReply("I could not refund."),
        )
        task_id = await harness.submit()
        await harness.run(task_id)
        [pending] = await approvals.list_requests(harness.db, task_id=task_id)
        await approvals.decide(
            harness.db, approval_id=pending.approval_id, approver="bob", approve=False, reason="no"
        )
        task = await harness.run(task_id)

        assert task.state == "succeeded"
        result = harness.tool_result(-1)
        assert result["is_error"] is True
        assert "was denied: no" in result["content"]
        assert harness.service.requests == []

    async def test_two_approvers_and_a_denial_that_fails_the_task(self, harness: Harness) -> None:
        """A rule asking two people: one approval keeps it pending; a denial fails the task."""
        await dbpolicies.apply_policy(
            harness.db,
            tenant_id="default",
            document_text=(
                '[[rules]]\ntools = ["refund"]\neffect = "require_approval"\n'
                'approvers = 2\non_denial = "fail_task"\n'
            ),
            actor="test",
        )
        harness.api.script(
            messages_api.ToolUseReply("refund", {"port": harness.service.port, "amount": 900}),
            messages_api.TextReply("Refunded."),
        )
        task_id = await harness.submit()
        await harness.run(task_id)
        [pending] = await approvals.list_requests(harness.db, task_id=task_id)
        assert pending.required_approvers == 2
        first = await approvals.decide(
            harness.db, approval_id=pending.approval_id, approver="alice", approve=True, reason=""
        )
        assert first.state == "pending"
        await approvals.decide(
            harness.db, approval_id=pending.approval_id, approver="bob", approve=False, reason="no"
        )
        task = await harness.run(task_id)

        assert task.state == "failed"
        assert "fails the task" in (task.error or "")
        assert harness.service.requests == []
        assert len(harness.api.requests_to("/v1/messages")) == 1


class TestResourceLimits:
    @pytest.mark.parametrize(
        ("how", "isolation_settings", "expected"),
        [
            ("memory", {"memory_mb": 256}, "MemoryError"),
            ("cpu", {"cpu_seconds": 1}, "SIGXCPU"),
            ("crash", {}, "SIGABRT"),
        ],
    )
    async def test_a_runaway_tool_fails_its_step_not_the_daemon(
        self, harness: Harness, how: str, isolation_settings: dict[str, Any], expected: str
    ) -> None:
        """Too much memory, CPU time, or a crash: the model gets an error, the task goes on."""
        result = await harness.call("runaway", {"how": how}, **isolation_settings)

        assert result["is_error"] is True
        assert expected in result["content"]

    async def test_open_files_are_limited(self, harness: Harness) -> None:
        """Past open_files, opening another file fails with EMFILE."""
        result = await harness.call("runaway", {"how": "files"}, open_files=32)

        assert json.loads(result["content"])["errno"] == "EMFILE"

    async def test_a_call_past_its_time_is_killed(self, harness: Harness) -> None:
        """A tool that never returns is killed at call_timeout_seconds."""
        gate = harness.tmp_path / "never"
        result = await harness.call(
            workflows.GATE_TOOL, {"gate": str(gate)}, call_timeout_seconds=1
        )

        assert result["is_error"] is True
        assert "ran past its 1 s limit" in result["content"]
