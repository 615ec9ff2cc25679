"""A process that holds a node name, for tests that kill, freeze or outlive the holder.

    python -m tests.support.node_holder DSN NODE LEASE_SECONDS

Prints `held <pid>` on stdout once it holds the name, then waits. SIGTERM gives the name up and
exits 0; losing the name to another process exits 78 with the reason on stderr (as the daemon).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from appliance.engine import nodes


async def hold(dsn: str, node: str, lease_seconds: float) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with nodes.held(dsn, node, lease_seconds=lease_seconds) as held:
        sys.stdout.write(f"held {held.pid}\n")
        sys.stdout.flush()
        lost = asyncio.create_task(held.lost.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        stopped.cancel()
        if held.loss is not None:
            sys.stderr.write(f"{held.loss}\n")
            return held.loss.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(hold(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
