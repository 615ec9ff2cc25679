"""Runs the installed `appliance` command as a subprocess, the way an operator would.

`running(...)` starts `appliance --config FILE run` with settings given as environment
overrides, reads its stderr (JSON log lines) in a background task, waits for the
`daemon.ready` line and exposes the health port. A daemon still running when the block ends is
killed with SIGKILL; its log is kept in `<folder>/<name>.log` either way. `cli(...)` runs one
command and returns its exit code and output.

Waits go by the daemon's own log lines and by conditions polled with `wait_until`, never by
sleeping: a timeout fails with the tail of every daemon's log, and a daemon that died early
fails the wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import resource
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_MODULE = "tests.support.workflows"
READY_SECONDS = 30.0
WAIT_SECONDS = 20.0
POLL_SECONDS = 0.01
EXIT_SECONDS = 20.0
LOG_TAIL_LINES = 40
_LINE_LIMIT = 1 << 20


def command() -> list[str]:
    """The installed console script next to this interpreter (else `python -m appliance.cli`)."""
    script = Path(sys.executable).parent / "appliance"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "appliance.cli"]


def environment(
    dsn: str | None, folder: Path, overrides: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """This process's environment without any APPLIANCE_* variable, plus the test settings.

    `overrides` maps dotted keys (`engine.lease_seconds`) to values; non-strings are JSON.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("APPLIANCE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["APPLIANCE_STATE_DIR"] = str(folder / "state")
    env["APPLIANCE_ENGINE__WORKFLOW_MODULES"] = json.dumps([WORKFLOW_MODULE])
    if dsn is not None:
        env["APPLIANCE_DATABASE__URL"] = dsn
    for key, value in (overrides or {}).items():
        env[env_name(key)] = value if isinstance(value, str) else json.dumps(value)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` now (for settings that need a fixed port)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def env_name(key: str) -> str:
    """`engine.lease_seconds` -> `APPLIANCE_ENGINE__LEASE_SECONDS`."""
    return "APPLIANCE_" + "__".join(part.upper() for part in key.split("."))


def config_file(folder: Path) -> Path:
    """An empty config file (all defaults) in `folder`."""
    path = folder / "appliance.toml"
    if not path.exists():
        path.write_text("", encoding="utf-8")
    return path


def log_time(record: Mapping[str, Any]) -> dt.datetime:
    """When a log line was written."""
    return dt.datetime.fromisoformat(str(record["ts"]))


class Daemon:
    """One `appliance run` process and what it has logged so far."""

    def __init__(self, process: asyncio.subprocess.Process, name: str, log_path: Path) -> None:
        self.process = process
        self.name = name
        self.log_path = log_path
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.ready: dict[str, Any] = {}
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name=f"daemon.{name}.stderr")

    @property
    def health_port(self) -> int:
        return int(self.ready["health_port"])

    @property
    def ready_at(self) -> dt.datetime:
        return log_time(self.ready)

    @property
    def exited(self) -> bool:
        return self._reader.done() and self.process.returncode is not None

    async def _read(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        with self.log_path.open("a", encoding="utf-8") as log:
            async for raw in stream:
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                self.lines.append(line)
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        self.records.append(record)
                self._changed.set()
        await self.process.wait()
        self._changed.set()

    def events(self, event: str) -> list[dict[str, Any]]:
        """Every log record with this `event`, in order."""
        return [r for r in self.records if r.get("event") == event]

    def count(self, event: str) -> int:
        return len(self.events(event))

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        status = "running" if self.process.returncode is None else f"exit {self.process.returncode}"
        body = "\n".join(self.lines[-lines:])
        return f"--- {self.name} ({status}), last {lines} log lines:\n{body}"

    async def wait_for_log(self, event: str, *, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
        """The first record with this `event`, waiting for it if needed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = 0
        while True:
            for record in self.records[seen:]:
                if record.get("event") == event:
                    return record
            seen = len(self.records)
            if self._reader.done():
                raise AssertionError(f"{self.name} ended without logging {event}\n{self.tail()}")
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name} did not log {event} within {timeout}s\n{self.tail()}"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    async def get(self, path: str) -> tuple[int, Any]:
        """GET a health endpoint: (status, JSON body)."""
        url = f"http://127.0.0.1:{self.health_port}{path}"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url) as response,
        ):
            return response.status, await response.json()

    async def kill(self) -> None:
        """kill -9, and wait until it is gone."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        await self.wait_exit()

    async def terminate(self, *, timeout: float = EXIT_SECONDS) -> int:
        """SIGTERM; the exit code once it has exited (within `timeout`)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout=timeout)

    async def wait_exit(self, *, timeout: float = EXIT_SECONDS) -> int:
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
                await self._reader
        except TimeoutError:
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s\n{self.tail()}"
            ) from None
        return code


async def start(
    dsn: str | None,
    folder: Path,
    *,
    name: str = "daemon",
    node: str = "n1",
    overrides: Mapping[str, Any] | None = None,
    open_files: int | None = None,
) -> Daemon:
    """Start `appliance run` and wait for its `daemon.ready` line (no `dsn`: on the embedded
    cluster of its state directory).

    It logs JSON at INFO, takes a free health port, ships outbox events to
    `<folder>/events.jsonl`, and knows the workflows of `tests.support.workflows`.
    `open_files` sets its RLIMIT_NOFILE, soft and hard, before it starts.
    """
    daemon = await spawn(
        dsn, folder, name=name, node=node, overrides=overrides, open_files=open_files
    )
    try:
        daemon.ready = await daemon.wait_for_log("daemon.ready", timeout=READY_SECONDS)
    except BaseException:
        await daemon.kill()
        raise
    return daemon


async def spawn(
    dsn: str | None,
    folder: Path,
    *,
    name: str = "daemon",
    node: str = "n1",
    overrides: Mapping[str, Any] | None = None,
    open_files: int | None = None,
) -> Daemon:
    """Start `appliance run` as `start` does, without waiting for it to be ready."""
    settings: dict[str, Any] = {
        "engine.node_name": node,
        "health.port": 0,
        "health.host": "127.0.0.1",
        "log.format": "json",
        "log.level": "INFO",
        "outbox.sinks": ["file"],
        "outbox.file_path": str(folder / "events.jsonl"),
    }
    settings.update(overrides or {})
    process = await asyncio.create_subprocess_exec(
        *command(),
        "--config",
        str(config_file(folder)),
        "run",
        env=environment(dsn, folder, settings),
        cwd=str(folder),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        limit=_LINE_LIMIT,
        preexec_fn=None if open_files is None else functools.partial(_limit_files, open_files),
    )
    return Daemon(process, name, folder / f"{name}.log")


def _limit_files(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@contextlib.asynccontextmanager
async def running(
    dsn: str | None,
    folder: Path,
    *,
    name: str = "daemon",
    node: str = "n1",
    overrides: Mapping[str, Any] | None = None,
    open_files: int | None = None,
) -> AsyncIterator[Daemon]:
    """A ready daemon for the block; killed (SIGKILL) afterwards if it still runs."""
    daemon = await start(
        dsn, folder, name=name, node=node, overrides=overrides, open_files=open_files
    )
    try:
        yield daemon
    finally:
        await daemon.kill()


async def wait_until(
    condition: Callable[[], Awaitable[T | None]],
    *,
    what: str,
    daemons: Collection[Daemon] = (),
    timeout: float = WAIT_SECONDS,
) -> T:
    """Poll `condition` until it returns something other than None or False.

    Fails at once when one of `daemons` has exited, and with their log tails on timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await condition()
        if result is not None and result is not False:
            return result
        for daemon in daemons:
            if daemon.exited:
                raise AssertionError(f"waiting for {what}: {daemon.name} exited\n{daemon.tail()}")
        if loop.time() > deadline:
            tails = "\n".join(d.tail() for d in daemons)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")
        await asyncio.sleep(POLL_SECONDS)


@dataclasses.dataclass(frozen=True)
class Result:
    """What one `appliance` command did."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def cli(
    *args: str,
    folder: Path,
    dsn: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
    timeout: float = EXIT_SECONDS,
) -> Result:
    """Run `appliance --config FILE ARGS...`; `env` adds raw variables after the overrides."""
    environ = environment(dsn, folder, overrides)
    environ.update(env or {})
    process = await asyncio.create_subprocess_exec(
        *command(),
        "--config",
        str(config or config_file(folder)),
        *args,
        env=environ,
        cwd=str(folder),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"appliance {' '.join(args)} did not end within {timeout}s") from None
    code = await process.wait()
    return Result(code, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
