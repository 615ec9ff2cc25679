"""`appliance approvals list|show|approve|deny` as a subprocess, against the real Postgres."""

from __future__ import annotations

import datetime as dt
import os
import pwd
from pathlib import Path
from typing import Any

import pytest

from appliance import approvals
from appliance.db import pool as dbpool
from appliance.engine import registry
from tests.support import daemon, workflows
from tests.support import engine as support

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ARGUMENTS = {"to": "customer@elsewhere.example", "subject": "Your refund", "token": "[redacted]"}
WHY = 'rules[1] "mail-outside-the-company" (policy version 2)'
LONG_WHY = (
    'rules[3] "refunds-over-the-limit" (policy version 7): a refund of 1,250.00 EUR to '
    "customer 88213 is above the 500.00 EUR a tool may refund alone; finance signs it off"
)
LONG_NO = (
    "denied: the customer was refunded by bank transfer on Monday, see ticket 4471 " * 2
).strip()


async def pending(db: dbpool.Pool, **overrides: Any) -> approvals.Approval:
    """A pending request for a queued task of the default registry; overrides replace any
    argument of `approvals.request`."""
    task_id = await support.submit(
        db, registry.registry, support.engine_settings(), workflow=workflows.COUNTED
    )
    values: dict[str, Any] = {
        "tenant_id": "default",
        "task_id": task_id,
        "step_key": "tool:0:send_email",
        "tool": "send_email",
        "action_class": "customer_facing",
        "arguments": ARGUMENTS,
        "reason": WHY,
        "policy_version": 2,
        "approvers": 1,
        "timeout": dt.timedelta(hours=24),
    }
    values.update(overrides)
    return await approvals.request(db, **values)


def os_user(sudo_user: str) -> str:
    """Who the CLI records when SUDO_USER is `sudo_user`: that user as root, else the real one."""
    if os.getuid() == 0:
        return f"os:{sudo_user}"
    return f"os:{pwd.getpwuid(os.getuid()).pw_name}"


async def cli(dsn: str, folder: Path, *args: str, sudo_user: str = "alice") -> daemon.Result:
    return await daemon.cli(*args, folder=folder, dsn=dsn, env={"SUDO_USER": sudo_user})


def assert_refused(result: daemon.Result, *fragments: str) -> None:
    """Exit 1 (the answer is no) with a one-line message naming `fragments`."""
    assert result.code == 1, f"exit {result.code}\n{result.stdout}\n{result.stderr}"
    assert result.stderr.startswith("appliance: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in {result.stderr!r}"


class TestList:
    async def test_list_shows_pending_requests_with_tool_class_and_reason(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """The table names the request, its tool, risk class, state and why."""
        approval = await pending(db)
        result = await cli(database_dsn, tmp_path, "approvals", "list")

        assert result.code == 0, result.stderr
        [header, row] = result.stdout.splitlines()
        assert header.split()[:4] == ["ID", "TENANT", "TASK", "TOOL"]
        assert row.split()[:7] == [
            str(approval.approval_id),
            "default",
            str(approval.task_id),
            "send_email",
            "customer_facing",
            "pending",
            "0/1",
        ]
        assert "mail-outside-the-company" in row

    async def test_decided_requests_are_listed_with_all_only(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A decided request leaves the default list and shows under --all."""
        approval = await pending(db)
        await approvals.decide(
            db, approval_id=approval.approval_id, approver="os:bob", approve=False, reason=None
        )
        default = await cli(database_dsn, tmp_path, "--json", "approvals", "list")
        everything = await cli(database_dsn, tmp_path, "--json", "approvals", "list", "--all")

        assert default.json() == []
        assert [(a["approval_id"], a["state"]) for a in everything.json()] == [
            (approval.approval_id, "denied")
        ]

    async def test_list_filters_by_tenant(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """--tenant keeps that tenant's requests only."""
        await pending(db)
        result = await cli(
            database_dsn, tmp_path, "--json", "approvals", "list", "--tenant", "acme"
        )

        assert result.json() == []


class TestShow:
    async def test_show_prints_what_why_arguments_class_and_deadline(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A person sees everything needed to decide."""
        approval = await pending(db)
        result = await cli(database_dsn, tmp_path, "approvals", "show", str(approval.approval_id))

        assert result.code == 0, result.stderr
        lines = dict(line.split(None, 1) for line in result.stdout.splitlines() if " " in line)
        assert lines["tool"] == "send_email"
        assert lines["state"] == "pending"
        assert WHY in result.stdout
        assert "customer_facing" in result.stdout
        assert '"to": "customer@elsewhere.example"' in result.stdout
        assert approval.deadline.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") in result.stdout

    async def test_show_json_has_the_request_and_its_votes(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """--json carries the arguments as data and each vote with who cast it."""
        approval = await pending(db, approvers=2)
        await approvals.decide(
            db,
            approval_id=approval.approval_id,
            approver="os:root",
            declared_as="carol",
            approve=True,
            reason="looks right",
        )
        result = await cli(
            database_dsn, tmp_path, "--json", "approvals", "show", str(approval.approval_id)
        )

        data = result.json()
        assert data["arguments"] == ARGUMENTS
        assert data["action_class"] == "customer_facing"
        assert [(v["who"], v["decision"], v["reason"]) for v in data["votes"]] == [
            ("carol (os:root)", "approve", "looks right")
        ]

    async def test_showing_an_unknown_request_exits_1(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """An id that does not exist is not found."""
        result = await cli(database_dsn, tmp_path, "approvals", "show", "4242")

        assert_refused(result, "4242")


class TestWholeReasons:
    async def test_show_prints_a_long_reason_whole(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """The why of a request and the reason of a vote are printed uncut."""
        approval = await pending(db, reason=LONG_WHY)
        await approvals.decide(
            db, approval_id=approval.approval_id, approver="os:bob", approve=False, reason=LONG_NO
        )
        result = await cli(database_dsn, tmp_path, "approvals", "show", str(approval.approval_id))

        assert result.code == 0, result.stderr
        assert LONG_WHY in result.stdout
        assert LONG_NO in result.stdout

    async def test_list_cuts_a_long_reason_and_says_where_it_is_whole(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """The listing marks the cut and names `approvals show` on stderr."""
        await pending(db, reason=LONG_WHY)
        result = await cli(database_dsn, tmp_path, "approvals", "list")

        assert result.code == 0, result.stderr
        assert LONG_WHY not in result.stdout
        assert result.stdout.splitlines()[1].endswith("...")
        assert "appliance approvals show ID" in result.stderr


class TestDecide:
    async def test_approve_records_the_os_user(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """The decider is the OS user running the command (the sudo caller when root)."""
        approval = await pending(db)
        result = await cli(
            database_dsn,
            tmp_path,
            "--json",
            "approvals",
            "approve",
            str(approval.approval_id),
            "--reason",
            "checked with the customer",
            sudo_user="dave",
        )

        assert result.code == 0, result.stderr
        data = result.json()
        assert data["state"] == "approved"
        [vote] = data["votes"]
        assert (vote["approver"], vote["declared_as"]) == (os_user("dave"), None)
        assert vote["reason"] == "checked with the customer"

    async def test_as_adds_a_declared_name_to_the_os_user(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """--as NAME is recorded with the OS user: `NAME (os:USER)`."""
        approval = await pending(db)
        result = await cli(
            database_dsn,
            tmp_path,
            "approvals",
            "approve",
            str(approval.approval_id),
            "--as",
            "alice",
        )

        assert result.code == 0, result.stderr
        assert "approved" in result.stdout
        [vote] = (await approvals.get(db, approval.approval_id)).votes
        assert vote.who == f"alice ({os_user('alice')})"

    async def test_deny_decides_and_says_the_task_resumes(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """One deny decides; the output says so."""
        approval = await pending(db, approvers=2)
        result = await cli(
            database_dsn, tmp_path, "approvals", "deny", str(approval.approval_id), "--reason", "no"
        )

        assert result.code == 0, result.stderr
        assert f"approval {approval.approval_id}: denied" in result.stdout
        after = await approvals.get(db, approval.approval_id)
        assert (after.state, after.decision_reason) == ("denied", "no")

    async def test_a_first_of_two_approvals_leaves_it_pending(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """With two approvers needed the first approval says another is needed."""
        approval = await pending(db, approvers=2)
        result = await cli(
            database_dsn, tmp_path, "approvals", "approve", str(approval.approval_id)
        )

        assert result.code == 0, result.stderr
        assert "pending, 1/2 approvals" in result.stdout

    async def test_the_same_person_approving_twice_exits_1(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A second vote of the same OS user is refused, even under another --as name."""
        approval = await pending(db, approvers=2)
        first = await cli(
            database_dsn, tmp_path, "approvals", "approve", str(approval.approval_id), "--as", "a"
        )
        second = await cli(
            database_dsn, tmp_path, "approvals", "approve", str(approval.approval_id), "--as", "b"
        )

        assert first.code == 0, first.stderr
        assert_refused(second, "already voted")
        assert len((await approvals.get(db, approval.approval_id)).votes) == 1

    async def test_deciding_a_decided_request_exits_1(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A request that was decided takes no further vote."""
        approval = await pending(db)
        await approvals.decide(
            db, approval_id=approval.approval_id, approver="os:bob", approve=True, reason=None
        )
        result = await cli(database_dsn, tmp_path, "approvals", "deny", str(approval.approval_id))

        assert_refused(result, "already approved")

    async def test_approving_an_unknown_request_exits_1(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """An id that does not exist is not found."""
        result = await cli(database_dsn, tmp_path, "approvals", "approve", "4242")

        assert_refused(result, "no approval 4242")
