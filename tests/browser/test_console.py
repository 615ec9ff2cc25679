"""A person's flow through the console in Chromium, and the walls around it.

The flow: Alice (operator of acme) submits an agent task and watches its timeline grow live
until it waits for an approval; Bob (approver of acme) approves it with a reason; Alice sees the
task finish and its cost on the cost page. A daemon runs the task (its model is the Messages
API stand-in); the console is served in-process on the same Postgres. Every page is
photographed (test-output/console/).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Page, expect

from appliance import approvals
from appliance.agents import costs, definitions
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry
from tests.browser.conftest import Open, Shoot
from tests.support import console, console_tools, daemon, ledger, messages_api, workflows
from tests.support import engine as support

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="session")]

AGENT = """
name = "support"
model = "claude-sonnet-4-6"
persona = "You answer customers. Answer with the send_reply tool."
tools = ["send_reply"]
max_tokens = 200
max_turns = 3
"""
LIVE_MS = 20_000  # the task's turns, each within a second of its change
CONFIG = support.engine_settings(node_name="console-test")


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[messages_api.Server]:
    """The Messages API stand-in the daemon's agent calls."""
    async with messages_api.running_server() as server:
        yield server


async def spans(page: Page) -> int:
    return await page.locator("svg.timeline g.span").count()


async def queued(db: dbpool.Pool, tenant: str) -> int:
    return await support.submit(
        db, registry.registry, CONFIG, workflow=workflows.COUNTED, tenant_id=tenant
    )


async def pending(db: dbpool.Pool, tenant: str) -> approvals.Approval:
    return await approvals.request(
        db,
        tenant_id=tenant,
        task_id=await queued(db, tenant),
        step_key="tool:0:send_reply",
        tool=console_tools.SEND_REPLY,
        action_class="customer_facing",
        arguments={"to": "someone@example.org", "text": "hello"},
        reason="customer-facing calls need a person",
        policy_version=None,
        approvers=1,
        timeout=dt.timedelta(hours=1),
    )


class TestFlow:
    @pytest.mark.slow
    async def test_an_operator_submits_an_approver_approves_and_the_cost_shows(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        served: console.Console,
        open_as: Open,
        shoot: Shoot,
        tmp_path: Path,
    ) -> None:
        """Submit, watch it grow live, wait for approval, approve with a reason, see the cost."""
        agent_file = tmp_path / "support.toml"
        agent_file.write_text(AGENT)
        await definitions.apply(db, definitions.load(agent_file), tenant_id="acme", actor="t")
        api.script(
            messages_api.ToolUseReply(
                console_tools.SEND_REPLY, {"to": "c@example.org", "text": "Refund sent."}
            ),
            messages_api.TextReply("I told the customer."),
        )
        overrides = {
            "model.api_key": api.api_key,
            "model.base_url": api.base_url,
            "engine.workflow_modules": [daemon.WORKFLOW_MODULE, console_tools.__name__],
        }
        async with (
            daemon.running(database_dsn, tmp_path, name="worker", overrides=overrides) as worker,
            open_as(console.ALICE) as alice,
            open_as(console.BOB) as bob,
            open_as(console.DAVE) as dave,
        ):
            page = await alice.new_page()
            await page.goto("/tasks")
            await shoot(page, "tasks")
            await page.fill("#submit-agent", "support")
            await page.fill("#submit-prompt", "Where is my refund?")
            await page.click("#submit-button")
            await page.wait_for_url(re.compile(r"/tasks/\d+$"))
            task_id = int(page.url.rsplit("/", 1)[1])
            await page.evaluate("window.sameDocument = true")
            first = await spans(page)

            # The timeline grows live, without a reload, until the task waits for Bob.
            await expect(page.locator("#approval-waiting")).to_be_visible(timeout=LIVE_MS)
            assert await page.evaluate("window.sameDocument") is True
            assert await spans(page) > first
            await expect(page.locator("#task-state")).to_have_text("waiting")
            await shoot(page, "timeline-waiting")

            inbox = await bob.new_page()
            await inbox.goto("/approvals")
            card = inbox.locator("article.approval.pending")
            await expect(card).to_have_count(1)
            await expect(card).to_contain_text("customer_facing")
            await expect(card).to_contain_text("c@example.org")
            await shoot(inbox, "approvals")
            await card.locator(".reason-input").fill("Checked: the refund went out today")
            await card.locator("button.approve").click()
            await inbox.wait_for_url(re.compile(r"/approvals$"))
            await expect(inbox.locator("#no-approvals")).to_be_visible()

            # Alice's open page follows the task to its end.
            await expect(page.locator("#task-state")).to_have_text("succeeded", timeout=LIVE_MS)
            assert await page.evaluate("window.sameDocument") is True
            await expect(page.locator("#span-table")).to_contain_text("model call")
            await expect(page.locator("#span-table")).to_contain_text("approval")
            await shoot(page, "timeline-succeeded")

            [spent] = await costs.cost_report(db, by="tenant", since=None, tenant_id="acme")
            await page.goto("/costs")
            await expect(page.locator("#costs-by-tenant")).to_contain_text(f"${spent.cost_usd:.6f}")
            await shoot(page, "costs")
            for path, name in (("/workforce", "workforce"), ("/audit", "audit"), ("/box", "box")):
                await page.goto(path)
                await shoot(page, name)
            refused = await dave.new_page()
            answer = await refused.goto("/tasks")
            assert answer is not None
            assert answer.status == 403
            await shoot(refused, "forbidden")
            assert worker.count("daemon.ready") == 1

        task = await dbtasks.get_task(db, task_id)
        assert task is not None
        assert task.state == "succeeded"
        [decided] = await approvals.list_requests(
            db, tenant_id="acme", task_id=task_id, pending_only=False, limit=10
        )
        assert [v.approver for v in decided.votes] == ["console:bob@example.com"]


class TestWithoutJavaScript:
    async def test_submit_and_approve_work_with_plain_forms(
        self, db: dbpool.Pool, open_as: Open, shoot: Shoot
    ) -> None:
        """With scripts off, the submit form queues a task and the vote form decides."""
        request = await pending(db, "acme")
        async with open_as(console.ALICE, javascript=False) as alice:
            page = await alice.new_page()
            await page.goto("/tasks")
            await page.check("input[name=kind][value=workflow]")
            await page.fill("#submit-workflow", workflows.COUNTED)
            await page.fill("#submit-input", '{"n": 7}')
            await page.click("#submit-button")
            await page.wait_for_url(re.compile(r"/tasks/\d+$"))
            await expect(page.locator("#task-state")).to_have_text("queued")
            await shoot(page, "submitted")
            task_id = int(page.url.rsplit("/", 1)[1])
        async with open_as(console.BOB, javascript=False) as bob:
            inbox = await bob.new_page()
            await inbox.goto("/approvals")
            card = inbox.locator(f"#approval-{request.approval_id}")
            await card.locator(".reason-input").fill("fine")
            await card.locator("button.approve").click()
            await inbox.wait_for_url(re.compile(r"/approvals$"))
            await shoot(inbox, "approved")

        task = await dbtasks.get_task(db, task_id)
        assert task is not None
        assert (task.tenant_id, task.input) == ("acme", {"n": 7})
        assert (await approvals.get(db, request.approval_id)).state == "approved"


class TestWalls:
    async def test_a_person_without_a_grant_gets_403_naming_login_and_setting(
        self, open_as: Open, shoot: Shoot
    ) -> None:
        """Dave has no grant: the 403 page names his login and [[console.grants]]."""
        async with open_as(console.DAVE) as dave:
            page = await dave.new_page()
            answer = await page.goto("/tasks")
            assert answer is not None
            assert answer.status == 403
            await expect(page.locator("#login")).to_have_text(console.DAVE.login)
            await expect(page.locator("#remedy")).to_contain_text("[[console.grants]]")
            await shoot(page, "forbidden")

    async def test_a_viewer_sees_the_request_but_no_way_to_approve(
        self, db: dbpool.Pool, open_as: Open, shoot: Shoot
    ) -> None:
        """Carol (viewer): the request is shown, without the vote form."""
        request = await pending(db, "acme")
        async with open_as(console.CAROL) as carol:
            page = await carol.new_page()
            await page.goto("/approvals")
            card = page.locator(f"#approval-{request.approval_id}")
            await expect(card).to_contain_text("needs the approver role in tenant acme")
            await expect(card.locator("button.approve")).to_have_count(0)
            await shoot(page, "viewer-approvals")

    async def test_a_tenant_never_sees_another_tenants_tasks_costs_or_approvals(
        self, db: dbpool.Pool, open_as: Open, shoot: Shoot
    ) -> None:
        """Erin (globex) sees globex's task and request, none of acme's, on every page."""
        theirs = await pending(db, "acme")
        mine = await pending(db, "globex")
        await ledger.record_call(db, "acme", None, "1.250000")
        async with open_as(console.ERIN) as erin:
            page = await erin.new_page()
            await page.goto("/tasks")
            await expect(page.locator(f"a[href='/tasks/{mine.task_id}']")).to_have_count(1)
            await expect(page.locator(f"a[href='/tasks/{theirs.task_id}']")).to_have_count(0)
            await page.goto("/approvals")
            await expect(page.locator(f"#approval-{mine.approval_id}")).to_have_count(1)
            await expect(page.locator(f"#approval-{theirs.approval_id}")).to_have_count(0)
            await page.goto("/costs")
            await expect(page.locator("#cost-summary")).not_to_contain_text("1.250000")
            await expect(page.locator("#cost-summary")).not_to_contain_text("acme")
            answer = await page.goto(f"/tasks/{theirs.task_id}")
            assert answer is not None
            assert answer.status == 404
            await shoot(page, "other-tenants-task")
