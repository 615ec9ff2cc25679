"""Installed distributions extend the box by entry points: `workflows list` and `tools list`
show what they registered and where it came from; a plugin that does not load, or takes a name
already taken, stops the command (and the daemon at start) with one line and exit 78."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from tests.support import daemon, plugins

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

WORKFLOWS = "appliance.workflows"
TOOLS = "appliance.tools"

ACME_WORKFLOWS = """
    import pydantic
    from appliance.engine import registry

    class SyncInput(pydantic.BaseModel):
        account: str

    @registry.workflow("acme.sync", input_model=SyncInput)
    async def sync(ctx, task_input):
        return await ctx.step("fetch", fetch, task_input["account"])

    async def fetch(account):
        return account
"""
ACME_TOOLS = """
    from appliance.agents import tools

    @tools.toolbox.tool(
        "acme_refund",
        "Refund an order through Acme's payments API.",
        {"type": "object"},
        action_class="financial",
        integrations=("acme",),
    )
    async def acme_refund(call, arguments):
        return {}
"""


def acme(folder: Path) -> Path:
    """The distribution acme-tools 2.3.1: a workflow and a tool, each by its entry point."""
    return plugins.install(
        folder / "acme",
        "acme-tools",
        "2.3.1",
        {WORKFLOWS: {"acme": "acme_workflows"}, TOOLS: {"acme": "acme_tools"}},
        {"acme_workflows": ACME_WORKFLOWS, "acme_tools": ACME_TOOLS},
    )


def one_workflow(folder: Path, name: str, version: str, workflow: str) -> Path:
    """A distribution registering one workflow named `workflow`."""
    module = name.replace("-", "_")
    source = f"""
        from appliance.engine import registry

        @registry.workflow({workflow!r})
        async def run(ctx, task_input):
            return None
    """
    return plugins.install(
        folder / name, name, version, {WORKFLOWS: {"main": module}}, {module: source}
    )


async def listing(folder: Path, *args: str, on_path: tuple[Path, ...]) -> daemon.Result:
    """An `appliance` command with the given distributions installed."""
    return await daemon.cli(*args, folder=folder, env=plugins.path_with(*on_path))


def by_name(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [row] = [row for row in rows if row["name"] == name]
    return row


def assert_one_line(result: daemon.Result, *fragments: str) -> None:
    """Exit 78, one line on stderr naming each fragment, no traceback, nothing on stdout."""
    assert result.code == 78, f"exit {result.code}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("appliance: error: ")
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in {result.stderr!r}"


class TestListings:
    async def test_a_plugins_workflow_is_listed_with_its_distribution(self, tmp_path: Path) -> None:
        """`workflows list --json` names the distribution, its version and the entry point."""
        result = await listing(tmp_path, "--json", "workflows", "list", on_path=(acme(tmp_path),))

        assert result.code == 0, result.stderr
        sync = by_name(result.json(), "acme.sync")
        assert sync["origin"] == {
            "kind": "entry-point",
            "module": "acme_workflows",
            "distribution": "acme-tools",
            "version": "2.3.1",
            "entry_point": "appliance.workflows:acme",
        }
        assert sync["input"] == '{"account": ...}'

    async def test_built_in_and_configured_workflows_say_so(self, tmp_path: Path) -> None:
        """The appliance's own workflows are built in; those of workflow_modules are config."""
        result = await listing(tmp_path, "--json", "workflows", "list", on_path=())

        rows = result.json()
        assert by_name(rows, "agent.run")["origin"]["kind"] == "built-in"
        configured = by_name(rows, "test.counted")["origin"]
        assert (configured["kind"], configured["module"]) == ("config", daemon.WORKFLOW_MODULE)

    async def test_a_plugins_tool_is_listed_with_its_action_class(self, tmp_path: Path) -> None:
        """`tools list --json` gives the action class the policy sees, and that it runs isolated."""
        result = await listing(tmp_path, "--json", "tools", "list", on_path=(acme(tmp_path),))

        assert result.code == 0, result.stderr
        refund = by_name(result.json(), "acme_refund")
        assert (refund["action_class"], refund["isolated"], refund["integrations"]) == (
            "financial",
            True,
            ["acme"],
        )
        assert refund["origin"]["distribution"] == "acme-tools"
        assert refund["origin"]["entry_point"] == "appliance.tools:acme"

    async def test_the_table_names_the_distribution(self, tmp_path: Path) -> None:
        """For people, each row says the class, isolation and the distribution it came from."""
        result = await listing(tmp_path, "tools", "list", on_path=(acme(tmp_path),))

        [row] = [line for line in result.stdout.splitlines() if line.startswith("acme_refund")]
        assert row.split()[:5] == ["acme_refund", "financial", "yes", "acme", "entry-point"]
        assert row.endswith("acme-tools 2.3.1 (appliance.tools:acme)")


class TestDaemon:
    async def test_the_daemon_runs_a_plugins_workflow(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Submitted against the plugin's input model, run by a daemon that loaded it at start."""
        on_path = plugins.path_with(acme(tmp_path))
        submitted = await daemon.cli(
            *("--json", "task", "submit", "acme.sync", "--input", '{"account": "a-17"}'),
            folder=tmp_path,
            dsn=database_dsn,
            env=on_path,
        )
        assert submitted.code == 0, submitted.stderr
        ran = await daemon.cli(
            "run",
            "--until-idle",
            folder=tmp_path,
            dsn=database_dsn,
            env=on_path,
            overrides={"health.host": "127.0.0.1", "health.port": 0, "log.level": "WARNING"},
            timeout=40,
        )

        assert ran.code == 0, ran.stderr[-3000:]
        task = await dbtasks.get_task(db, submitted.json()["task_id"])
        assert task is not None
        assert (task.state, task.output) == ("succeeded", "a-17")

    async def test_input_out_of_a_plugins_model_is_refused_at_submit(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`task submit` checks the input model the plugin declares (exit 65)."""
        result = await daemon.cli(
            *("task", "submit", "acme.sync", "--input", '{"acount": "a-17"}'),  # misspelt
            folder=tmp_path,
            dsn=database_dsn,
            env=plugins.path_with(acme(tmp_path)),
        )

        assert result.code == 65, result.stderr
        assert "account: Field required" in result.stderr


BROKEN = {
    "a missing dependency": ("import acme_sdk_that_is_not_installed\n", "ModuleNotFoundError"),
    "an error at import": ("raise RuntimeError('no ACME_REGION set')\n", "no ACME_REGION set"),
    "a syntax error": ("def broken(:\n", "SyntaxError"),
    "a bad action class": (
        "from appliance.agents import tools\n"
        "@tools.toolbox.tool('x', 'x', {}, action_class='sneaky')\n"
        "async def x(call, arguments):\n    return None\n",
        "action class 'sneaky'",
    ),
    "a tool in the control plane": (
        "from appliance.agents import tools\n"
        "@tools.toolbox.tool('x', 'x', {}, action_class='read', isolated=False)\n"
        "async def x(call, arguments):\n    return None\n",
        "must run isolated",
    ),
}


class TestBrokenPlugins:
    @pytest.mark.parametrize("kind", sorted(BROKEN))
    async def test_a_plugin_that_does_not_load_is_one_line(self, tmp_path: Path, kind: str) -> None:
        """The error names the distribution, its version, the entry point and what went wrong."""
        source, said = BROKEN[kind]
        broken = plugins.install(
            tmp_path / "broken",
            "broken-plugin",
            "0.4.0",
            {TOOLS: {"broken": "broken_tools"}},
            {"broken_tools": source},
        )
        result = await listing(tmp_path, "tools", "list", on_path=(broken,))

        assert_one_line(result, "broken-plugin 0.4.0", "appliance.tools:broken", said)

    async def test_an_entry_point_naming_nothing_is_one_line(self, tmp_path: Path) -> None:
        """An entry point whose object is not in its module says which attribute is missing."""
        broken = plugins.install(
            tmp_path / "broken",
            "broken-plugin",
            "0.4.0",
            {WORKFLOWS: {"broken": "broken_workflows:missing"}},
            {"broken_workflows": "VALUE = 1\n"},
        )
        result = await listing(tmp_path, "workflows", "list", on_path=(broken,))

        assert_one_line(result, "broken-plugin 0.4.0", "'broken_workflows:missing'", "missing")

    async def test_the_daemon_does_not_start_with_a_broken_plugin(self, tmp_path: Path) -> None:
        """`appliance run` exits 78 (systemd does not restart it) before it touches anything."""
        broken = plugins.install(
            tmp_path / "broken",
            "broken-plugin",
            "0.4.0",
            {WORKFLOWS: {"broken": "broken_workflows"}},
            {"broken_workflows": BROKEN["a missing dependency"][0]},
        )
        result = await listing(tmp_path, "run", on_path=(broken,))

        assert_one_line(result, "broken-plugin 0.4.0", "appliance.workflows:broken")
        assert not (tmp_path / "state").exists()


class TestDuplicates:
    async def test_two_distributions_with_one_workflow_name_are_refused(
        self, tmp_path: Path
    ) -> None:
        """The error names both distributions with their versions."""
        alpha = one_workflow(tmp_path, "alpha-plugin", "1.0", "shared.sync")
        beta = one_workflow(tmp_path, "beta-plugin", "2.0", "shared.sync")
        result = await listing(tmp_path, "workflows", "list", on_path=(alpha, beta))

        assert_one_line(
            result, "'shared.sync' is registered twice", "alpha-plugin 1.0", "beta-plugin 2.0"
        )

    async def test_a_plugin_taking_a_built_in_name_is_refused(self, tmp_path: Path) -> None:
        """A distribution cannot replace the appliance's own agent.run."""
        taker = one_workflow(tmp_path, "taker", "0.1", "agent.run")
        result = await listing(tmp_path, "workflows", "list", on_path=(taker,))

        assert_one_line(result, "the appliance (appliance.agents.loop)", "taker 0.1")

    async def test_a_plugin_and_a_configured_module_with_one_tool_name_are_refused(
        self, tmp_path: Path
    ) -> None:
        """A tool of a distribution and one of engine.workflow_modules under one name."""
        taker = plugins.install(
            tmp_path / "taker",
            "gate-taker",
            "3.1",
            {TOOLS: {"gate": "gate_tools"}},
            {"gate_tools": ACME_TOOLS.replace('"acme_refund"', '"wait_for_gate"')},
        )
        result = await listing(tmp_path, "tools", "list", on_path=(taker,))

        assert_one_line(
            result,
            "'wait_for_gate' is registered twice",
            "gate-taker 3.1",
            f"engine.workflow_modules module {daemon.WORKFLOW_MODULE}",
        )
