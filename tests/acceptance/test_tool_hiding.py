"""What a tool of a running daemon can find out about the daemon: a real `appliance --config
FILE run` (with `$APPLIANCE_CONFIG` naming another file), an agent task calling the tool
`snoop` (`tests.support.tools`), which reads the config file the daemon really started with,
the vault key, the state directory, the outbox file, and /proc: the daemon's command line and
environment, and the process list. What it found goes back to the Messages API stand-in."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import settings, vault
from appliance.agents import definitions, loop
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry, submission
from tests.support import daemon, messages_api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="session")]

AGENT = """
name = "snooper"
model = "claude-sonnet-4-6"
persona = "You look around."
tools = ["snoop"]
max_tokens = 200
max_turns = 3
"""


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[messages_api.Server]:
    """The Messages API stand-in the daemon subprocess calls through base_url."""
    async with messages_api.running_server() as server:
        yield server


async def snoop(
    db: dbpool.Pool, api: messages_api.Server, running: daemon.Daemon, arguments: dict[str, Any]
) -> dict[str, Any]:
    """One agent task that calls `snoop` with `arguments`; what the tool found."""
    api.script(messages_api.ToolUseReply("snoop", arguments), messages_api.TextReply("Seen."))
    submitted = await submission.submit(
        db,
        registry.registry,
        settings.EngineSettings(),
        tenant_id="default",
        workflow=loop.WORKFLOW,
        task_input={"agent": "snooper", "prompt": "Look around."},
        actor="test",
    )

    async def ended() -> bool:
        task = await dbtasks.get_task(db, submitted.task_id)
        return task is not None and task.state in ("succeeded", "failed")

    await daemon.wait_until(ended, what="the snooping task to end", daemons=[running])
    task = await dbtasks.get_task(db, submitted.task_id)
    assert task is not None
    assert task.state == "succeeded", task.error
    body = api.requests_to("/v1/messages")[-1].body
    found: dict[str, Any] = json.loads(body["messages"][-1]["content"][0]["content"])
    return found


class TestWhatAToolSees:
    async def test_nothing_of_the_daemon_whatever_config_it_was_started_with(
        self, db: dbpool.Pool, database_dsn: str, api: messages_api.Server, tmp_path: Path
    ) -> None:
        """The --config file (not the one $APPLIANCE_CONFIG names), the key, the state and
        outbox files read empty or not at all; /proc shows the call's two processes, not the
        daemon's command line or environment; nothing of it reaches the model."""
        canary = "canary-" + secrets.token_hex(12)
        box = tmp_path / "box"
        box.mkdir()
        config = daemon.config_file(box)
        config.write_text(f"# {canary}\n")
        state = box / "state"
        state.mkdir()
        (state / "cluster").write_text(canary)
        (box / "events.jsonl").write_text(f"{canary}\n")  # the outbox file (file sink)
        key = tmp_path / "keys" / "vault.key"
        key.parent.mkdir()
        await vault.open_vault(db, vault.create_key_file(key), initialise=True)
        agent = tmp_path / "snooper.toml"
        agent.write_text(AGENT)
        await definitions.apply(db, definitions.load(agent), tenant_id="default", actor="t")
        overrides = {
            "model.api_key": api.api_key,
            "model.base_url": api.base_url,
            "engine.workflow_modules": [daemon.WORKFLOW_MODULE, "tests.support.tools"],
            "vault.key_file": str(key),
            "config": str(tmp_path / "elsewhere.toml"),  # $APPLIANCE_CONFIG: not the file read
        }
        async with daemon.running(database_dsn, box, overrides=overrides) as running:
            files = [config, key, state / "cluster", box / "events.jsonl"]
            arguments = {
                "files": [str(path) for path in files],
                "dirs": [str(state)],
                "pids": [running.process.pid],
            }
            found = await snoop(db, api, running, arguments)

        told = json.dumps(api.requests_to("/v1/messages")[-1].body)
        assert canary not in told
        for path in (config, key, box / "events.jsonl"):
            assert found[str(path)] == "read: ", path  # /dev/null over each hidden file
        assert found[str(state / "cluster")].startswith("refused: FileNotFoundError")
        assert found[str(state)] == "listed: []"
        assert found["pids"] == [1, 2]
        for name in ("cmdline", "environ", "status"):
            shown = found[f"/proc/{running.process.pid}/{name}"]
            assert shown.startswith("refused: FileNotFoundError"), name
        init = found["/proc/1/cmdline"]
        assert "appliance.isolation.child" in init
        assert str(box) not in init
        assert api.api_key not in told
        assert found["resolv.conf"].rstrip().endswith("options use-vc")
