"""The control plane's side of isolation: one confined process per tool call or isolated step.

`Supervisor.run` starts `python -I -B -m appliance.isolation.child` with a clean environment
(PATH, LANG, HOME and TMPDIR pointing at a private scratch directory: no DSN, no key, no
settings), hands it one end of a socket pair, and serves its requests until it answers. The
binding of the call (tenant, task, workflow, step, the tool's integrations) is fixed here, never
taken from the process: every request is checked against it, and every refusal is an audit
entry (`leases.Leases.refuse`). A process that crashes, breaks the protocol, hits a resource
limit or runs past `call_timeout_seconds` fails its step (`ToolProcessError`), never the
daemon; its process group is killed and its scratch directory removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from appliance import errors, leases, redaction, settings
from appliance.db import isolation as dbisolation
from appliance.db import pool as dbpool
from appliance.db import tenancy
from appliance.isolation import channel, confinement

log = logging.getLogger(__name__)

OUTPUT_TAIL = 4000
# Where Postgres puts its sockets on Debian and most Linux builds; always hidden.
POSTGRES_SOCKET_DIRS = ("/run/postgresql", "/var/run/postgresql")


class ToolProcessError(errors.ApplianceError):
    """A tool's process crashed, hit a resource limit or ran past its time."""


class ToolFailedError(errors.ApplianceError):
    """The tool raised an error in its process."""

    exit_code = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The coroutine function a tool process runs: `fn(call, argument)`, by module and name."""

    module: str
    name: str

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> Target:
        """The target of a module-level function (a tool process imports it by name)."""
        if "." in fn.__qualname__ or fn.__qualname__ == "<lambda>":
            raise errors.ConfigError(
                f"{fn.__module__}.{fn.__qualname__} cannot run isolated: only a module-level "
                "function can be imported by a tool process"
            )
        return cls(fn.__module__, fn.__qualname__)


class Supervisor:
    """Starts and serves the tool processes of one daemon."""

    def __init__(
        self,
        pool: dbpool.Pool,
        grants: leases.Leases,
        config: settings.IsolationSettings,
        *,
        hidden_paths: Iterable[Path] = (),
    ) -> None:
        self._pool = pool
        self._leases = grants
        self._config = config
        hidden = [*hidden_paths, *config.hidden_paths, *map(Path, POSTGRES_SOCKET_DIRS)]
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            hidden.append(Path(os.environ["CREDENTIALS_DIRECTORY"]))
        self._hidden = tuple(dict.fromkeys(str(p.absolute()) for p in hidden))

    @property
    def hidden_paths(self) -> tuple[str, ...]:
        """What a tool process cannot see."""
        return self._hidden

    def _confinement(self, scratch: Path) -> confinement.Confinement:
        return confinement.Confinement(
            memory_bytes=self._config.memory_mb * 1024 * 1024,
            cpu_seconds=self._config.cpu_seconds,
            open_files=self._config.open_files,
            scratch_dir=str(scratch),
            hidden_paths=self._hidden,
            egress_ports=tuple(self._config.egress_ports),
            strict=self._config.strict,
        )

    async def run(
        self,
        binding: leases.Binding,
        target: Target,
        argument: Any,
        idempotency_key: str,
    ) -> Any:
        """Run `target(call, argument)` in its own confined process; its result (scrubbed of
        every secret value this process has handed out), or an error."""
        scratch = Path(tempfile.mkdtemp(prefix="appliance-tool-"))
        ours, theirs = socket.socketpair()
        output = scratch / "output.log"
        try:
            with output.open("wb") as sink:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    "-B",
                    "-m",
                    "appliance.isolation.child",
                    str(theirs.fileno()),
                    self._confinement(scratch).to_json(),
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=_clean_environment(scratch),
                    cwd=scratch,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                )
            theirs.close()
            try:
                value = await self._serve(
                    process,
                    ours,
                    binding=binding,
                    target=target,
                    argument=argument,
                    key=idempotency_key,
                )
                return redaction.registry.scrub(value)
            finally:
                await _stop(process)
                _log_output(output, binding)
        finally:
            theirs.close()
            ours.close()
            shutil.rmtree(scratch, ignore_errors=True)

    async def _serve(
        self,
        process: asyncio.subprocess.Process,
        sock: socket.socket,
        *,
        binding: leases.Binding,
        target: Target,
        argument: Any,
        key: str,
    ) -> Any:
        limit = self._config.call_timeout_seconds
        try:
            async with asyncio.timeout(limit):
                reader, writer = await asyncio.open_unix_connection(sock=sock)
                try:
                    return await self._converse(reader, writer, binding, target, argument, key)
                finally:
                    writer.close()
        except TimeoutError:
            raise ToolProcessError(
                f"{binding.tool!r} of task {binding.task_id} ran past its {limit:g} s limit; "
                "its process was killed"
            ) from None
        except channel.ChannelError as exc:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await process.wait()
            raise ToolProcessError(
                f"{binding.tool!r} of task {binding.task_id}: its process "
                f"{_describe_exit(process.returncode)} ({exc})"
            ) from exc

    async def _converse(  # noqa: PLR0917 - one call's whole context
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        binding: leases.Binding,
        target: Target,
        argument: Any,
        key: str,
    ) -> Any:
        ready = await channel.receive(reader)
        if ready["op"] != "ready":
            raise channel.ChannelError(f"expected 'ready', got {ready['op']!r}")
        await channel.send(
            writer,
            {
                "op": "call",
                "module": target.module,
                "name": target.name,
                "paths": [p for p in sys.path if p],
                "argument": argument,
                "tenant_id": binding.tenant_id,
                "task_id": binding.task_id,
                "idempotency_key": key,
            },
        )
        while True:
            message = await channel.receive(reader)
            if message["op"] == "result":
                return message.get("value")
            if message["op"] == "error":
                raise ToolFailedError(
                    f"{message.get('type', 'Error')}: {message.get('message', '')}"
                )
            await channel.send(writer, await self._answer(binding, message))

    async def _answer(self, binding: leases.Binding, message: dict[str, Any]) -> dict[str, Any]:
        """Serve one request of the process, within the call's binding."""
        op = message["op"]
        try:
            if op == "lease":
                integration = message.get("integration") or (
                    binding.integrations[0] if len(binding.integrations) == 1 else ""
                )
                grant = await self._leases.grant(
                    binding, str(integration), str(message.get("name"))
                )
                return {"op": "value", "value": str(grant.lease_id)}
            if op == "redeem":
                value = await self._leases.redeem(binding, str(message.get("lease_id")))
                return {"op": "value", "value": value}
            if op == "task":
                return {"op": "value", "value": await self._task(binding, message.get("task_id"))}
            await self._leases.refuse(
                binding, str(op)[:40], "not a request a tool process may make"
            )
        except (errors.NotAllowedError, errors.NotFoundError, errors.InputError) as exc:
            return {"op": "error", "type": type(exc).__name__, "message": str(exc)}

    async def _task(self, binding: leases.Binding, task_id: Any) -> dict[str, Any]:
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            await self._leases.refuse(binding, "task", "the task id is not an integer")
        async with tenancy.tenant_transaction(self._pool, binding.tenant_id) as conn:
            summary = await dbisolation.get_task_summary(conn, task_id=task_id)
        if summary is None:
            await self._leases.refuse(
                binding,
                "task",
                f"task {task_id} is not a task of tenant {binding.tenant_id!r}",
                task_id=task_id,
            )
        return {
            "task_id": summary.task_id,
            "workflow": summary.workflow,
            "state": summary.state,
            "created_at": summary.created_at.isoformat(),
        }


def _clean_environment(scratch: Path) -> dict[str, str]:
    """All a tool process gets of the environment: nothing of the daemon's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
    }


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Kill the process group if it still runs, and reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        reason = {
            "SIGXCPU": "its CPU time limit",
            "SIGKILL": "a kill (CPU or memory limit)",
            "SIGSEGV": "a crash",
        }.get(name, name)
        return f"was killed by {name} ({reason})"
    return f"exited with status {code}"


def _log_output(path: Path, binding: leases.Binding) -> None:
    """What the tool process printed, scrubbed, into the daemon's log."""
    with contextlib.suppress(OSError):
        text = path.read_bytes()[-OUTPUT_TAIL:].decode("utf-8", "replace").strip()
        if text:
            log.info(
                "tool %s of task %d printed: %s",
                binding.tool,
                binding.task_id,
                redaction.registry.scrub_text(text),
                extra={"event": "isolation.tool_output", "task_id": binding.task_id},
            )
