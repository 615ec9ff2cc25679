"""The README's configuration examples, read from the README itself: every TOML block loads as
written (a config file, an agent, a provisioning file, or a plugin's `pyproject.toml`, which
is the example plugin's own), and the trigger examples run in a real daemon (an agent from the
README's agent block answering, through the Messages API stand-in, a file dropped into the
watched folder and a signed webhook delivery). The only change made to a block is the watched
folder's path."""

from __future__ import annotations

import json
import re
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from appliance import models, provisioning, settings, vault
from appliance.agents import definitions, loop
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry
from appliance.ingress import signatures
from tests.support import daemon, messages_api

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def blocks() -> list[str]:
    """Every ```toml block of the README, in order."""
    return BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


EXAMPLE_PROJECT = ROOT / "examples" / "appliance-example" / "pyproject.toml"


def is_agent(text: str) -> bool:
    data = tomllib.loads(text)
    return "name" in data and "model" in data


def is_project(text: str) -> bool:
    """A distribution's `pyproject.toml` (the plugin tutorial's), not the appliance's config."""
    return "project" in tomllib.loads(text)


def within(part: Any, whole: Any) -> bool:
    """Every key of `part` is in `whole` with the same value (tables compared key by key)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and within(value, whole[key]) for key, value in part.items()
        )
    return bool(part == whole)


def is_provisioning(text: str) -> bool:
    data = tomllib.loads(text)
    return "tailnet" in data and "admin" in data


def block_with(key: str) -> str:
    """The one README block that has the top-level table `key`."""
    configs = [b for b in blocks() if not (is_agent(b) or is_project(b) or is_provisioning(b))]
    [found] = [b for b in configs if key in tomllib.loads(b)]
    return found


def workflows_named(config: settings.Settings) -> list[str]:
    return [s.workflow for s in config.ingress.sources] + [w.workflow for w in config.watches]


class TestEveryBlockLoads:
    def test_there_are_blocks(self) -> None:
        """The README has an agent block, a provisioning file and the trigger blocks this test
        runs."""
        assert any(is_agent(b) for b in blocks())
        assert any(is_provisioning(b) for b in blocks())
        assert block_with("watches")
        assert block_with("ingress")

    @pytest.mark.parametrize("index", range(len(blocks())))
    def test_the_block_loads_as_written(self, index: int, tmp_path: Path) -> None:
        """An agent block loads as an agent, a project block is part of the example plugin's, a
        provisioning file reads as one; any other block is a valid config file whose sources and
        watches start registered workflows."""
        text = blocks()[index]
        path = tmp_path / "example.toml"
        path.write_text(text, encoding="utf-8")
        if is_agent(text):
            assert definitions.load(path).name
            return
        if is_project(text):
            assert within(tomllib.loads(text), tomllib.loads(EXAMPLE_PROJECT.read_text()))
            return
        if is_provisioning(text):
            assert provisioning.read(path).admin.login
            return
        config = settings.load(path, environ={})
        for workflow in workflows_named(config):
            registry.registry.get(workflow)


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[messages_api.Server]:
    async with messages_api.running_server() as server:
        yield server


async def finished(db: dbpool.Pool, task_id: int, edge: daemon.Daemon) -> models.Task:
    async def ended() -> models.Task | None:
        task = await dbtasks.get_task(db, task_id)
        return task if task is not None and task.state in ("succeeded", "failed") else None

    return await daemon.wait_until(ended, what=f"task {task_id} to end", daemons=[edge])


@pytest.mark.slow
@pytest.mark.timeout(120)
class TestTheTriggerExamplesRun:
    async def test_a_file_and_a_delivery_reach_the_readme_agent(
        self, db: dbpool.Pool, database_dsn: str, api: messages_api.Server, tmp_path: Path
    ) -> None:
        """The README's watch and webhook blocks in one config: each event starts the README's
        agent, whose prompt is filled from the event, and the task succeeds."""
        [agent_block] = [b for b in blocks() if is_agent(b)]
        agent_file = tmp_path / "agent.toml"
        agent_file.write_text(agent_block, encoding="utf-8")
        agent = definitions.load(agent_file)
        await definitions.apply(db, agent, tenant_id="default", actor="test")
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        watch_block = block_with("watches")
        (written,) = re.findall(r'^path = "(.*)"$', watch_block, re.MULTILINE)
        config = watch_block.replace(f'path = "{written}"', f'path = "{inbox}"')
        (tmp_path / "appliance.toml").write_text(
            config + "\n" + block_with("ingress"), encoding="utf-8"
        )
        key_file = tmp_path / "vault.key"
        await vault.open_vault(db, vault.create_key_file(key_file), initialise=True)
        secret_file = tmp_path / "signing-secret"
        secret_file.write_text(SECRET + "\n", encoding="utf-8")
        common = {"vault.key_file": str(key_file)}
        stored = await daemon.cli(
            *("secrets", "set", "webhook", "shop", "--tenant", "default"),
            *("--from-file", str(secret_file)),
            folder=tmp_path,
            dsn=database_dsn,
            overrides=common,
        )
        assert stored.code == 0, stored.stderr
        api.script(messages_api.TextReply("Filed."), messages_api.TextReply("Answered."))
        overrides = {
            **common,
            "model.api_key": api.api_key,
            "model.base_url": api.base_url,
            "ingress.host": "127.0.0.1",
            "ingress.port": 0,
        }
        async with daemon.running(database_dsn, tmp_path, overrides=overrides) as edge:
            (inbox / "refunds.md").write_text("Refunds take five days.\n", encoding="utf-8")

            async def one_task() -> list[models.Task] | None:
                found = await dbtasks.list_tasks(db, limit=10)
                return found or None

            [from_file] = await daemon.wait_until(one_task, what="the file's task", daemons=[edge])
            done = await finished(db, from_file.task_id, edge)
            assert done.state == "succeeded", done.error
            port = int(edge.ready["ingress_port"])
            status, answer = await deliver(port, order_event())
            assert status == 202, answer
            done = await finished(db, answer["task_id"], edge)
            assert done.state == "succeeded", done.error
        assert done.workflow == loop.WORKFLOW
        prompts = [json.dumps(r.body) for r in api.requests_to("/v1/messages")]
        assert "Refunds take five days." in prompts[0]
        assert "ada@example.com" in prompts[1]


def order_event() -> dict[str, Any]:
    """A delivery with every field the README's webhook prompt reads."""
    return {"order_id": 4711, "customer": {"email": "ada@example.com"}, "note": "Where is it?"}


async def deliver(port: int, event: dict[str, Any]) -> tuple[int, Any]:
    body = json.dumps(event).encode()
    stamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "shop/1.0",
        "webhook-id": "msg_readme",
        "webhook-timestamp": str(stamp),
        "webhook-signature": signatures.sign_standard(SECRET, "msg_readme", stamp, body),
    }
    url = f"http://127.0.0.1:{port}/hooks/default/shop"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as got:
        return got.status, await got.json()
