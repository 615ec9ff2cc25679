"""An error another attempt cannot fix fails the task at once, typed and with its reason; any
other failure is still retried with backoff up to max_attempts."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import errors, models, settings
from appliance.agents import client, definitions, loop
from appliance.db import pool as dbpool
from appliance.engine import context, registry
from tests.support import engine as support
from tests.support import isolation, messages_api

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

ORDER = {"order": {"id": "A-7", "lines": [{"sku": "x", "qty": 2}]}, "note": None}


def _raise(exc: BaseException) -> Any:
    raise exc


def _code_key_error(_: context.TaskContext, task_input: Any) -> Any:
    lookup: dict[str, int] = {}
    return lookup["not the input"]  # a KeyError of the workflow's code, not of its input


async def run_one(
    db: dbpool.Pool,
    database_dsn: str,
    body: Callable[[context.TaskContext, Any], Any],
    task_input: Any = ORDER,
) -> models.Task:
    """Run a workflow whose one step calls `body(ctx, task_input)`, with three attempts."""
    [task] = await run_each(db, database_dsn, [body], task_input)
    return task


async def run_each(
    db: dbpool.Pool,
    database_dsn: str,
    bodies: list[Callable[[context.TaskContext, Any], Any]],
    task_input: Any = ORDER,
) -> list[models.Task]:
    """One task per body, as `run_one` runs it; the tasks once all have ended, in order."""
    reg = registry.Registry()

    @reg.workflow("wf")
    async def wf(ctx: context.TaskContext, task_input: Any) -> Any:
        body = bodies[task_input["body"]] if isinstance(task_input, dict) else bodies[0]
        return await ctx.step("body", _async(body), ctx, task_input)

    cfg = support.engine_settings()
    ids = []
    for i in range(len(bodies)):
        value = {**task_input, "body": i} if isinstance(task_input, dict) else task_input
        ids.append(
            await support.submit(db, reg, cfg, workflow="wf", task_input=value, max_attempts=3)
        )
    async with support.running_worker(db, database_dsn, cfg, reg) as w:
        done = await support.wait_for_all(db, ids, workers=[w])
    return sorted(done, key=lambda t: ids.index(t.task_id))


def _async(body: Callable[[context.TaskContext, Any], Any]) -> Callable[..., Any]:
    async def run(ctx: context.TaskContext, task_input: Any) -> Any:
        return body(ctx, task_input)

    return run


def _set_key(_: context.TaskContext, task_input: Any) -> Any:
    task_input["order"]["id"] = "B-1"


def _append_line(_: context.TaskContext, task_input: Any) -> Any:
    task_input["order"]["lines"].append({"sku": "y"})


PERMANENT: dict[str, tuple[Callable[[context.TaskContext, Any], Any], str]] = {
    "input-error": (
        lambda _, i: _raise(errors.InputError("amount must be positive")),
        "InputError",
    ),
    "missing-key": (lambda _, i: i["customer"], "MissingInputError"),
    "missing-nested-key": (lambda _, i: i["order"]["total"], "MissingInputError"),
    "changed-key": (_set_key, "ReadOnlyInputError"),
    "changed-list": (_append_line, "ReadOnlyInputError"),
    "unknown-tool": (
        lambda _, i: _raise(errors.UnknownToolError("unknown tool 'x'")),
        "UnknownToolError",
    ),
}

TRANSIENT: dict[str, Callable[[context.TaskContext, Any], Any]] = {
    "runtime-error": lambda _, i: _raise(RuntimeError("flaky")),
    "key-error-of-the-code": _code_key_error,
    "connection-error": lambda _, i: _raise(ConnectionError("reset by peer")),
    "database-unreachable-elsewhere": lambda _, i: _raise(errors.DependencyError("down")),
    "bug": lambda _, i: _raise(errors.ApplianceError("an internal error")),
}


class TestPermanentErrors:
    @pytest.mark.parametrize("case", sorted(PERMANENT))
    async def test_fails_the_task_at_once_with_its_type_and_reason(
        self, db: dbpool.Pool, database_dsn: str, case: str
    ) -> None:
        """One attempt of three is made; the task fails with the error's type and reason."""
        body, kind = PERMANENT[case]
        task = await run_one(db, database_dsn, body)

        assert (task.state, task.attempts) == ("failed", 1)
        assert await support.outcomes(db, task.task_id) == ["failed"]
        assert task.error is not None
        assert task.error.startswith(kind)

    async def test_a_missing_input_key_names_the_key_and_the_keys_there(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """The failure says which key of the input is missing, and which keys are there."""
        task = await run_one(db, database_dsn, lambda _, i: i["order"]["total"])

        assert task.error is not None
        assert "'order.total'" in task.error
        assert "id, lines" in task.error

    async def test_a_workflow_that_reads_its_input_wrongly_fails_at_once(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A KeyError on the input in the workflow's own code (not a step) fails at once too."""
        reg = registry.Registry()

        @reg.workflow("wf")
        async def wf(ctx: context.TaskContext, task_input: Any) -> Any:
            return task_input["customer"]["email"]

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="wf", task_input={}, max_attempts=3)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.attempts) == ("failed", 1)


class TestTheInputAsAWorkflowSeesIt:
    async def test_a_missing_key_is_both_a_key_error_and_bad_input(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A workflow's `except KeyError` still catches a missing key, which is an InputError;
        `.get()` answers its default."""

        def fallback(_: context.TaskContext, task_input: Any) -> Any:
            try:
                customer = task_input["customer"]
            except KeyError as exc:
                customer = f"anonymous ({type(exc).__name__}, bad input: "
                customer += f"{isinstance(exc, errors.InputError)})"
            return [customer, task_input.get("channel", "email"), task_input["order"]["id"]]

        task = await run_one(db, database_dsn, fallback)

        assert (task.state, task.output) == (
            "succeeded",
            ["anonymous (MissingInputError, bad input: True)", "email", "A-7"],
        )

    async def test_the_input_is_read_only_and_its_copies_are_not(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """The input refuses changes; dict(), copy.deepcopy() and JSON give ordinary values."""

        def edit(_: context.TaskContext, task_input: Any) -> Any:
            refused = []
            for change in (
                lambda: task_input.update(note="x"),
                lambda: task_input["order"].pop("id"),
                task_input["order"]["lines"][0].clear,
                lambda: task_input["order"]["lines"].append({}),
            ):
                try:
                    change()
                except errors.ReadOnlyInputError:
                    refused.append(True)
            mine = copy.deepcopy(task_input)
            mine["order"]["lines"].append({"sku": "y", "qty": 1})
            shallow = dict(task_input)
            shallow["seen"] = True
            return {
                "refused": refused,
                "edited": mine,
                "shallow": sorted(shallow),
                "input": task_input,
            }

        task = await run_one(db, database_dsn, edit)

        assert task.state == "succeeded"
        assert task.output["refused"] == [True] * 4
        assert task.output["input"] == {**ORDER, "body": 0}
        assert task.output["edited"]["order"]["lines"][-1] == {"sku": "y", "qty": 1}
        assert task.output["shallow"] == ["body", "note", "order", "seen"]

    async def test_an_array_input_is_read_only_too(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """An input that is an array arrives equal, and refuses changes at any depth."""

        def edit(_: context.TaskContext, task_input: Any) -> Any:
            try:
                task_input[1]["a"] = 3
            except errors.ReadOnlyInputError:
                return ["refused", task_input]
            return ["changed", task_input]

        task = await run_one(db, database_dsn, edit, [1, {"a": 2}])

        assert (task.state, task.output) == ("succeeded", ["refused", [1, {"a": 2}]])


class TestTransientErrors:
    @pytest.mark.parametrize("case", sorted(TRANSIENT))
    async def test_are_retried_where_a_permanent_error_is_not(
        self, db: dbpool.Pool, database_dsn: str, case: str
    ) -> None:
        """Anything but a permanent error is retried (three attempts, then failed), while a
        task missing an input key beside it fails at once."""
        transient, permanent = await run_each(
            db, database_dsn, [TRANSIENT[case], lambda _, i: i["customer"]]
        )

        assert (transient.state, transient.attempts) == ("failed", 3)
        assert await support.outcomes(db, transient.task_id) == ["retry", "retry", "failed"]
        assert (permanent.state, permanent.attempts) == ("failed", 1)


# ---- agent tasks ------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[messages_api.Server]:
    async with messages_api.running_server() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def runtime(db: dbpool.Pool, api: messages_api.Server) -> AsyncIterator[loop.Runtime]:
    config = settings.ModelSettings.model_validate(
        {"api_key": api.api_key, "base_url": api.base_url, "max_retries": 0}
    )
    model = client.ModelClient(config)
    try:
        yield loop.Runtime(db, model, config, isolation.tool_actions(db))
    finally:
        await model.close()


async def define(db: dbpool.Pool, tmp_path: Path, *, tools: tuple[str, ...] = ()) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'name = "support"\nmodel = "claude-sonnet-4-6"\npersona = "You help."\n'
        f"tools = {json.dumps(list(tools))}\n"
    )
    await definitions.apply(db, definitions.load(path), tenant_id="default", actor="test")


async def run_agent(
    db: dbpool.Pool, database_dsn: str, runtime: loop.Runtime, task_input: Any
) -> models.Task:
    cfg = support.engine_settings(node_name="agents")
    task_id = await support.submit(
        db, registry.registry, cfg, workflow=loop.WORKFLOW, task_input=task_input, max_attempts=3
    )
    async with support.running_worker(
        db, database_dsn, cfg, registry.registry, {loop.SERVICE: runtime}
    ) as w:
        return await support.wait_for_state(db, task_id, workers=[w])


class TestAgentTasks:
    @pytest.mark.parametrize(
        ("task_input", "said"),
        [
            ({"agent": "nobody", "prompt": "hi"}, "UnknownAgentError"),
            ({"agent": "support"}, '"prompt": TEXT'),
            ({"agent": "support", "prompt": ["not", "text"]}, "prompt must be text"),
            ({"agent": "support", "prompt": "hi", "version": "2"}, "version must be"),
            ({"agent": 7, "prompt": "hi"}, "agent must be a name"),
            ("just a prompt", "agent.run needs"),
        ],
        ids=["unknown-agent", "no-prompt", "prompt-not-text", "bad-version", "bad-agent", "text"],
    )
    async def test_bad_input_fails_at_once_without_a_model_call(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
        task_input: Any,
        said: str,
    ) -> None:
        """An agent task with input it cannot run fails in one attempt, saying what is wrong."""
        await define(db, tmp_path)
        task = await run_agent(db, database_dsn, runtime, task_input)

        assert (task.state, task.attempts) == ("failed", 1)
        assert task.error is not None
        assert said in task.error
        assert api.requests_to("/v1/messages") == []

    async def test_an_agent_naming_an_unregistered_tool_fails_at_once(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """A definition listing a tool nobody registered fails its task once, naming the tool."""
        await define(db, tmp_path, tools=("no_such_tool",))
        task = await run_agent(db, database_dsn, runtime, {"agent": "support", "prompt": "hi"})

        assert (task.state, task.attempts) == ("failed", 1)
        assert task.error is not None
        assert task.error.startswith("UnknownToolError")
        assert "'no_such_tool'" in task.error
        assert api.requests_to("/v1/messages") == []

    async def test_a_server_error_of_the_model_is_retried_where_bad_input_is_not(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """A 5xx from the Messages API ends the attempt and the next one answers, while a task
        naming no agent fails at once."""
        await define(db, tmp_path)
        api.script(messages_api.api_error(), messages_api.TextReply("Hello."))
        bad = await run_agent(db, database_dsn, runtime, {"agent": "nobody", "prompt": "hi"})
        task = await run_agent(db, database_dsn, runtime, {"agent": "support", "prompt": "hi"})

        assert (task.state, task.attempts) == ("succeeded", 2)
        assert task.output["answer"] == "Hello."
        assert (bad.state, bad.attempts) == ("failed", 1)
