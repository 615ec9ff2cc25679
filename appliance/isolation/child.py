"""A tool process: `python -I -B -m appliance.isolation.child FD`, its confinement on stdin.

Started by the control plane (`supervisor`) for one tool call, with a clean environment (no
database DSN, no master key, no other call's secrets) and one end of a socket pair as its only
link to the control plane. The confinement comes as JSON on stdin, not on the command line, so
no process list shows what is hidden. Before any tool code is imported the process asks the
kernel to kill it when its parent dies and confines itself (`confinement.confine`: namespaces
that hide the daemon's files and processes, Landlock, seccomp, resource limits); on Linux what
comes back from that is the first process of the call's own PID namespace. It imports the
module of the function it is to run (a tool, or an isolated step of a workflow), runs the one
call it is given, sends the result, and exits, which ends everything the call started.
Whatever the tool needs from outside goes through `ControlPlane`, which checks every request.
A tool's exception goes back as its type and text, with those of its causes; its traceback
goes to stderr, which the control plane logs, scrubbed, like anything else the process prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import socket
import sys
import traceback
from typing import Any

from appliance import errors
from appliance.agents import tools
from appliance.isolation import channel, confinement, namespaces

_REMOTE_ERRORS: dict[str, type[errors.ApplianceError]] = {
    "NotAllowedError": errors.NotAllowedError,
    "LeaseRefusedError": errors.NotAllowedError,
    "NotFoundError": errors.NotFoundError,
    "InputError": errors.InputError,
}


class ControlPlane:
    """The tool process's side of the channel: every request is checked by the control plane."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def request(self, op: str, **fields: Any) -> Any:
        """Send one request and wait for its answer; a refusal raises the matching error."""
        await channel.send(self._writer, {"op": op, **fields})
        reply = await channel.receive(self._reader)
        if reply["op"] == "error":
            kind = _REMOTE_ERRORS.get(str(reply.get("type")), errors.ApplianceError)
            raise kind(str(reply.get("message", "refused")))
        return reply.get("value")

    async def lease(self, name: str, *, integration: str | None = None) -> str:
        """A lease id for one secret of the tool's integration (single use, short lived)."""
        return str(await self.request("lease", name=name, integration=integration))

    async def redeem(self, lease_id: str) -> str:
        """The leased value, once."""
        return str(await self.request("redeem", lease_id=lease_id))

    async def secret(self, name: str, *, integration: str | None = None) -> str:
        """Lease and redeem in one: the value of one secret for this call."""
        return await self.redeem(await self.lease(name, integration=integration))

    async def task(self, task_id: int) -> dict[str, Any]:
        """A task of the call's own tenant."""
        value = await self.request("task", task_id=task_id)
        return dict(value) if isinstance(value, dict) else {}


def _causes(exc: BaseException) -> list[dict[str, str]]:
    """The exceptions `exc` was raised from or while handling, nearest first."""
    found: list[dict[str, str]] = []
    seen = {id(exc)}
    current = exc.__cause__ or exc.__context__
    while current is not None and id(current) not in seen and len(found) < channel.MAX_CAUSES:
        seen.add(id(current))
        found.append({"type": type(current).__name__, "message": str(current)})
        current = current.__cause__ or current.__context__
    return found


async def _serve(sock: socket.socket, applied: confinement.Applied) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    await channel.send(
        writer, {"op": "ready", "layers": list(applied.layers), "skipped": list(applied.skipped)}
    )
    call = await channel.receive(reader)
    sys.path[:0] = [p for p in call.get("paths", []) if isinstance(p, str) and p not in sys.path]
    try:
        fn = getattr(importlib.import_module(str(call["module"])), str(call["name"]))
        context = tools.Call(
            tenant_id=str(call["tenant_id"]),
            task_id=int(call["task_id"]),
            services=ControlPlane(reader, writer),
            idempotency_key=str(call["idempotency_key"]),
        )
        value = fn(context, call.get("argument"))
        if inspect.isawaitable(value):
            value = await value
        await channel.send(writer, {"op": "result", "value": value})
    except Exception as exc:  # noqa: BLE001 - the tool's failure is the call's result
        traceback.print_exception(exc, file=sys.stderr)
        error = {"type": type(exc).__name__, "message": str(exc), "causes": _causes(exc)}
        await channel.send(writer, {"op": "error", **error})
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return 0


def main(argv: list[str]) -> int:
    """Confine, then serve the one call."""
    namespaces.die_with_parent()
    fd = int(argv[1])
    spec = confinement.Confinement.from_json(sys.stdin.read())
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    applied = confinement.confine(spec)
    return asyncio.run(_serve(socket.socket(fileno=fd), applied))


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not waiting for threads the tool left running
