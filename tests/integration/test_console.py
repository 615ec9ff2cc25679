"""The console's identity, roles, tenant walls and cross-site protection, over real sockets.

People reach the console from their own tailnet addresses, resolved by the `tailscale`
stand-in's whois (tests/support/console.py); a real Postgres stands behind the services.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import approvals
from appliance.db import audit as dbaudit
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry
from tests.support import console, workflows
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


async def approval_of(db: dbpool.Pool, tenant: str, *, approvers: int = 1) -> approvals.Approval:
    """A pending approval request of a task of `tenant`."""
    return await approvals.request(
        db,
        tenant_id=tenant,
        task_id=await task_of(db, tenant),
        step_key="tool:1:refund",
        tool="refund",
        action_class="financial",
        arguments={"amount": 12},
        reason="refunds need a person",
        policy_version=1,
        approvers=approvers,
        timeout=HOUR,
    )


class TestWhoIsAsking:
    async def test_a_person_with_a_grant_is_known_by_login_node_and_roles(
        self, served: console.Console
    ) -> None:
        """/me names the whois login and node, and the role granted in each tenant."""
        async with served.client(console.ALICE) as alice:
            status, me = await alice.get("/api/v1/me")

        assert status == 200
        assert (me["login"], me["node"], me["via"]) == (
            "alice@example.com",
            "alice-laptop.tail1fb5f0.ts.net",
            "tailnet",
        )
        assert me["roles"] == {"acme": "operator"}

    async def test_a_person_without_a_grant_gets_403_naming_login_and_setting(
        self, served: console.Console
    ) -> None:
        """No grant: 403 whose page names the login and the [[console.grants]] setting."""
        async with served.client(console.DAVE) as dave:
            status, page = await dave.get("/", headers={"Accept": "text/html"})
            api_status, problem = await dave.get("/api/v1/tasks")

        assert status == 403
        assert "dave@example.com" in page
        assert "[[console.grants]]" in page
        assert console.CAPABILITY in page
        assert api_status == 403
        assert problem["login"] == "dave@example.com"

    async def test_a_tagged_device_is_refused_naming_its_tags(
        self, served: console.Console
    ) -> None:
        """A tagged device (a Prometheus server) is no person: 403 naming its tag."""
        async with served.client(console.PROMETHEUS) as device:
            status, problem = await device.get("/api/v1/me")

        assert status == 403
        assert problem["login"] == "tag:prom"

    async def test_a_capability_grant_raises_a_config_grant(self, served: console.Console) -> None:
        """Erin: viewer of globex by the config, approver by the tailnet capability: approver."""
        async with served.client(console.ERIN) as erin:
            _, me = await erin.get("/api/v1/me")

        assert me["roles"] == {"globex": "approver"}

    async def test_forged_identity_headers_on_tcp_are_ignored(
        self, served: console.Console
    ) -> None:
        """Serve's headers sent over TCP change nothing: Dave stays refused, Alice stays Alice."""
        forged = {"Tailscale-User-Login": console.FRANK.login, "Tailscale-User-Name": "Frank"}
        async with served.client(console.DAVE) as dave:
            dave_status, _ = await dave.get("/api/v1/me", headers=forged)
        async with served.client(console.ALICE) as alice:
            _, me = await alice.get("/api/v1/me", headers=forged)

        assert dave_status == 403
        assert me["login"] == console.ALICE.login

    async def test_serve_headers_on_the_serve_socket_name_the_person(
        self, served: console.Console
    ) -> None:
        """On the serve socket the headers are the identity, Q-encoded names and capabilities."""
        headers = {
            "Tailscale-User-Login": "dave@example.com",
            "Tailscale-User-Name": "=?utf-8?q?D=C3=A4ve?=",
            "Tailscale-App-Capabilities": (
                '{"example.com/cap/appliance": [{"tenants": ["acme"], "role": "viewer"}]}'
            ),
            "X-Forwarded-For": "100.101.102.103",
        }
        async with served.through_serve(headers) as dave:
            status, me = await dave.get("/api/v1/me")

        assert status == 200
        assert (me["login"], me["name"], me["node"], me["via"]) == (
            "dave@example.com",
            "Däve",
            "100.101.102.103",
            "serve",
        )
        assert me["roles"] == {"acme": "viewer"}

    async def test_the_serve_socket_refuses_a_request_without_a_login(
        self, served: console.Console
    ) -> None:
        """No Tailscale-User-Login on the serve socket (a tagged device, Funnel): 403."""
        async with served.through_serve({}) as nobody:
            status, _ = await nobody.get("/api/v1/me")

        assert status == 403

    async def test_whois_without_tailscaled_is_503_with_retry_after(
        self, served: console.Console, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """tailscaled down: nobody can be known, so 503 (try again), never a guess."""
        monkeypatch.setenv("FAKE_TAILSCALE_STATE", "DaemonDown")
        async with (
            served.client(console.ALICE) as alice,
            alice.session.get("/api/v1/me") as answer,
        ):
            status, retry = answer.status, answer.headers.get("Retry-After")

        assert (status, retry) == (503, "1")

    async def test_health_needs_no_identity(self, served: console.Console) -> None:
        """/healthz and /readyz answer anyone (a load balancer, a tagged device)."""
        async with served.client(console.PROMETHEUS) as device:
            assert (await device.get("/healthz"))[0] == 200
            assert (await device.get("/readyz"))[0] == 200


class TestTenantWalls:
    async def test_a_list_shows_only_the_granted_tenants_tasks(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """Alice (acme) lists acme's task, never globex's; Frank (both) lists both."""
        mine = await task_of(db, "acme")
        theirs = await task_of(db, "globex")
        async with served.client(console.ALICE) as alice:
            _, page = await alice.get("/api/v1/tasks")
            _, narrowed = await alice.get("/api/v1/tasks", params={"tenant": "globex"})
            _, count = await alice.get("/api/v1/tasks/count")
        async with served.client(console.FRANK) as frank:
            _, both = await frank.get("/api/v1/tasks")

        assert [t["task_id"] for t in page["tasks"]] == [mine]
        assert narrowed["tasks"] == []
        assert count == {"count": 1}
        assert [t["task_id"] for t in both["tasks"]] == [theirs, mine]

    async def test_another_tenants_task_approval_and_audit_are_not_found(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """globex's task and approval are 404 to Alice; its audit entries never appear."""
        theirs = await task_of(db, "globex")
        approval = await approval_of(db, "globex")
        async with served.client(console.ALICE) as alice:
            task_status, _ = await alice.get(f"/api/v1/tasks/{theirs}")
            approval_status, _ = await alice.get(f"/api/v1/approvals/{approval.approval_id}")
            cancel_status, _ = await alice.post(f"/api/v1/tasks/{theirs}/cancel")
            _, pending = await alice.get("/api/v1/approvals")
            _, entries = await alice.get("/api/v1/audit", params={"task_id": str(theirs)})

        assert (task_status, approval_status, cancel_status) == (404, 404, 404)
        assert pending == []
        assert entries == []

    async def test_costs_and_queue_of_another_tenant_are_not_shown(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """The queue and the cost report name only the granted tenants."""
        await task_of(db, "acme")
        await task_of(db, "globex")
        async with served.client(console.ALICE) as alice:
            _, queue = await alice.get("/api/v1/workforce/queue")
            cost_status, _ = await alice.get("/api/v1/costs", params={"by": "tenant"})

        assert {row["tenant_id"] for row in queue} == {"acme"}
        assert cost_status == 200


class TestRoles:
    async def test_a_viewer_cannot_submit_cancel_or_approve(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """Carol (viewer of acme) reads acme's task but every write is 403."""
        task_id = await task_of(db, "acme")
        approval = await approval_of(db, "acme")
        submission = {"tenant": "acme", "workflow": workflows.COUNTED, "input": {}}
        async with served.client(console.CAROL) as carol:
            read_status, _ = await carol.get(f"/api/v1/tasks/{task_id}")
            submit_status, _ = await carol.post("/api/v1/tasks", submission)
            cancel_status, _ = await carol.post(f"/api/v1/tasks/{task_id}/cancel")
            vote_status, problem = await carol.post(
                f"/api/v1/approvals/{approval.approval_id}/votes", {"approve": True}
            )

        assert read_status == 200
        assert (submit_status, cancel_status, vote_status) == (403, 403, 403)
        assert "viewer" in problem["error"]
        assert (await approvals.get(db, approval.approval_id)).votes == ()

    async def test_an_operator_cancels_and_the_audit_entry_names_login_and_node(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """Alice's cancel is audited as console:alice@example.com on alice-laptop..."""
        task_id = await task_of(db, "acme")
        async with served.client(console.ALICE) as alice:
            status, answer = await alice.post(f"/api/v1/tasks/{task_id}/cancel")

        assert (status, answer) == (200, {"task_id": task_id, "result": "cancelled"})
        [entry] = [
            e for e in await dbaudit.list_chain(db, f"task:{task_id}") if "cancel" in e.action
        ]
        assert entry.actor == "console:alice@example.com on alice-laptop.tail1fb5f0.ts.net"

    async def test_a_submission_is_checked_against_the_workflows_input(
        self, served: console.Console
    ) -> None:
        """An input the workflow does not take is 400 before anything is queued; a good one 201."""
        async with served.client(console.ALICE) as alice:
            bad_status, problem = await alice.post(
                "/api/v1/tasks", {"tenant": "acme", "workflow": workflows.TYPED, "input": {}}
            )
            good_status, answer = await alice.post(
                "/api/v1/tasks",
                {"tenant": "acme", "workflow": workflows.TYPED, "input": {"count": 2}},
            )
            _, page = await alice.get("/api/v1/tasks")

        assert bad_status == 400
        assert "count" in problem["error"]
        assert good_status == 201
        assert [t["task_id"] for t in page["tasks"]] == [answer["task_id"]]

    async def test_two_approvals_need_two_distinct_logins(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """Bob approves twice (second refused); Frank's approval is the second: approved."""
        approval = await approval_of(db, "acme", approvers=2)
        path = f"/api/v1/approvals/{approval.approval_id}/votes"
        async with served.client(console.BOB) as bob:
            first, after_one = await bob.post(path, {"approve": True, "reason": "fine"})
            again, _ = await bob.post(path, {"approve": True})
        async with served.client(console.FRANK) as frank:
            second, after_two = await frank.post(path, {"approve": True, "reason": "ok"})

        assert (first, again, second) == (200, 409, 200)
        assert after_one["state"] == "pending"
        assert after_two["state"] == "approved"
        assert [v["approver"] for v in after_two["votes"]] == [
            "console:bob@example.com",
            "console:frank@example.com",
        ]
        assert after_two["votes"][0]["declared_as"] == "Bob on bob-phone.tail1fb5f0.ts.net"


class TestReplay:
    async def test_an_operator_replays_a_task_audited_with_her_login(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """Alice replays an acme task whole: 201 with the new task, which names its source; both
        chains name her."""
        task_id = await task_of(db, "acme")
        async with served.client(console.ALICE) as alice:
            status, answer = await alice.post(f"/api/v1/tasks/{task_id}/replay", {})
            _, shown = await alice.get(f"/api/v1/tasks/{answer['task_id']}")

        assert status == 201
        assert answer == {
            "task_id": answer["task_id"],
            "replay_of": task_id,
            "from_step": None,
            "reused_steps": 0,
        }
        assert (shown["replay_of"], shown["replay_from"]) == (task_id, None)
        [told] = [
            e
            for e in await dbaudit.list_chain(db, f"task:{task_id}")
            if e.action == "task.replayed"
        ]
        assert told.actor == "console:alice@example.com on alice-laptop.tail1fb5f0.ts.net"

    async def test_a_viewer_cannot_replay_and_an_unknown_step_is_400(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """Carol (viewer) is 403; Alice naming a step the task lacks is 400 saying so."""
        task_id = await task_of(db, "acme")
        async with served.client(console.CAROL) as carol:
            viewer_status, _ = await carol.post(f"/api/v1/tasks/{task_id}/replay", {})
        async with served.client(console.ALICE) as alice:
            step_status, problem = await alice.post(
                f"/api/v1/tasks/{task_id}/replay", {"from_step": "two"}
            )

        assert (viewer_status, step_status) == (403, 400)
        assert (
            problem["error"]
            == f"task {task_id} has no step 'two'; it has no checkpoints (replay it whole)"
        )

    async def test_a_bulk_replay_needs_the_count_the_person_saw(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """The filter's count first; a bulk replay with another count is 409 and makes
        nothing; with the count it replays each matching task, oldest first."""
        first, second = await task_of(db, "acme"), await task_of(db, "acme")
        await task_of(db, "acme", priority=5)
        query = "/api/v1/tasks/count?tenant=acme&state=queued"
        async with served.client(console.ALICE) as alice:
            _, counted = await alice.get(query)
            stale, problem = await alice.post(
                "/api/v1/tasks/replay", {"tenant": "acme", "state": "queued", "expected": 2}
            )
            status, answer = await alice.post(
                "/api/v1/tasks/replay",
                {"tenant": "acme", "state": "queued", "expected": counted["count"]},
            )

        assert counted == {"count": 3}
        assert (stale, status) == (409, 200)
        assert "matches 3 task(s) now, not 2" in problem["error"]
        assert [r["replay_of"] for r in answer["replayed"]][:2] == [first, second]
        assert (len(answer["replayed"]), answer["refused"]) == (3, [])

    async def test_a_task_a_bulk_replay_cannot_fork_is_listed_with_the_reason(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """From step `two` of tasks that have no checkpoints: each is refused, saying why,
        and no task is made."""
        task_id = await task_of(db, "acme")
        body = {"tenant": "acme", "expected": 1, "from_step": "two"}
        async with served.client(console.ALICE) as alice:
            status, answer = await alice.post("/api/v1/tasks/replay", body)

        assert status == 200
        assert answer == {
            "replayed": [],
            "refused": [
                {
                    "task_id": task_id,
                    "reason": f"task {task_id} has no step 'two'; it has no checkpoints "
                    "(replay it whole)",
                }
            ],
        }
        assert len(await dbtasks.list_tasks(db)) == 1

    async def test_a_bulk_replay_covers_only_tenants_the_person_operates(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """Alice's bulk over globex is 404 (not her tenant); Carol's over acme, where she is a
        viewer, is 403; neither replays anything."""
        await task_of(db, "globex")
        await task_of(db, "acme")
        async with served.client(console.ALICE) as alice:
            alice_status, _ = await alice.post(
                "/api/v1/tasks/replay", {"tenant": "globex", "expected": 1}
            )
        async with served.client(console.CAROL) as carol:
            carol_status, _ = await carol.post("/api/v1/tasks/replay", {"expected": 1})

        assert (alice_status, carol_status) == (404, 403)
        assert len(await dbtasks.list_tasks(db)) == 2


class TestCrossSite:
    async def test_a_write_without_the_token_is_refused(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """A POST lacking X-CSRF-Token is 403 and cancels nothing."""
        task_id = await task_of(db, "acme")
        async with served.client(console.ALICE) as alice:
            async with alice.session.post(f"/api/v1/tasks/{task_id}/cancel") as answer:
                status = answer.status
            _, task = await alice.get(f"/api/v1/tasks/{task_id}")

        assert status == 403
        assert task["state"] == "queued"

    @pytest.mark.parametrize(
        "headers",
        [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}],
        ids=["sec-fetch-site", "origin"],
    )
    async def test_a_cross_site_write_with_the_token_is_refused(
        self, served: console.Console, db: dbpool.Pool, headers: dict[str, str]
    ) -> None:
        """Even with a valid token, a request another site makes is 403."""
        task_id = await task_of(db, "acme")
        async with served.client(console.ALICE) as alice:
            status, problem = await alice.post(f"/api/v1/tasks/{task_id}/cancel", headers=headers)
            _, task = await alice.get(f"/api/v1/tasks/{task_id}")

        assert status == 403
        assert "cross-site" in problem["error"]
        assert task["state"] == "queued"

    async def test_another_persons_token_is_refused(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """Bob's token does not work for Alice."""
        task_id = await task_of(db, "acme")
        async with served.client(console.BOB) as bob:
            token = await bob.token()
        async with (
            served.client(console.ALICE) as alice,
            alice.session.post(
                f"/api/v1/tasks/{task_id}/cancel", headers={"X-CSRF-Token": token}
            ) as answer,
        ):
            status = answer.status

        assert status == 403

    async def test_every_answer_carries_a_strict_content_security_policy(
        self, served: console.Console
    ) -> None:
        """CSP without inline script on 200, 403 and 404 answers, and health."""
        policies = []
        for who, path in [
            (console.ALICE, "/api/v1/me"),
            (console.DAVE, "/api/v1/me"),
            (console.ALICE, "/api/v1/nothing"),
            (console.DAVE, "/healthz"),
        ]:
            async with served.client(who) as client, client.session.get(path) as answer:
                policies.append(answer.headers.get("Content-Security-Policy", ""))

        for policy in policies:
            assert "script-src 'self'" in policy
            assert "unsafe-inline" not in policy
            assert "frame-ancestors 'none'" in policy


class TestLiveStream:
    async def test_a_listener_gets_its_tenants_changes_and_never_another_tenants(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """globex's task, then acme's: Alice's stream brings acme's and nothing of globex."""
        async with (
            served.client(console.ALICE) as alice,
            alice.session.get("/api/v1/events") as stream,
        ):
            assert stream.headers["Content-Type"] == "text/event-stream"
            await task_of(db, "globex")
            mine = await task_of(db, "acme")
            events = await console.read_events(stream, until=lambda e: e.data["task_id"] == mine)

        assert {e.data["tenant_id"] for e in events} == {"acme"}
        assert events[-1].event == "task.submitted"
        assert events[-1].id == events[-1].data["seq"]

    async def test_a_reconnect_with_last_event_id_gets_what_it_missed(
        self, served: console.Console, db: dbpool.Pool
    ) -> None:
        """Events after Last-Event-ID come first (acme's only), then the live ones."""
        async with served.client(console.ALICE) as alice:
            async with alice.session.get("/api/v1/events") as stream:
                seen = await task_of(db, "acme")
                [*_, last] = await console.read_events(
                    stream, until=lambda e: e.data["task_id"] == seen
                )
            missed = await task_of(db, "acme")
            await task_of(db, "globex")
            headers = {"Last-Event-ID": str(last.id)}
            async with alice.session.get("/api/v1/events", headers=headers) as again:
                live = await task_of(db, "acme")
                events = await console.read_events(again, until=lambda e: e.data["task_id"] == live)

        task_ids = [e.data["task_id"] for e in events]
        assert task_ids[0] == missed
        assert task_ids[-1] == live
        assert {e.data["tenant_id"] for e in events} == {"acme"}
        assert all(e.id > last.id for e in events)
