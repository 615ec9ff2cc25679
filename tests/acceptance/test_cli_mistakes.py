"""An operator's mistakes on the command line: each is one line on stderr naming the mistake,
the right exit code (2 usage, 65 bad input, 1 the answer is no), nothing on stdout, no
traceback, and nothing stored.

Arguments may name things the test makes first: `{value}` a file holding a secret value,
`{docs}` a folder of Markdown, `{empty}` an empty folder, `{binary}` a folder of pictures and
binaries only, `{fifo}` a named pipe, `{policy}` a policy file, `{agent}` an agent file that
is fine, `{unknown_tool}` one naming a tool nobody registered, `{unpriced}` one whose model
has no price, `{approval}` a pending approval request, `{schedule}` a schedule.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from appliance.db import pool as dbpool
from tests.support import cli as cli_world
from tests.support import workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

AGENT = 'name = "helper"\nmodel = "{model}"\npersona = "You help."\ntools = [{tools}]\n'
SEEDED_MODEL = "claude-sonnet-4-5"
NAN_INPUT = '{"seconds": NaN}'
PLACEHOLDER = re.compile(r"\{(\w+)\}")
COUNTS = """SELECT (SELECT count(*) FROM appliance.tasks), (SELECT count(*) FROM appliance.secrets),
       (SELECT count(*) FROM appliance.documents), (SELECT count(*) FROM appliance.agents),
       (SELECT count(*) FROM appliance.policies), (SELECT count(*) FROM appliance.budgets),
       (SELECT count(*) FROM appliance.tenants), (SELECT count(*) FROM appliance.approval_votes),
       (SELECT count(*) FROM appliance.schedules),
       (SELECT count(*) FROM appliance.schedule_slots)"""


@dataclasses.dataclass(frozen=True)
class Mistake:
    """A command line, the exit code it must end with, and words its one line must hold."""

    args: tuple[str, ...]
    code: int
    says: str

    @property
    def id(self) -> str:
        return " ".join(self.args)[:70]


def m(line: str, code: int, says: str) -> Mistake:
    """`line` split on spaces (a `|` stands for a space inside one argument)."""
    return Mistake(tuple(part.replace("|", " ") for part in line.split()), code, says)


MISTAKES = [
    # missing, unreadable or empty files and folders
    m("agents apply /no/such/agent.toml", 65, "cannot be read"),
    m("policy apply /no/such/policy.toml", 65, "cannot be read"),
    m("docs add /no/such/folder", 65, "no such file or folder"),
    m("docs add {docs} /no/such/file.md", 65, "/no/such/file.md"),
    m("docs add {fifo}", 65, "not a file or folder"),
    m("docs add {empty}", 65, "an empty folder"),
    m("docs add {binary}", 65, "nothing ingested"),
    m("secrets set shop token --from-file /no/such/value", 65, "/no/such/value"),
    # input that is not JSON, or does not fit the workflow
    m(f"task submit {workflows.COUNTED} --input {{not|json", 65, "--input is not valid JSON"),
    m(f"task submit {workflows.SLEEPY} --input {NAN_INPUT.replace(' ', '|')}", 65, "NaN"),
    m("task submit demo.folder_digest --input [1,2]", 65, "demo.folder_digest"),
    m("task submit demo.folder_digest --input {}", 65, "folder"),
    m('task submit demo.folder_digest --input {"folder":"/x","depth":2}', 65, "depth"),
    m('task submit agent.run --input {"prompt":"hi"}', 65, "agent"),
    m('task submit agent.run --input {"agent":"nobody","prompt":"hi"}', 65, "nobody"),
    m("task submit no.such.workflow", 65, "no.such.workflow"),
    # dates, negative and out-of-range numbers
    m("cost --since 2020-13-01", 2, "--since"),
    m("cost --since yesterday", 2, "YYYY-MM-DD"),
    m("prices set some-model input 1 --from 31/12/2030", 2, "--from"),
    m("prices set some-model input -1", 2, "usd_per_mtok"),
    m("prices set some-model input abc", 2, "usd_per_mtok"),
    m("prices set some-model input Infinity", 2, "usd_per_mtok"),
    m("budgets set -5", 2, "usd"),
    m("budgets set NaN", 2, "usd"),
    m("task list --limit -1", 2, "--limit"),
    m("approvals list --limit 0", 2, "--limit"),
    m(f"task submit {workflows.COUNTED} --delay -5", 2, "--delay"),
    m(f"task submit {workflows.COUNTED} --delay nan", 2, "--delay"),
    m(f"task submit {workflows.COUNTED} --delay 1e300", 2, "--delay"),
    m(f"task submit {workflows.COUNTED} --priority 99999999999", 2, "--priority"),
    m(f"task submit {workflows.COUNTED} --max-attempts 0", 2, "--max-attempts"),
    m("secrets set shop token --from-file {value} --rotate-every-days 0", 2, "--rotate-every"),
    m("agents show helper --version -1", 2, "--version"),
    m("policy diff 0 1", 2, "argument a"),
    m("task show 99999999999999999999", 2, "task_id"),
    m("task show -3", 2, "task_id"),
    # ids of nothing
    m("task show 999999", 1, "999999"),
    m("task cancel 999999", 1, "999999"),
    m("task retry 999999", 1, "999999"),
    m("audit show 999999", 1, "999999"),
    m("approvals show 4242", 1, "4242"),
    m("approvals approve 4242", 1, "4242"),
    m("approvals list --task 999999", 1, "999999"),
    m("agents show nobody", 1, "nobody"),
    m("policy show", 1, "no policy"),
    m("policy diff 1 2", 1, "no version 1"),
    m("secrets delete shop token", 1, "no secret"),
    m("budgets set 5 --task 999999", 65, "999999"),
    # tenants that do not exist
    m(f"task submit {workflows.COUNTED} --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("task list --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("agents list --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("agents apply {agent} --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("budgets set 5 --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("secrets list --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("secrets set shop token --from-file {value} --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("docs add {docs} --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("policy apply {policy} --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("approvals list --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("cost --tenant nobody", 65, "unknown tenant 'nobody'"),
    # names the database refuses: its rule in words, never the driver's report
    m("tenants add Not|A|Tenant", 65, "tenant id must match ^[a-z0-9]"),
    m("tenants add -leading-dash", 2, "tenant_id"),
    m("secrets set Shop|Team token --from-file {value}", 65, "integration 'Shop Team' must be"),
    m("secrets set shop bad/name --from-file {value}", 65, "secret name 'bad/name' must be"),
    m("docs add {docs} --collection bad|name", 65, "collection"),
    m("prices set has|space input 1", 65, "model id 'has space'"),
    Mistake(("approvals", "approve", "{approval}", "--as", ""), 65, "declared name"),
    # agent files naming what the box does not have
    m("agents apply {unknown_tool}", 65, "unknown tool 'send_fax'"),
    m("agents apply {unpriced}", 65, "prices set no-such-model"),
    # schedules: bad cron, unknown zone, unknown workflow, policies that cannot work together
    m(f"schedules add x --cron 61|*|*|*|* --workflow {workflows.COUNTED}", 2, "bad minute field"),
    m(f"schedules add x --cron *|*|* --workflow {workflows.COUNTED}", 2, "five fields"),
    m(f"schedules add x --cron @reboot --workflow {workflows.COUNTED}", 2, "unknown name"),
    m(
        f"schedules add x --cron @daily --timezone Mars/Olympus --workflow {workflows.COUNTED}",
        2,
        "unknown time zone 'Mars/Olympus'",
    ),
    m("schedules add x --cron @daily --workflow no.such.workflow", 65, "no.such.workflow"),
    m(f"schedules add Bad|Name --cron @daily --workflow {workflows.COUNTED}", 2, "name"),
    m(f"schedules add x --cron @daily --workflow {workflows.COUNTED} --input [1]", 65, "input"),
    m(
        f"schedules add x --cron @daily --workflow {workflows.COUNTED} --catchup all",
        65,
        "overlap = 'allow'",
    ),
    m(
        f"schedules add x --cron @daily --workflow {workflows.COUNTED} --catchup-limit 0",
        2,
        "--catchup-limit",
    ),
    m(
        "schedules add x --cron @daily --workflow agent.run "
        '--input {"agent":"nobody","prompt":"hi"}',
        65,
        "nobody",
    ),
    m(
        f"schedules add x --cron @daily --workflow {workflows.COUNTED} --tenant nobody",
        65,
        "unknown tenant 'nobody'",
    ),
    m(
        f"schedules add {{schedule}} --cron @daily --workflow {workflows.COUNTED}",
        1,
        "already exists",
    ),
    m("schedules list --tenant nobody", 65, "unknown tenant 'nobody'"),
    m("schedules pause nobody", 1, "no schedule 'nobody'"),
    m("schedules resume nobody", 1, "no schedule 'nobody'"),
    m("schedules remove nobody", 1, "no schedule 'nobody'"),
    m("schedules run-now nobody", 1, "no schedule 'nobody'"),
    # usage
    m("frobnicate", 2, "usage:"),
    m("task", 2, "usage:"),
    m("task submit", 2, "workflow"),
    m("cost --by week", 2, "--by"),
]


async def resolve(world: cli_world.World, mistake: Mistake) -> list[str]:
    """The mistake's arguments with what its placeholders name made and filled in."""
    names = {name for arg in mistake.args for name in PLACEHOLDER.findall(arg)}
    values: dict[str, str] = {}
    if "value" in names:
        values["value"] = world.file("value", "s3cret-value")
    if "docs" in names:
        values["docs"] = str(
            Path(world.file("docs/refunds.md", "# Refunds\n\nFive days.\n")).parent
        )
    if "empty" in names:
        (world.folder / "empty" / ".hidden").mkdir(parents=True)
        values["empty"] = str(world.folder / "empty")
    if "binary" in names:
        (world.folder / "binary").mkdir()
        (world.folder / "binary" / "logo.png").write_bytes(b"\x89PNG\r\n")
        (world.folder / "binary" / "blob.md").write_bytes(b"\x00\x01\x02")
        values["binary"] = str(world.folder / "binary")
    if "fifo" in names:
        os.mkfifo(world.folder / "pipe.md")
        values["fifo"] = str(world.folder / "pipe.md")
    if "policy" in names:
        values["policy"] = world.file("policy.toml", '[[rules]]\ntools = ["rm"]\neffect = "deny"\n')
    for name, model, tools in (
        ("agent", SEEDED_MODEL, ""),
        ("unknown_tool", SEEDED_MODEL, f'"{workflows.GATE_TOOL}", "send_fax"'),
        ("unpriced", "no-such-model", ""),
    ):
        if name in names:
            values[name] = world.file(f"{name}.toml", AGENT.format(model=model, tools=tools))
    if "approval" in names:
        values["approval"] = str(await world.approval())
    if "schedule" in names:
        values["schedule"] = await world.schedule()
    return [PLACEHOLDER.sub(lambda found: values[found[1]], arg) for arg in mistake.args]


@pytest_asyncio.fixture(loop_scope="session")
async def world(
    db: dbpool.Pool, database_dsn: str, tmp_path: Path
) -> AsyncIterator[cli_world.World]:
    async with cli_world.make(db, database_dsn, tmp_path) as made:
        yield made


async def stored(db: dbpool.Pool) -> tuple[int, ...]:
    """How many rows each table a mistake could write to holds."""
    row = await db.fetchrow(COUNTS)
    assert row is not None
    return tuple(row.values())


class TestMistakes:
    @pytest.mark.parametrize("mistake", MISTAKES, ids=[x.id for x in MISTAKES])
    async def test_a_mistake_is_one_clear_line(
        self, world: cli_world.World, mistake: Mistake
    ) -> None:
        """The exit code says what kind of mistake; one line says which; nothing is stored."""
        args = await resolve(world, mistake)
        before = await stored(world.db)
        result = await world.cli(*args)

        assert result.code == mistake.code, (
            f"exit {result.code}\nstdout: {result.stdout}\n{result.stderr}"
        )
        assert result.stdout == ""
        assert result.stderr.startswith("appliance: error: "), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert mistake.says in result.stderr
        assert await stored(world.db) == before

    @pytest.mark.parametrize(
        "mistake",
        [m("task show 999999", 1, "999999"), m("docs add {empty}", 65, "an empty folder")],
        ids=["not found", "nothing ingested"],
    )
    async def test_under_json_stdout_is_empty_or_json(
        self, world: cli_world.World, mistake: Mistake
    ) -> None:
        """With --json a mistake leaves stdout empty or one JSON document, the line on stderr."""
        args = await resolve(world, mistake)
        result = await world.cli("--json", *args)

        assert result.code == mistake.code, result.stderr
        assert result.stdout == "" or isinstance(result.json(), dict | list)
        assert mistake.says in result.stderr


class TestDriverErrors:
    async def test_a_refused_value_hides_the_drivers_report(self, world: cli_world.World) -> None:
        """A check violation reads as its rule: no `caused by`, no DETAIL, no failing row."""
        result = await world.cli("tenants", "add", "Not A Tenant")

        assert result.code == 65
        for internal in ("caused by", "CheckViolationError", "DETAIL", "Failing row", "violates"):
            assert internal not in result.stderr

    async def test_verbose_shows_the_whole_chain(self, world: cli_world.World) -> None:
        """-v prints the causes down to the driver's error, and the traceback."""
        result = await world.cli("-v", "tenants", "add", "Not A Tenant")

        assert result.code == 65
        assert "caused by: CheckViolationError" in result.stderr
        assert "Traceback" in result.stderr
