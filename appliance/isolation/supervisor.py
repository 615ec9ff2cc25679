"""The control plane's side of isolation: one confined process per tool call or isolated step.

`Supervisor.run` starts `python -I -B -m appliance.isolation.child` with a clean environment
(PATH, LANG, HOME and TMPDIR pointing at a private scratch directory: no DSN, no key, no
settings), its confinement on stdin, and one end of a socket pair, and serves its requests until
it answers. The binding of the call (tenant, task, workflow, step, the tool's integrations) is
fixed here, never taken from the process: every request is checked against it, and every
refusal is an audit entry (`leases.Leases.refuse`). A process that crashes, breaks the
protocol, hits a resource limit or runs past `call_timeout_seconds` fails its step
(`ToolProcessError`), never the daemon. When the call ends, however it ends, everything it
started ends with it (its PID namespace is taken down) and its scratch directory is removed.

Everything that leaves a tool process is scrubbed of the secrets this daemon has handed out
(`redaction.registry`) before anything else sees it: the result, the error and its causes,
the text of a failure, what the process printed (logged at the end, its tail only).

What a tool does not see (`hidden_paths`): the daemon's own files (`private_paths`: the config
file it really started with, the state directory, the vault key, every path its settings name
but the watched folders, the database client's credential files), the systemd credentials,
`/run` (the sockets of the box's services: Postgres, tailscaled, D-Bus, systemd; the session
keyring), `/dev/shm`, and the scratch directories of the other calls.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from appliance import errors, leases, redaction, settings
from appliance.db import isolation as dbisolation
from appliance.db import pool as dbpool
from appliance.db import tenancy
from appliance.isolation import channel, confinement

log = logging.getLogger(__name__)

OUTPUT_TAIL = 4000
MAX_ERROR = 4000
STOP_SECONDS = 10.0
# Hidden from every tool: the sockets of the box's services (Postgres, tailscaled, D-Bus,
# systemd, the session bus of a keyring), the credentials systemd hands to units, shared memory.
SYSTEM_PATHS = ("/run", "/var/run", "/run/credentials", "/dev/shm")  # noqa: S108 - hidden
# The database client's own credential files (libpq), from the environment and the home.
PG_FILE_VARIABLES = ("PGPASSFILE", "PGSERVICEFILE", "PGSSLKEY", "PGSSLCERT")
PG_HOME_FILES = (".pgpass", ".pg_service.conf", ".postgresql")


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
        hidden = [*hidden_paths, *config.hidden_paths, *map(Path, SYSTEM_PATHS), _scratch_root()]
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            hidden.append(Path(os.environ["CREDENTIALS_DIRECTORY"]))
        self._hidden = tuple(dict.fromkeys(str(p.absolute()) for p in hidden))
        # The code a tool process imports stays visible, even beneath a hidden directory.
        code = [*sys.path, sys.prefix, sys.base_prefix, str(Path(__file__).parents[2])]
        self._visible = tuple(dict.fromkeys(str(Path(p).absolute()) for p in code if p))

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
            visible_paths=self._visible,
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
        base = Path(tempfile.mkdtemp(prefix="call-", dir=_scratch_root()))
        scratch = base / "scratch"
        scratch.mkdir(mode=0o700)
        ours, theirs = socket.socketpair()
        output = base / "output.log"  # beside the scratch directory, out of the tool's reach
        try:
            with output.open("wb") as sink:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    "-B",
                    "-m",
                    "appliance.isolation.child",
                    str(theirs.fileno()),
                    stdin=subprocess.PIPE,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=_clean_environment(scratch),
                    cwd=scratch,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                )
            theirs.close()
            call = _Call(process)
            try:
                await call.confine(self._confinement(scratch))
                value = await self._serve(
                    call,
                    ours,
                    binding=binding,
                    target=target,
                    argument=argument,
                    key=idempotency_key,
                )
                return redaction.registry.scrub(value)
            except errors.ApplianceError as exc:
                clean = redaction.registry.scrub_error(exc)
                if clean is exc:
                    raise
                raise clean from None
            finally:
                await call.stop()
                _log_output(output, binding)
        finally:
            theirs.close()
            ours.close()
            shutil.rmtree(base, ignore_errors=True)

    async def _serve(
        self,
        call: _Call,
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
                    return await self._converse(
                        call, reader, writer, binding, target, argument, key
                    )
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
                    await call.process.wait()
            raise ToolProcessError(
                f"{binding.tool!r} of task {binding.task_id}: its process "
                f"{_describe_exit(call.process.returncode)} ({exc})"
            ) from exc

    async def _converse(  # noqa: PLR0917 - one call's whole context
        self,
        call: _Call,
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
        call.layers = tuple(str(layer) for layer in ready.get("layers") or ())
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
                raise _failure(message)
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
                binding,
                redaction.registry.clip(str(op), 40),
                "not a request a tool process may make",
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


class _Call:
    """One tool process: the confinement handed to it, the layers it applied, its end."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.layers: tuple[str, ...] = ()

    async def confine(self, spec: confinement.Confinement) -> None:
        """Write the confinement to the process's stdin (a process that died already fails
        its call when the channel closes)."""
        stream = self.process.stdin
        if stream is None:
            return
        with contextlib.suppress(ConnectionError):
            stream.write(spec.to_json().encode())
            await stream.drain()
            stream.close()
            await stream.wait_closed()

    async def stop(self) -> None:
        """End the call and everything it started, and reap it.

        In its own PID namespace, SIGTERM to the waiter outside it takes the namespace down
        (every process in it killed and reaped) before the waiter exits; otherwise the process
        group is killed. A waiter that does not answer is killed with its group (the init of
        the namespace follows it: PR_SET_PDEATHSIG).
        """
        if self.process.returncode is None and "pid_namespace" in self.layers:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_SECONDS):
                    await self.process.wait()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()


def _failure(message: dict[str, Any]) -> ToolFailedError:
    """The tool's exception and its causes, as the process reported them, scrubbed."""
    text = f"{message.get('type', 'Error')}: {message.get('message', '')}"
    causes = message.get("causes")
    for cause in causes[: channel.MAX_CAUSES] if isinstance(causes, list) else ():
        if isinstance(cause, dict):
            text += f" (caused by {cause.get('type', 'Error')}: {cause.get('message', '')})"
    return ToolFailedError(redaction.registry.clip(text, MAX_ERROR))


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
    """The tail of what the tool process printed, scrubbed, into the daemon's log."""
    reach = OUTPUT_TAIL + redaction.registry.longest  # a value cut by the tail's start is dropped
    with contextlib.suppress(OSError), path.open("rb") as printed:
        printed.seek(max(0, printed.seek(0, os.SEEK_END) - 4 * reach))
        raw = printed.read().decode("utf-8", "replace")
        text = redaction.registry.scrub_tail(raw[-reach:], OUTPUT_TAIL).strip()
        if text:
            log.info(
                "tool %s of task %d printed: %s",
                binding.tool,
                binding.task_id,
                text,
                extra={"event": "isolation.tool_output", "task_id": binding.task_id},
            )


@functools.cache
def _scratch_root() -> Path:
    """This process's directory of call directories (hidden from every call: a call sees its
    own scratch directory only), removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="appliance-tools-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def private_paths(
    config: settings.Settings, config_file: Path | None, environ: Mapping[str, str]
) -> tuple[Path, ...]:
    """What of the daemon's own a tool must not see, whatever the flags it started with: the
    config file it really read (`config_file`), the one `$APPLIANCE_CONFIG` or the default
    names, the state directory, the vault key, every path its settings name but the watched
    folders, and the database client's credential files."""
    found = [
        config.state_dir,
        config.vault.key_file or config.state_dir / "vault.key",
        settings.config_path(None, environ)[0],
        *([config_file] if config_file is not None else []),
        *_paths_in(config.model_dump(exclude={"watches"})),
        *(Path(environ[name]) for name in PG_FILE_VARIABLES if environ.get(name)),
    ]
    home = environ.get("HOME")
    if home and Path(home).is_absolute():
        found.extend(Path(home) / name for name in PG_HOME_FILES)
    return tuple(dict.fromkeys(path.absolute() for path in found))


def _paths_in(value: Any) -> list[Path]:
    if isinstance(value, Path):
        return [value]
    if isinstance(value, Mapping):
        return [path for item in value.values() for path in _paths_in(item)]
    if isinstance(value, list | tuple):
        return [path for item in value for path in _paths_in(item)]
    return []
