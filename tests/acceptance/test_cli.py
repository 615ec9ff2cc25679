"""The `appliance` command as a subprocess: exit codes, messages on stderr, JSON on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.db import pool as dbpool
from appliance.engine import context, registry
from tests.support import daemon, workflows
from tests.support import engine as support

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

UNREACHABLE_DSN = "postgresql://x@127.0.0.1:1/x"
SECRET_DSN = "postgresql://u:secretpw@127.0.0.1:1/x"


def assert_clean_error(result: daemon.Result, code: int, *fragments: str) -> None:
    """Exit `code`, a one-line `appliance: error:` message naming `fragments`, no traceback."""
    assert result.code == code, f"exit {result.code}\nstdout: {result.stdout}\n{result.stderr}"
    assert result.stderr.startswith("appliance: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in {result.stderr!r}"


async def submit(dsn: str, folder: Path, *args: str) -> int:
    """`appliance task submit --json ...`; the new task's id."""
    result = await daemon.cli("--json", "task", "submit", *args, folder=folder, dsn=dsn)
    assert result.code == 0, result.stderr
    task_id: int = result.json()["task_id"]
    return task_id


class TestBadInput:
    async def test_an_unknown_workflow_exits_65(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Submitting a workflow nobody registered is bad input data, and says which."""
        result = await daemon.cli(
            "task", "submit", "no.such.workflow", folder=tmp_path, dsn=database_dsn
        )
        assert_clean_error(result, 65, "no.such.workflow")

    async def test_malformed_input_json_exits_65(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """--input that is not JSON is bad input data."""
        result = await daemon.cli(
            "task",
            "submit",
            workflows.COUNTED,
            "--input",
            "{not json",
            folder=tmp_path,
            dsn=database_dsn,
        )
        assert_clean_error(result, 65, "--input")

    async def test_an_unknown_tenant_exits_65(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Submitting for a tenant that does not exist is bad input data."""
        result = await daemon.cli(
            "task",
            "submit",
            workflows.COUNTED,
            "--tenant",
            "nobody-here",
            folder=tmp_path,
            dsn=database_dsn,
        )
        assert_clean_error(result, 65, "tenant")


class TestBadConfig:
    async def test_a_misspelt_key_exits_78_naming_file_and_key(self, tmp_path: Path) -> None:
        """An unknown key in the config file is named, with the file, as an unknown key."""
        config = tmp_path / "bad.toml"
        config.write_text("[engine]\nconcurency = 4\n", encoding="utf-8")
        result = await daemon.cli("task", "list", folder=tmp_path, config=config)
        assert_clean_error(result, 78, str(config), "engine.concurency", "unknown key")

    async def test_invalid_toml_exits_78_naming_the_file(self, tmp_path: Path) -> None:
        """A config file that is not TOML is a configuration error naming the file."""
        config = tmp_path / "broken.toml"
        config.write_text("[engine\nconcurrency = 4\n", encoding="utf-8")
        result = await daemon.cli("task", "list", folder=tmp_path, config=config)
        assert_clean_error(result, 78, str(config), "TOML")

    async def test_a_bad_environment_override_exits_78_naming_the_variable(
        self, tmp_path: Path
    ) -> None:
        """An override that does not validate names its environment variable."""
        result = await daemon.cli(
            "task", "list", folder=tmp_path, env={"APPLIANCE_ENGINE__CONCURRENCY": "abc"}
        )
        assert_clean_error(result, 78, "APPLIANCE_ENGINE__CONCURRENCY")

    async def test_a_named_config_file_that_does_not_exist_exits_78(self, tmp_path: Path) -> None:
        """--config naming a missing file is an error, not silently the defaults."""
        missing = tmp_path / "missing.toml"
        result = await daemon.cli("task", "list", folder=tmp_path, config=missing)
        assert_clean_error(result, 78, str(missing))


class TestUnavailable:
    async def test_an_unreachable_database_exits_69(self, tmp_path: Path) -> None:
        """Postgres that does not answer is a dependency down, named without its password."""
        result = await daemon.cli("task", "list", folder=tmp_path, dsn=UNREACHABLE_DSN)
        assert_clean_error(result, 69, "127.0.0.1:1")


class TestRun:
    async def test_run_against_an_unreachable_database_exits_69(self, tmp_path: Path) -> None:
        """The daemon does not start without Postgres, and says where it looked."""
        result = await daemon.cli(
            "run",
            folder=tmp_path,
            dsn=UNREACHABLE_DSN,
            overrides={"health.port": 0, "health.host": "127.0.0.1", "log.level": "WARNING"},
        )
        assert_clean_error(result, 69, "127.0.0.1:1")

    async def test_run_with_a_workflow_module_that_does_not_import_exits_78(
        self, database_dsn: str, tmp_path: Path
    ) -> None:
        """A configured workflow module that cannot be imported is a configuration error."""
        result = await daemon.cli(
            "run",
            folder=tmp_path,
            dsn=database_dsn,
            overrides={
                "health.port": 0,
                "health.host": "127.0.0.1",
                "log.level": "WARNING",
                "engine.workflow_modules": ["no_such_module"],
            },
        )
        assert_clean_error(result, 78, "no_such_module")


class TestAnswers:
    async def test_showing_an_unknown_task_exits_1(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`task show` of a task that does not exist answers no."""
        result = await daemon.cli("task", "show", "999999", folder=tmp_path, dsn=database_dsn)
        assert_clean_error(result, 1, "999999")

    async def test_an_unknown_subcommand_exits_2_with_the_usage(self, tmp_path: Path) -> None:
        """A usage error exits 2 and shows the usage line."""
        result = await daemon.cli("frobnicate", folder=tmp_path)
        assert_clean_error(result, 2, "frobnicate", "usage:")

    async def test_retrying_a_queued_task_exits_1(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Only failed or cancelled tasks can be retried; a queued one is refused."""
        task_id = await submit(database_dsn, tmp_path, workflows.COUNTED)
        result = await daemon.cli("task", "retry", str(task_id), folder=tmp_path, dsn=database_dsn)
        assert_clean_error(result, 1, "queued")


class TestSubmit:
    async def test_the_same_idempotency_key_gives_the_same_task(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Submitting twice with one --idempotency-key prints the same task id."""
        args = ("task", "submit", workflows.COUNTED, "--idempotency-key", "once")
        first = await daemon.cli(*args, folder=tmp_path, dsn=database_dsn)
        second = await daemon.cli(*args, folder=tmp_path, dsn=database_dsn)
        assert first.code == second.code == 0, first.stderr + second.stderr
        assert first.stdout.split()[0] == second.stdout.split()[0]
        assert "existing" in second.stdout

    async def test_submit_json_says_whether_it_created_the_task(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """--json output of a repeated submit parses and reports created false."""
        args = ("--json", "task", "submit", workflows.SLEEPY, "--idempotency-key", "k")
        first = await daemon.cli(
            *args, "--input", '{"seconds": 1}', folder=tmp_path, dsn=database_dsn
        )
        second = await daemon.cli(
            *args, "--input", '{"seconds": 1}', folder=tmp_path, dsn=database_dsn
        )
        assert first.json()["created"] is True
        assert second.json() == {"task_id": first.json()["task_id"], "created": False}


class TestConfigShow:
    async def test_the_database_password_is_redacted(self, tmp_path: Path) -> None:
        """`config show` prints the settings with the DSN as asterisks."""
        result = await daemon.cli("config", "show", folder=tmp_path, dsn=SECRET_DSN)
        assert result.code == 0, result.stderr
        assert "secretpw" not in result.stdout + result.stderr
        assert 'database.url = "**********"' in result.stdout

    async def test_json_output_is_redacted_too(self, tmp_path: Path) -> None:
        """`config show --json` parses, with the DSN redacted."""
        result = await daemon.cli("--json", "config", "show", folder=tmp_path, dsn=SECRET_DSN)
        assert result.code == 0, result.stderr
        assert "secretpw" not in result.stdout
        assert result.json()["database"]["url"] == "**********"


class TestTaskCommands:
    async def test_cancelling_a_queued_task_cancels_it(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A queued task is cancelled at once: exit 0, --json says cancelled."""
        task_id = await submit(database_dsn, tmp_path, workflows.COUNTED)
        cancelled = await daemon.cli(
            "--json", "task", "cancel", str(task_id), folder=tmp_path, dsn=database_dsn
        )
        assert cancelled.code == 0, cancelled.stderr
        assert cancelled.json() == {"task_id": task_id, "result": "cancelled"}

    async def test_cancelling_an_ended_task_exits_1(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Cancelling a cancelled task again: the answer is no, naming its state."""
        task_id = await submit(database_dsn, tmp_path, workflows.COUNTED)
        args = ("task", "cancel", str(task_id))
        await daemon.cli(*args, folder=tmp_path, dsn=database_dsn)
        again = await daemon.cli(*args, folder=tmp_path, dsn=database_dsn)
        assert_clean_error(again, 1, "already ended", "cancelled")

    async def test_retry_requeues_a_cancelled_task(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`task retry` of a cancelled task puts it back in the queue."""
        task_id = await submit(database_dsn, tmp_path, workflows.COUNTED)
        await daemon.cli("task", "cancel", str(task_id), folder=tmp_path, dsn=database_dsn)
        retried = await daemon.cli(
            "--json", "task", "retry", str(task_id), folder=tmp_path, dsn=database_dsn
        )
        assert retried.code == 0, retried.stderr
        assert retried.json() == {"task_id": task_id, "result": "queued"}
        shown = await daemon.cli(
            "--json", "task", "show", str(task_id), folder=tmp_path, dsn=database_dsn
        )
        assert shown.json()["state"] == "queued"

    async def test_show_json_has_the_task_with_steps_and_attempts(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`task show --json` parses and carries input, steps, the attempt count and history."""
        task_id = await submit(
            database_dsn, tmp_path, workflows.COUNTED, "--input", json.dumps({"gate": "/x"})
        )
        shown = await daemon.cli(
            "--json", "task", "show", str(task_id), folder=tmp_path, dsn=database_dsn
        )
        data = shown.json()
        assert data["task_id"] == task_id
        assert data["workflow"] == workflows.COUNTED
        assert data["input"] == {"gate": "/x"}
        assert data["steps"] == []
        assert data["attempts"] == 0
        assert data["attempt_history"] == []

    async def test_list_json_has_the_newest_task_first(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`task list --json` parses, newest first."""
        first = await submit(database_dsn, tmp_path, workflows.COUNTED)
        second = await submit(database_dsn, tmp_path, workflows.COUNTED)
        listed = await daemon.cli("--json", "task", "list", folder=tmp_path, dsn=database_dsn)
        assert [t["task_id"] for t in listed.json()] == [second, first]


class TestAudit:
    async def test_verify_passes_on_an_untouched_log(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`audit verify` exits 0 and its --json output lists no breaks."""
        await submit(database_dsn, tmp_path, workflows.COUNTED)
        verified = await daemon.cli("--json", "audit", "verify", folder=tmp_path, dsn=database_dsn)
        assert verified.code == 0, verified.stderr
        data = verified.json()
        assert data["breaks"] == []
        assert data["entries"] >= 1

    async def test_show_lists_a_tasks_entries(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`audit show --json` parses and starts with the submission."""
        task_id = await submit(database_dsn, tmp_path, workflows.COUNTED)
        await daemon.cli("task", "cancel", str(task_id), folder=tmp_path, dsn=database_dsn)
        shown = await daemon.cli(
            "--json", "audit", "show", str(task_id), folder=tmp_path, dsn=database_dsn
        )
        assert shown.code == 0, shown.stderr
        assert [e["action"] for e in shown.json()] == ["task.submitted", "task.cancelled"]


LONG_ERROR = "the refund could not be booked: " + " ".join(
    f"ledger line {n} rejected" for n in range(30)
)
long_failures = registry.Registry()


@long_failures.workflow("test.long_failure", max_attempts=1)
async def long_failure(ctx: context.TaskContext, task_input: Any) -> Any:
    """Fails at once with an error far longer than a table cell."""
    raise RuntimeError(LONG_ERROR)


async def failed_with_a_long_error(db: dbpool.Pool, dsn: str) -> int:
    """A task that ran once and failed with LONG_ERROR."""
    config = support.engine_settings()
    task_id = await support.submit(db, long_failures, config, workflow="test.long_failure")
    async with support.running_worker(db, dsn, config, long_failures) as run:
        await support.wait_for_state(db, task_id, workers=[run])
    return task_id


class TestWholeText:
    async def test_show_prints_a_long_error_whole(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`task show` gives the task's error and each attempt's error uncut."""
        task_id = await failed_with_a_long_error(db, database_dsn)
        shown = await daemon.cli("task", "show", str(task_id), folder=tmp_path, dsn=database_dsn)

        assert shown.code == 0, shown.stderr
        assert shown.stdout.count(LONG_ERROR) == 2  # the task's error, its one attempt's
        assert "..." not in shown.stdout

    async def test_list_cuts_a_long_error_and_says_where_it_is_whole(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`task list` may cut, marks the cut and names `task show` on stderr."""
        await failed_with_a_long_error(db, database_dsn)
        listed = await daemon.cli("task", "list", folder=tmp_path, dsn=database_dsn)

        assert listed.code == 0, listed.stderr
        assert LONG_ERROR not in listed.stdout
        assert listed.stdout.splitlines()[1].endswith("...")
        assert "appliance task show ID" in listed.stderr


CANARY = "sk-ant-api03-CliCanary0LEAKED1canary2LEAKED3"
# Every command loads the config first; each must fail on it without a trace of the secret.
CONFIG_LOADING_COMMANDS = (
    ("config", "show"),
    ("--json", "config", "show"),
    ("doctor",),
    ("run",),
    ("init",),
    ("task", "list"),
    ("secrets", "list"),
    ("-v", "tenants", "list"),
)


def assert_no_canary(result: daemon.Result) -> None:
    """Exit 78, and not 8 characters of the canary in a row on stdout or stderr."""
    assert result.code == 78, f"exit {result.code}\n{result.stdout}\n{result.stderr}"
    said = result.stdout + result.stderr
    leaked = [CANARY[i : i + 8] for i in range(len(CANARY) - 7) if CANARY[i : i + 8] in said]
    assert not leaked, f"{leaked[:3]} of the secret in:\n{said}"


class TestConfigErrorsKeepSecrets:
    @pytest.mark.parametrize("command", CONFIG_LOADING_COMMANDS, ids=" ".join)
    async def test_a_misspelt_secret_key_in_the_file_is_not_echoed(
        self, tmp_path: Path, command: tuple[str, ...]
    ) -> None:
        """`api_kye = "sk-..."` is named as an unknown key; its value appears nowhere."""
        config = tmp_path / "appliance.toml"
        config.write_text(f'[model]\napi_kye = "{CANARY}"\n', encoding="utf-8")
        result = await daemon.cli(*command, folder=tmp_path, config=config)
        assert_no_canary(result)
        assert "model.api_kye: unknown key" in result.stderr

    @pytest.mark.parametrize("command", CONFIG_LOADING_COMMANDS, ids=" ".join)
    async def test_a_bad_webhook_secret_in_an_override_is_not_echoed(
        self, tmp_path: Path, command: tuple[str, ...]
    ) -> None:
        """A source whose inline secret is not a Standard Webhooks secret: named, not shown."""
        sources = [{"tenant": "default", "name": "s", "workflow": "w", "secrets": [CANARY]}]
        result = await daemon.cli(
            *command,
            folder=tmp_path,
            overrides={"ingress.enabled": True, "ingress.sources": sources},
        )
        assert_no_canary(result)
        assert "APPLIANCE_INGRESS__SOURCES" in result.stderr
