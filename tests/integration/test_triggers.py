"""Triggers that start an agent directly: a webhook source and a watched folder with `agent`
and a prompt template, over a real listener, a real folder and the real Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance import settings, triggers
from appliance.agents import loop
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry
from appliance.ingress import intake as ingress_intake
from appliance.ingress import public, signatures, watch, webhooks
from tests.support import engine as support

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PROMPT = (
    "A {{ headers['content-type'] }} order from {{ body.customer.name }} on {{ source }}: "
    "{% for item in body.items %}{{ item.sku }} {% endfor %}(delivery {{ delivery_id }})"
)
FILE_PROMPT = "Summarise {{ name }} ({{ type }}, {{ size }} bytes, {{ event }}):\n{{ text }}"
SETTLE = 0.3
WAIT_SECONDS = 10.0


def agent_source(**fields: Any) -> settings.Source:
    values = {"tenant": "default", "name": "shop", "secrets": [SECRET], "agent": "support"}
    return settings.Source.model_validate({**values, "prompt": PROMPT, **fields})


@contextlib.asynccontextmanager
async def serving(pool: dbpool.Pool) -> AsyncIterator[str]:
    """The ingress app with one agent source; its URL."""
    config = settings.IngressSettings(enabled=True, sources=(agent_source(),))
    intake = ingress_intake.DurableIntake(pool, registry.registry, settings.EngineSettings())
    listener = await public.listen(
        webhooks.Endpoint(config, intake), host="127.0.0.1", port=0, limits=public.Limits.of(config)
    )
    try:
        yield f"http://127.0.0.1:{listener.port}/hooks/default/shop"
    finally:
        await listener.close()
        await intake.close()


async def deliver(url: str, event: Any, delivery_id: str) -> tuple[int, Any]:
    body = json.dumps(event).encode()
    stamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signatures.sign_standard(SECRET, delivery_id, stamp, body),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status, await response.json()


class TestWebhookStartsAnAgent:
    async def test_the_prompt_is_filled_from_the_delivery(self, db: dbpool.Pool) -> None:
        """agent.run with the agent and the template filled from headers and JSON fields."""
        event = {"customer": {"name": "Ada"}, "items": [{"sku": "A1"}, {"sku": "B2"}]}
        async with serving(db) as url:
            status, answer = await deliver(url, event, "msg_agent_1")
        assert status == 202, answer
        task = await dbtasks.get_task(db, answer["task_id"])
        assert task is not None
        assert task.workflow == loop.WORKFLOW
        assert task.input == {
            "agent": "support",
            "prompt": "A application/json order from Ada on shop: A1 B2 (delivery msg_agent_1)",
        }

    @pytest.mark.parametrize(
        "event",
        [{"items": []}, {"customer": {}, "items": []}, {"customer": {"name": "Ada"}}, [1, 2]],
        ids=["no-customer", "no-name", "no-items", "not-an-object"],
    )
    async def test_a_delivery_without_a_named_field_is_422_and_no_task(
        self, db: dbpool.Pool, event: Any
    ) -> None:
        """The sender hears which field is missing; nothing is enqueued."""
        async with serving(db) as url:
            status, answer = await deliver(url, event, "msg_agent_2")
        assert status == 422, answer
        assert "does not fit the prompt" in answer["reason"]
        assert await dbtasks.list_tasks(db, limit=10) == []


@contextlib.asynccontextmanager
async def watching(pool: dbpool.Pool, folder: Path, **fields: Any) -> AsyncIterator[watch.Watcher]:
    spec = settings.Watch.model_validate(
        {"path": folder, "agent": "support", "prompt": FILE_PROMPT, "settle_seconds": SETTLE}
        | fields
    )
    watcher = watch.Watcher(pool, registry.registry, support.engine_settings(), [spec])
    await watcher.start()
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            await watcher.caught_up.wait()
        yield watcher
    finally:
        await watcher.stop()


async def settled(watcher: watch.Watcher, count: int) -> None:
    async def reached() -> bool | None:
        return watcher.settled >= count or None

    await support.wait_until(reached, what=f"{count} settled path(s)")


class TestWatchStartsAnAgent:
    async def test_the_files_text_is_attached(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """The prompt names the file and carries its text."""
        async with watching(db, tmp_path) as watcher:
            (tmp_path / "refunds.md").write_text("Refunds take five days.\n", encoding="utf-8")
            await settled(watcher, 1)
        [task] = await dbtasks.list_tasks(db, limit=10)
        assert task.workflow == loop.WORKFLOW
        assert task.input == {
            "agent": "support",
            "prompt": "Summarise refunds.md (text/markdown, 24 bytes, created):\n"
            "Refunds take five days.\n",
        }

    async def test_a_long_file_is_cut_at_the_budget(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """attach_tokens bounds the text (4 characters a token); `truncated` says so."""
        prompt = "{{ text }}|{{ truncated }}"
        async with watching(db, tmp_path, attach_tokens=10, prompt=prompt) as watcher:
            (tmp_path / "long.txt").write_text("é" * 100, encoding="utf-8")
            await settled(watcher, 1)
        [task] = await dbtasks.list_tasks(db, limit=10)
        assert task.input["prompt"] == "é" * 40 + "|True"

    async def test_a_binary_file_gives_no_text(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """A file that is not UTF-8 text is named, with an empty `text`."""
        prompt = "{{ name }}:[{{ text }}]"
        async with watching(db, tmp_path, prompt=prompt) as watcher:
            (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
            await settled(watcher, 1)
        [task] = await dbtasks.list_tasks(db, limit=10)
        assert task.input["prompt"] == "logo.png:[]"

    async def test_a_deleted_file_starts_no_agent(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """An agent is started for files that are there; a deletion starts nothing."""
        async with watching(db, tmp_path) as watcher:
            path = tmp_path / "gone.txt"
            path.write_text("soon gone", encoding="utf-8")
            await settled(watcher, 1)
            path.unlink()
            await settled(watcher, 2)
        assert len(await dbtasks.list_tasks(db, limit=10)) == 1


class TestTemplatesAreCheckedAtLoad:
    @pytest.mark.parametrize(
        ("model", "fields", "problem"),
        [
            (settings.Source, {"prompt": "{{ bdy.text }}"}, "names bdy, which a webhook event"),
            (settings.Source, {"prompt": "{{ text }}"}, "names text, which a webhook event"),
            (settings.Source, {"prompt": "{% if body %}"}, "does not parse"),
            (settings.Source, {"prompt": None}, "needs a prompt"),
            (settings.Source, {"workflow": "other"}, "either workflow or agent"),
            (settings.Watch, {"prompt": "{{ body }}"}, "names body, which a file event"),
            (settings.Watch, {"prompt": "{{ slot }}"}, "names slot, which a file event"),
        ],
    )
    def test_a_template_the_events_cannot_fill_is_refused(
        self, model: type[settings.Source | settings.Watch], fields: dict[str, Any], problem: str
    ) -> None:
        """The config is refused when it is loaded, naming the problem."""
        base: dict[str, Any] = {"agent": "support", "prompt": "{{ path }}"}
        if model is settings.Source:
            base = {"tenant": "default", "name": "shop", "secrets": [SECRET], **base}
        else:
            base = {"path": "/srv/inbox", **base}
        with pytest.raises(ValueError, match=problem):
            model.model_validate(base | fields)

    def test_a_prompt_without_an_agent_is_refused(self) -> None:
        with pytest.raises(ValueError, match="a prompt is for an agent"):
            settings.Watch.model_validate({"path": "/srv", "workflow": "x", "prompt": "{{ name }}"})


class TestRendering:
    @pytest.mark.parametrize(
        "template",
        [
            "{{ body.__class__.__mro__ }}",
            "{{ body.items.__globals__ }}",
            "{% for i in range(10**9) %}x{% endfor %}",
            "{{ ''.join(['x'] * 300000) }}",
        ],
    )
    def test_the_sandbox_holds(self, template: str) -> None:
        """Python internals, huge ranges and runaway output are refused, not rendered."""
        with pytest.raises(triggers.TriggerInputError):
            triggers.render(template, "webhook", {"body": {"a": 1}})

    def test_an_empty_prompt_is_refused(self) -> None:
        with pytest.raises(triggers.TriggerInputError, match="empty"):
            triggers.render("{{ body.note }}", "webhook", {"body": {"note": "  "}})
