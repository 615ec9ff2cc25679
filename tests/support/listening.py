"""A workflow that listens inside the daemon: the daemon's own exposure violation, on demand.

Workflows are registered code and run in the daemon's process, so a listener a workflow opens
is the daemon's own. `test.listen` binds `address`:`port` (TCP, or UDP with `udp`), holds the
socket until the file `gate` exists, then closes it and returns the port. The daemon imports
this module through `engine.workflow_modules`; the tests import it so the name is known.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from appliance.engine import context, registry
from tests.support import netns

LISTEN = "test.listen"
GATE_POLL_SECONDS = 0.01


async def _listen(address: str, port: int, udp: bool, gate: str) -> int:
    with netns.bind(address, port, udp=udp) as held:
        bound = int(held.getsockname()[1])
        path = Path(gate)
        # A file made by another process: nothing to await but the file system, so poll it.
        while not path.exists():  # noqa: ASYNC110
            await asyncio.sleep(GATE_POLL_SECONDS)
    return bound


@registry.workflow(LISTEN, max_attempts=1)
async def listen(ctx: context.TaskContext, task_input: Any) -> Any:
    """One step that listens until the gate file exists."""
    options: dict[str, Any] = task_input
    return await ctx.step(
        "listen",
        _listen,
        str(options["address"]),
        int(options["port"]),
        bool(options.get("udp", False)),
        str(options["gate"]),
    )
