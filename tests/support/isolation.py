"""The tool actions a daemon builds (`daemon._tool_actions`), for tests that run agent tasks;
and a driver that runs one tool call through a real `Supervisor` inside a network namespace.

`python -m tests.support.isolation open-doors MARKER [--timeout S]` runs the tool
`tests.support.tools.open_doors` (every way to take connections from outside, and processes
named MARKER left behind) with a gate on 127.0.0.1: once the tool reached its gate, the driver
prints `{"holding": REPORT, "gate": PORT}` and waits for a line on stdin before it lets the call
end; then it prints `{"result": ...}` (or `{"error": ...}`) and exits, after the supervisor is
done with the call. With --timeout the gate never opens: the call runs into its time limit.
The tool makes no request of the control plane, so the driver's pool never connects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance import errors, leases, settings, vault
from appliance.agents import actions
from appliance.db import pool as dbpool
from appliance.isolation import supervisor

UNUSED_DSN = "postgresql://unused@127.0.0.1:1/unused"


def tool_actions(
    db: dbpool.Pool,
    *,
    opened: vault.Vault | None = None,
    hidden_paths: tuple[Path, ...] = (),
    approvals: dict[str, Any] | None = None,
    **isolation: Any,
) -> actions.Actions:
    """Policy, approvals, audit and one confined process per call, as the daemon wires them."""
    config = settings.IsolationSettings.model_validate(isolation)
    grants = leases.Leases(db, opened, ttl_seconds=config.lease_ttl_seconds)
    return actions.Actions(
        db,
        supervisor.Supervisor(db, grants, config, hidden_paths=hidden_paths),
        settings.ApprovalSettings.model_validate(approvals or {}),
    )


def marked(marker: str) -> list[int]:
    """The processes of the host whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def _open_doors(marker: str, timeout: float | None) -> None:
    from tests.support import tools

    loop = asyncio.get_running_loop()

    async def gate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _say({"holding": json.loads(await reader.readline()), "gate": port})
        if timeout is None:
            await loop.run_in_executor(None, sys.stdin.readline)
            writer.write(b"go\n")
            await writer.drain()
        else:
            await asyncio.sleep(timeout * 10)
        writer.close()

    server = await asyncio.start_server(gate, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    pool = await dbpool.create_pool(UNUSED_DSN, min_size=0, max_size=1)
    try:
        config = settings.IsolationSettings(
            egress_ports=(port,), call_timeout_seconds=timeout or 120.0
        )
        runner = supervisor.Supervisor(pool, leases.Leases(pool, None), config)
        binding = leases.Binding(
            "default", 1, "test", "tool:0:open_doors", "open_doors", (), "driver", 1
        )
        target = supervisor.Target.of(tools.open_doors)
        try:
            result = await runner.run(binding, target, {"marker": marker, "gate": port}, "k")
            _say({"result": result})
        except errors.ApplianceError as exc:
            _say({"error": str(exc)})
    finally:
        server.close()
        await pool.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.isolation")
    commands = parser.add_subparsers(dest="command", required=True)
    doors = commands.add_parser("open-doors", help="run the tool open_doors through a gate")
    doors.add_argument("marker")
    doors.add_argument("--timeout", type=float)
    arguments = parser.parse_args(argv)
    asyncio.run(_open_doors(arguments.marker, arguments.timeout))


if __name__ == "__main__":
    main()
