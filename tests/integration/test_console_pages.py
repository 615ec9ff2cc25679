"""The console's pages over real sockets: what each person sees, and forms that work with no
script (posted with the token, answered with a redirect).

People reach the console from their own tailnet addresses (tests/support/console.py); a real
Postgres stands behind the services.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import approvals
from appliance.agents import costs, definitions
from appliance.db import audit as dbaudit
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry
from tests.support import console, ledger, workflows
from tests.support import engine as support

pytestmark = pytest.mark.timeout(60)

CONFIG = support.engine_settings(node_name="console-test")
HOUR = dt.timedelta(hours=1)


@pytest_asyncio.fixture(loop_scope="session")
async def served(
    db: dbpool.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[console.Console]:
    """The console on its sockets, the stand-in knowing every test person."""
    monkeypatch.setenv("FAKE_TAILSCALE_STATE", "Running")
    monkeypatch.setenv("FAKE_TAILSCALE_PEERS_FILE", str(console.write_peers(tmp_path)))
    monkeypatch.delenv("FAKE_TAILSCALE_STATE_FILE", raising=False)
    async with console.serving(db, tmp_path) as running:
        yield running


async def task_of(db: dbpool.Pool, tenant: str, **overrides: Any) -> int:
    """A queued task of `tenant` (test.counted, through the real submission path)."""
    return await support.submit(
        db, registry.registry, CONFIG, workflow=workflows.COUNTED, tenant_id=tenant, **overrides
    )


async def approval_of(db: dbpool.Pool, tenant: str) -> approvals.Approval:
    """A pending approval request of a task of `tenant`."""
    return await approvals.request(
        db,
        tenant_id=tenant,
        task_id=await task_of(db, tenant),
        step_key="tool:1:refund",
        tool="refund",
        action_class="financial",
        arguments={"amount": 12, "token": "[redacted]"},
        reason='rules[0] "refunds" (policy version 3): refunds need a person',
        policy_version=3,
        approvers=1,
        timeout=HOUR,
    )


async def page(client: console.Client, path: str) -> tuple[int, str]:
    """GET a page as a browser would (asking for HTML)."""
    async with client.session.get(path, headers={"Accept": "text/html"}) as answer:
        return answer.status, await answer.text()


async def submit_form(
    client: console.Client, path: str, fields: Mapping[str, str]
) -> tuple[int, str, str]:
    """POST a form as a browser with no script does: (status, Location, body)."""
    form = {"csrf_token": await client.token(), **fields}
    async with client.session.post(
        path, data=form, allow_redirects=False, headers={"Accept": "text/html"}
    ) as answer:
        return answer.status, answer.headers.get("Location", ""), await answer.text()


class TestTasksPage:
    async def test_the_list_shows_only_the_granted_tenants_tasks(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """Alice (acme) sees acme's task, never globex's."""
        mine = await task_of(db, "acme")
        theirs = await task_of(db, "globex")
        async with served.client(console.ALICE) as alice:
            status, html = await page(alice, "/tasks")

        assert status == 200
        assert f'href="/tasks/{mine}"' in html
        assert f'href="/tasks/{theirs}"' not in html

    async def test_filters_stay_in_the_url_and_page_by_task_id(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """state and text narrow the list; the next page link keeps them and goes by id."""
        ids = [await task_of(db, "acme", task_input={"n": i}) for i in range(3)]
        async with served.client(console.ALICE) as alice:
            status, html = await page(alice, "/tasks?state=queued&text=%22n%22&limit=2")
            older = re.search(r'href="(/tasks\?[^"]*)" id="next-page"', html)
            _, second = await page(alice, f"/tasks?state=queued&text=%22n%22&before={ids[1]}")

        assert status == 200
        assert 'name="text" value="&#34;n&#34;"' in html
        assert f'href="/tasks/{ids[0]}"' not in html
        assert older is not None
        assert older.group(1).replace("&amp;", "&") == (
            f"/tasks?state=queued&text=%22n%22&limit=2&before={ids[1]}"
        )
        assert f'href="/tasks/{ids[0]}"' in second
        assert f'href="/tasks/{ids[2]}"' not in second

    async def test_a_submitted_form_queues_the_task_and_redirects_to_its_timeline(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """The form (no script) posts with the token; 303 to the task, audited as Alice."""
        async with served.client(console.ALICE) as alice:
            status, location, _ = await submit_form(
                alice,
                "/tasks",
                {
                    "tenant": "acme",
                    "kind": "workflow",
                    "workflow": workflows.COUNTED,
                    "input": '{"n": 1}',
                    "priority": "5",
                },
            )

        assert status == 303
        task_id = int(location.rsplit("/", 1)[1])
        task = await dbtasks.get_task(db, task_id)
        assert task is not None
        assert (task.tenant_id, task.priority, task.input) == ("acme", 5, {"n": 1})
        [entry] = await dbaudit.list_chain(db, f"task:{task_id}")
        assert entry.actor == "console:alice@example.com on alice-laptop.tail1fb5f0.ts.net"

    async def test_a_bad_input_shows_the_form_again_with_why_and_queues_nothing(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """Input that is not JSON: 400, the problem named, what was typed kept."""
        async with served.client(console.ALICE) as alice:
            status, _, html = await submit_form(
                alice,
                "/tasks",
                {"tenant": "acme", "kind": "workflow", "workflow": "x", "input": "{oops"},
            )

        assert status == 400
        assert 'id="submit-problem"' in html
        assert "input: not JSON" in html
        assert "{oops" in html
        assert await dbtasks.list_tasks(db, tenant_id="acme", state=None, limit=10) == []

    async def test_a_viewer_gets_no_form_and_a_forged_post_is_refused(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """Carol (viewer) sees no submit form; posting one anyway is 403."""
        async with served.client(console.CAROL) as carol:
            _, html = await page(carol, "/tasks")
            status, _, refused = await submit_form(
                carol, "/tasks", {"tenant": "acme", "kind": "agent", "agent": "support"}
            )

        assert 'id="submit-form"' not in html
        assert status == 403
        assert "viewer in tenant acme" in refused


class TestBulk:
    async def test_the_count_is_shown_before_the_set_is_cancelled(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """Confirming cancels exactly the counted tasks of the filter, one audit entry each."""
        ids = [await task_of(db, "acme") for _ in range(3)]
        other = await task_of(db, "globex")
        async with served.client(console.ALICE) as alice:
            _, confirm = await page(alice, "/tasks/bulk?action=cancel&state=queued")
            status, _, done = await submit_form(
                alice, "/tasks/bulk", {"action": "cancel", "state": "queued", "expected": "3"}
            )

        assert "3 task(s) will be cancelled" in confirm
        assert status == 200
        assert "Cancel: 3 task(s) done" in done
        states = [t.state for t in [await dbtasks.get_task(db, i) for i in ids] if t]
        assert states == ["cancelled"] * 3
        globex = await dbtasks.get_task(db, other)
        assert globex is not None
        assert globex.state == "queued"

    async def test_a_set_that_changed_since_it_was_counted_is_not_touched(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """A count that no longer holds: 409, the new count shown, nothing cancelled."""
        ids = [await task_of(db, "acme") for _ in range(2)]
        async with served.client(console.ALICE) as alice:
            status, _, html = await submit_form(
                alice, "/tasks/bulk", {"action": "cancel", "state": "queued", "expected": "1"}
            )

        assert status == 409
        assert "it has 2 now" in html
        states = [t.state for t in [await dbtasks.get_task(db, i) for i in ids] if t]
        assert states == ["queued", "queued"]


class TestTimeline:
    async def test_steps_attempts_and_audit_entries_are_drawn_on_one_scale(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """The SVG has a bar per span; the table gives each its start and duration in ms."""
        task_id = await task_of(db, "acme")
        claimed = await support.fake_claim(
            db, registry.registry, worker_id="w1", node="node-a", lease_seconds=30
        )
        assert claimed.task_id == task_id
        await support.record_step_as(
            db, task_id=task_id, worker="w1", attempt=1, name="one", position=0
        )
        await ledger.record_call(db, "acme", task_id, "0.004200")
        async with served.client(console.CAROL) as carol:
            status, html = await page(carol, f"/tasks/{task_id}")

        assert status == 200
        assert "dispatch + lease: attempt 1/3 on node-a" in html
        assert "checkpoint 0: one" in html
        assert "model call claude-sonnet-4-6: $0.004200" in html
        assert "812.5 ms" in html
        assert html.count('<g class="span ') >= 4
        assert "verifies (" in html

    async def test_another_tenants_task_is_not_found(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """Erin (globex) asking for an acme task: 404, as if it did not exist."""
        task_id = await task_of(db, "acme")
        async with served.client(console.ERIN) as erin:
            status, html = await page(erin, f"/tasks/{task_id}")

        assert status == 404
        assert f"no task {task_id}" in html


class TestApprovalsPage:
    async def test_the_inbox_shows_what_why_rule_arguments_and_a_vote_form(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """Bob (approver) sees the request and the form; Carol (viewer) sees no form."""
        request = await approval_of(db, "acme")
        async with served.client(console.BOB) as bob:
            _, html = await page(bob, "/approvals")
        async with served.client(console.CAROL) as carol:
            _, viewer = await page(carol, "/approvals")

        assert f'id="approval-{request.approval_id}"' in html
        assert "refunds need a person" in html
        assert "financial" in html
        assert "[redacted]" in html
        assert 'class="vote-form"' in html
        assert 'class="vote-form"' not in viewer
        assert "needs the approver role in tenant acme" in viewer

    async def test_an_approval_posted_as_a_form_decides_it_with_the_reason(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """approve + reason: 303 to the inbox, the request approved by Bob's login."""
        request = await approval_of(db, "acme")
        async with served.client(console.BOB) as bob:
            status, location, _ = await submit_form(
                bob,
                f"/approvals/{request.approval_id}",
                {"decision": "approve", "reason": "checked with finance"},
            )

        assert (status, location) == (303, "/approvals")
        decided = await approvals.get(db, request.approval_id)
        assert decided.state == "approved"
        [vote] = decided.votes
        assert (vote.approver, vote.reason) == ("console:bob@example.com", "checked with finance")

    async def test_a_viewer_cannot_approve(self, db: dbpool.Pool, served: console.Console) -> None:
        """Carol's forged vote: 403, the request still pending."""
        request = await approval_of(db, "acme")
        async with served.client(console.CAROL) as carol:
            status, _, html = await submit_form(
                carol, f"/approvals/{request.approval_id}", {"decision": "approve"}
            )

        assert status == 403
        assert "approver or more is needed" in html
        assert (await approvals.get(db, request.approval_id)).state == "pending"

    async def test_another_tenants_requests_are_not_listed(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """Erin (globex) does not see acme's request."""
        request = await approval_of(db, "acme")
        async with served.client(console.ERIN) as erin:
            _, html = await page(erin, "/approvals")

        assert f'id="approval-{request.approval_id}"' not in html


class TestCostPage:
    async def test_the_numbers_are_those_of_appliance_cost(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """Cost per tenant as `appliance cost --by tenant` computes and prints it."""
        await ledger.record_call(db, "acme", None, "0.012345")
        await ledger.record_call(db, "acme", None, "0.000655")
        await ledger.record_call(db, "globex", None, "9.000000")
        [expected] = await costs.cost_report(db, by="tenant", since=None, tenant_id="acme")
        async with served.client(console.ALICE) as alice:
            status, html = await page(alice, "/costs")

        assert status == 200
        assert f"${expected.cost_usd:.6f}" == "$0.013000"
        for by in ("tenant", "agent", "model", "day"):
            table = html.split(f'id="costs-by-{by}"')[1].split("</table>")[0]
            [row] = await costs.cost_report(db, by=by, since=None, tenant_id="acme")
            assert f"${row.cost_usd:.6f}" in table
            assert f"${row.saving_usd:.6f}" in table
            assert f"{row.saving_fraction:.0%}" in table
            assert f">{row.input_tokens:,}<" in table
        assert "globex" not in html
        assert "$9.000000" not in html
        assert "<svg" in html.split('id="cost-summary"')[1]


class TestAuditPage:
    async def test_the_search_exports_as_json_lines(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """Narrowed by task, the export has that task's entries, one JSON object a line."""
        task_id = await task_of(db, "acme")
        await task_of(db, "acme")
        async with served.client(console.CAROL) as carol:
            status, html = await page(carol, f"/audit?task_id={task_id}")
            async with carol.session.get(f"/audit/export?task_id={task_id}") as answer:
                exported = await answer.text()
                kind = answer.content_type

        assert status == 200
        assert "Every hash chain of your tenants verifies." in html
        assert kind == "application/x-ndjson"
        lines = [json.loads(line) for line in exported.splitlines()]
        assert [(e["task_id"], e["action"]) for e in lines] == [(task_id, "task.submitted")]


class TestWorkforcePage:
    async def test_the_hours_count_attempts_and_the_queue_its_tasks(
        self, db: dbpool.Pool, served: console.Console
    ) -> None:
        """A claimed task is one attempt this hour and held by its node; idle hours are idle."""
        await task_of(db, "acme")
        await task_of(db, "acme")
        await support.fake_claim(
            db, registry.registry, worker_id="w1", node="node-a", lease_seconds=30
        )
        async with served.client(console.ALICE) as alice:
            status, html = await page(alice, "/workforce")

        assert status == 200
        hours = html.split('id="hours">')[1].split("</p>")[0]
        assert hours.count("attempt(s) started") == 1
        assert "1 attempt(s) started" in hours
        queue = html.split('id="queue"')[1].split("</table>")[0]
        assert ">running<" in queue
        assert ">queued<" in queue

    async def test_an_agents_persona_is_shown_as_a_diff_between_versions(
        self, db: dbpool.Pool, served: console.Console, tmp_path: Path
    ) -> None:
        """Version 2 against 1: the removed line with -, the added line with +."""
        for persona in ("Be brief.\nSign as Support.", "Be brief.\nSign as the Acme team."):
            path = tmp_path / "support.toml"
            path.write_text(
                f'name = "support"\nmodel = "claude-sonnet-4-6"\npersona = """{persona}"""\n'
            )
            await definitions.apply(db, definitions.load(path), tenant_id="acme", actor="t")
        async with served.client(console.CAROL) as carol:
            _, listing = await page(carol, "/workforce")
            status, html = await page(carol, "/workforce/agents/acme/support")

        assert "diff v1 → v2" in listing
        assert status == 200
        diff = html.split('id="persona-diff">')[1].split("</pre>")[0]
        assert '<span class="del">-Sign as Support.</span>' in diff
        assert '<span class="add">+Sign as the Acme team.</span>' in diff


class TestOtherPages:
    @pytest.mark.parametrize("path", ["/workforce", "/box", "/costs", "/audit", "/approvals"])
    async def test_each_page_answers_with_no_inline_script_or_style(
        self, served: console.Console, path: str
    ) -> None:
        """200, the CSP header, scripts by URL only and no style attribute."""
        async with (
            served.client(console.FRANK) as frank,
            frank.session.get(path, headers={"Accept": "text/html"}) as answer,
        ):
            html = await answer.text()
            policy = answer.headers["Content-Security-Policy"]

        assert answer.status == 200, html
        assert "script-src 'self'" in policy
        assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
        assert " style=" not in html

    async def test_a_person_without_a_grant_gets_the_403_page(
        self, served: console.Console
    ) -> None:
        """Dave: 403 naming his login and the setting that would let him in."""
        async with served.client(console.DAVE) as dave:
            status, html = await page(dave, "/tasks")

        assert status == 403
        assert 'id="login">dave@example.com<' in html
        assert "[[console.grants]]" in html
