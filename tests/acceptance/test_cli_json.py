"""Every command of the CLI with --json: one JSON document on stdout and the right exit code.

The commands are found by walking the CLI's own argparse tree, and a test checks that each one
has a case below: a command added without one fails here until it gets one.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import cli
from appliance.agents import costs, definitions
from appliance.db import policies
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from tests.support import cli as cli_world
from tests.support import daemon, postgres, workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

MODEL = "claude-sonnet-4-5"  # seeded with prices by the migrations
POLICY_V1 = '[[rules]]\ntools = ["rm"]\neffect = "deny"\n'
POLICY_V2 = '[[rules]]\ntools = ["rm", "mv"]\neffect = "deny"\n'


@dataclasses.dataclass(frozen=True)
class Case:
    """How to run one command successfully (`prepare` makes what it names), and the exit codes
    it may end with (a report that fails on this box still prints its JSON)."""

    prepare: Callable[[cli_world.World], Awaitable[list[str]]]
    codes: frozenset[int] = frozenset({0})


def static(*args: str, codes: tuple[int, ...] = (0,)) -> Case:
    async def prepare(_: cli_world.World) -> list[str]:
        return list(args)

    return Case(prepare, frozenset(codes))


def prepared(prepare: Callable[[cli_world.World], Awaitable[list[str]]]) -> Case:
    return Case(prepare)


async def _task_show(w: cli_world.World) -> list[str]:
    return ["task", "show", str(await w.ran_task())]


async def _task_cancel(w: cli_world.World) -> list[str]:
    return ["task", "cancel", str(await w.task())]


async def _task_retry(w: cli_world.World) -> list[str]:
    task_id = await w.task()
    await dbtasks.cancel_task(w.db, task_id=task_id, actor="test")
    return ["task", "retry", str(task_id)]


async def _task_list(w: cli_world.World) -> list[str]:
    await w.ran_task()
    return ["task", "list"]


async def _task_replay(w: cli_world.World) -> list[str]:
    return ["task", "replay", str(await w.ran_task()), "--from-step", "sleep"]


async def _audit_replay(w: cli_world.World) -> list[str]:
    return ["audit", "replay", str(await w.ran_task())]


async def _audit_show(w: cli_world.World) -> list[str]:
    return ["audit", "show", str(await w.task())]


async def _agents_apply(w: cli_world.World) -> list[str]:
    return [
        "agents",
        "apply",
        w.file("agent.toml", f'name = "helper"\nmodel = "{MODEL}"\npersona = "You help."\n'),
    ]


async def _agent(w: cli_world.World) -> None:
    definition = definitions.Definition(name="helper", model=MODEL, persona="You help.")
    await definitions.apply(w.db, definition, tenant_id="default", actor="test")


async def _agents_list(w: cli_world.World) -> list[str]:
    await _agent(w)
    return ["agents", "list"]


async def _agents_show(w: cli_world.World) -> list[str]:
    await _agent(w)
    return ["agents", "show", "helper"]


async def _cost(w: cli_world.World) -> list[str]:
    await costs.record_call(
        w.db,
        tenant_id="default",
        task_id=None,
        position=None,
        agent="helper",
        agent_version=1,
        model=MODEL,
        request_id="req_1",
        latency_ms=12.5,
        usage=costs.Usage(input_tokens=1200, cache_read_input_tokens=3000, output_tokens=80),
        cache_note=None,
    )
    return ["cost", "--by", "day"]


async def _policy(w: cli_world.World, *texts: str) -> None:
    for text in texts:
        await policies.apply_policy(w.db, tenant_id="default", document_text=text, actor="test")


async def _policy_apply(w: cli_world.World) -> list[str]:
    return ["policy", "apply", w.file("policy.toml", POLICY_V1)]


async def _policy_show(w: cli_world.World) -> list[str]:
    await _policy(w, POLICY_V1)
    return ["policy", "show"]


async def _policy_diff(w: cli_world.World) -> list[str]:
    await _policy(w, POLICY_V1, POLICY_V2)
    return ["policy", "diff", "1", "2"]


async def _secrets_set(w: cli_world.World) -> list[str]:
    value = w.file("value", "s3cret-value")
    return ["secrets", "set", "shop", "token", "--from-file", value, "--rotate-every-days", "30"]


async def _secrets_rotate(w: cli_world.World) -> list[str]:
    await w.secret()
    return ["secrets", "rotate", "shop", "token", "--from-file", w.file("value", "n3w-value")]


async def _secrets_delete(w: cli_world.World) -> list[str]:
    await w.secret()
    return ["secrets", "delete", "shop", "token"]


async def _secrets_list(w: cli_world.World) -> list[str]:
    await w.secret()
    return ["secrets", "list"]


async def _docs_add(w: cli_world.World) -> list[str]:
    w.file("handbook/refunds.md", "# Refunds\n\nRefunds take five days.\n")
    w.file("handbook/logo.png", "not really a picture")
    return ["docs", "add", str(w.folder / "handbook"), "--collection", "handbook"]


async def _approvals_list(w: cli_world.World) -> list[str]:
    await w.approval()
    return ["approvals", "list"]


async def _approvals_show(w: cli_world.World) -> list[str]:
    return ["approvals", "show", str(await w.approval())]


async def _approvals_approve(w: cli_world.World) -> list[str]:
    return ["approvals", "approve", str(await w.approval()), "--reason", "checked"]


async def _approvals_deny(w: cli_world.World) -> list[str]:
    return ["approvals", "deny", str(await w.approval())]


async def _health(w: cli_world.World) -> list[str]:
    await w.ready_daemon()
    return ["health"]


async def _schedules_named(w: cli_world.World, command: str) -> list[str]:
    return ["schedules", command, await w.schedule()]


async def _schedules_list(w: cli_world.World) -> list[str]:
    await w.schedule()
    return ["schedules", "list"]


def _on_a_schedule(command: str) -> Case:
    async def prepare(w: cli_world.World) -> list[str]:
        return await _schedules_named(w, command)

    return Case(prepare)


CASES: dict[tuple[str, ...], Case] = {
    ("init",): static("init"),
    ("exposure-check",): static("exposure-check", codes=(0, 78)),
    ("run",): static("run", "--until-idle"),
    ("migrate",): static("migrate"),
    ("doctor",): static("doctor", codes=(0, 1)),
    ("health",): prepared(_health),
    ("config", "show"): static("config", "show"),
    ("task", "submit"): static("task", "submit", workflows.COUNTED, "--input", '{"hold": 0}'),
    ("task", "list"): prepared(_task_list),
    ("task", "show"): prepared(_task_show),
    ("task", "cancel"): prepared(_task_cancel),
    ("task", "retry"): prepared(_task_retry),
    ("task", "replay"): prepared(_task_replay),
    ("audit", "verify"): static("audit", "verify"),
    ("audit", "show"): prepared(_audit_show),
    ("audit", "replay"): prepared(_audit_replay),
    ("tenants", "add"): static("tenants", "add", "initech", "--name", "Initech"),
    ("tenants", "list"): static("tenants", "list"),
    ("agents", "apply"): prepared(_agents_apply),
    ("agents", "list"): prepared(_agents_list),
    ("agents", "show"): prepared(_agents_show),
    ("prices", "set"): static("prices", "set", "json-test-model", "input", "0.30"),
    ("prices", "list"): static("prices", "list", "--model", MODEL),
    ("cost",): prepared(_cost),
    ("budgets", "set"): static("budgets", "set", "12.50"),
    ("policy", "apply"): prepared(_policy_apply),
    ("policy", "show"): prepared(_policy_show),
    ("policy", "diff"): prepared(_policy_diff),
    ("secrets", "set"): prepared(_secrets_set),
    ("secrets", "rotate"): prepared(_secrets_rotate),
    ("secrets", "delete"): prepared(_secrets_delete),
    ("secrets", "list"): prepared(_secrets_list),
    ("docs", "add"): prepared(_docs_add),
    ("approvals", "list"): prepared(_approvals_list),
    ("approvals", "show"): prepared(_approvals_show),
    ("approvals", "approve"): prepared(_approvals_approve),
    ("approvals", "deny"): prepared(_approvals_deny),
    ("backup", "create"): static("backup", "create"),
    ("backup", "list"): static("backup", "list"),
    ("workflows", "list"): static("workflows", "list"),
    ("tools", "list"): static("tools", "list"),
    ("schedules", "list"): prepared(_schedules_list),
    ("schedules", "add"): static(
        "schedules",
        "add",
        "nightly",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Berlin",
        "--workflow",
        workflows.COUNTED,
        "--input",
        '{"hold": 0}',
    ),
    ("schedules", "pause"): _on_a_schedule("pause"),
    ("schedules", "resume"): _on_a_schedule("resume"),
    ("schedules", "remove"): _on_a_schedule("remove"),
    ("schedules", "run-now"): _on_a_schedule("run-now"),
}
# Commands with a test of their own (they need more than the world): restore below; provision
# with the tailscale stand-in in tests/integration/test_provisioning.py.
SEPARATE = {("backup", "restore"), ("provision",)}


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the parser's tree (a parser with a handler), as its words."""
    found = [path] if parser.get_default("handler") is not None else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.extend(commands(child, (*path, name)))
    return found


@pytest_asyncio.fixture(loop_scope="session")
async def world(
    db: dbpool.Pool, database_dsn: str, tmp_path: Path
) -> AsyncIterator[cli_world.World]:
    async with cli_world.make(db, database_dsn, tmp_path) as made:
        yield made


def assert_one_document(result: daemon.Result) -> Any:
    """stdout is exactly one JSON object or array."""
    assert result.stdout.strip(), f"nothing on stdout\n{result.stderr}"
    data = json.loads(result.stdout)
    assert isinstance(data, dict | list), data
    return data


class TestEveryCommand:
    def test_every_command_has_a_case(self) -> None:
        """The table below covers exactly the commands the CLI has."""
        assert set(commands(cli.build_parser())) == set(CASES) | SEPARATE

    @pytest.mark.parametrize("command", sorted(CASES), ids=" ".join)
    async def test_json_output_parses(
        self, world: cli_world.World, command: tuple[str, ...]
    ) -> None:
        """With --json the command prints one JSON document and exits as it should."""
        case = CASES[command]
        args = await case.prepare(world)
        result = await world.cli("--json", *args)

        assert result.code in case.codes, f"exit {result.code}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        if command == ("run",):  # a stream: log lines on stderr, outbox events on stdout
            for line in (result.stdout + result.stderr).splitlines():
                json.loads(line)
            return
        data = assert_one_document(result)
        if command == ("exposure-check",):
            assert data["passed"] is (result.code == 0)


class TestRestore:
    async def test_backup_restore_prints_one_document(
        self, world: cli_world.World, server_dsn: str
    ) -> None:
        """`backup restore --json` into an empty database (the daemon stopped, as it must be)
        prints what it brought back as one document."""
        made = assert_one_document(await world.cli("--json", "backup", "create"))
        async with postgres.fresh_database(server_dsn, "appliance_cli_restore") as empty:
            target = dataclasses.replace(world, dsn=empty)
            result = await target.cli("--json", "backup", "restore", made["path"])
        assert result.code == 0, result.stderr
        data = assert_one_document(result)
        assert data["schema_version"] == made["schema_version"]


class TestValues:
    async def test_money_stays_exact_and_dates_are_iso(self, world: cli_world.World) -> None:
        """A price comes back as its exact digits, its date as YYYY-MM-DD."""
        result = await world.cli(
            "--json", "prices", "set", "json-test-model", "output", "0.30", "--from", "2031-02-03"
        )

        data = assert_one_document(result)
        assert (data["usd_per_mtok"], data["effective_from"]) == ("0.30", "2031-02-03")

    async def test_cost_sums_are_decimal_strings(self, world: cli_world.World) -> None:
        """`cost --json` carries the costs as strings of decimal digits, the day as a date."""
        result = await world.cli("--json", *await _cost(world))

        [row] = assert_one_document(result)
        assert row["day"] == dt.datetime.now(dt.UTC).date().isoformat()
        assert float(row["cost_usd"]) > 0
        assert isinstance(row["cost_usd"], str)

    async def test_task_show_has_the_attempt_count_and_each_attempt(
        self, world: cli_world.World
    ) -> None:
        """`attempts` is the count (as in `task list`), `attempt_history` each attempt."""
        task_id = await world.ran_task()
        shown = assert_one_document(await world.cli("--json", "task", "show", str(task_id)))
        [listed] = assert_one_document(await world.cli("--json", "task", "list"))

        assert shown["attempts"] == listed["attempts"] == 1
        assert [a["outcome"] for a in shown["attempt_history"]] == ["succeeded"]
        assert [s["name"] for s in shown["steps"]] == ["sleep"]
        assert {k: v for k, v in shown.items() if k in listed} == listed

    async def test_secret_commands_report_the_scope_never_the_value(
        self, world: cli_world.World
    ) -> None:
        """`secrets set --json` names what it did to which secret; the value is not in it."""
        result = await world.cli("--json", *await _secrets_set(world))

        data = assert_one_document(result)
        assert data == {
            "tenant_id": "default",
            "integration": "shop",
            "workflow": "*",
            "name": "token",
            "result": "created",
        }
        assert "s3cret" not in result.stdout + result.stderr

    async def test_policy_diff_lists_the_changed_lines(self, world: cli_world.World) -> None:
        """`policy diff --json` carries the unified diff as lines."""
        result = await world.cli("--json", *await _policy_diff(world))

        data = assert_one_document(result)
        assert (data["from"], data["to"]) == (1, 2)
        assert any(line.startswith("+") and "mv" in line for line in data["diff"])

    async def test_print_sql_under_json_is_a_list(self, world: cli_world.World) -> None:
        """`migrate --print-sql --json` is a JSON array (empty: nothing is pending)."""
        result = await world.cli("--json", "migrate", "--print-sql")

        assert assert_one_document(result) == []


class TestSchedules:
    async def test_list_shows_the_next_slot_and_the_last_task(self, world: cli_world.World) -> None:
        """`schedules list --json` has the next slot in UTC and on the schedule's clock, and
        the task `run-now` started as the last task with its state."""
        name = await world.schedule()
        ran = assert_one_document(await world.cli("--json", "schedules", "run-now", name))
        [listed] = assert_one_document(await world.cli("--json", "schedules", "list"))

        assert (listed["last_task_id"], listed["last_task_state"]) == (ran["task_id"], "queued")
        slot = dt.datetime.fromisoformat(listed["next_fire_local"])
        assert (slot.hour, slot.minute) in ((2, 30), (3, 0))  # 03:00 where 02:30 is skipped
        assert dt.datetime.fromisoformat(listed["next_fire_at"]) == slot
        assert listed["description"] == "At 02:30 every day"

    async def test_the_table_shows_the_next_slot_in_the_schedules_zone(
        self, world: cli_world.World
    ) -> None:
        """For people, the next slot reads on the schedule's own clock, with its zone."""
        await world.schedule()
        result = await world.cli("schedules", "list")

        assert result.code == 0, result.stderr
        [_, row] = result.stdout.splitlines()
        assert "Europe/Berlin" in row
        assert " CET" in row or " CEST" in row


class TestErrors:
    @pytest.mark.parametrize(
        ("args", "code"),
        [
            (["task", "show", "999999"], 1),
            (["task", "submit", "no.such.workflow"], 65),
            (["cost", "--since", "yesterday"], 2),
            (["tenants", "add", "Not A Tenant"], 65),
        ],
        ids=["not found", "bad input", "usage", "refused by the database"],
    )
    async def test_an_error_is_words_on_stderr_and_nothing_on_stdout(
        self, world: cli_world.World, args: list[str], code: int
    ) -> None:
        """Under --json an error keeps its exit code and its one line on stderr."""
        result = await world.cli("--json", *args)

        assert result.code == code, result.stderr
        assert result.stdout == ""
        assert result.stderr.startswith("appliance: error: ")
        assert len(result.stderr.splitlines()) == 1, result.stderr
