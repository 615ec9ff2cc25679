"""Isolation benchmark: what running a tool call in its own confined process costs.

    python bench/isolation.py [--calls N]

Runs the same trivial tool call N times (a) in the control plane (the baseline: a coroutine
call) and (b) as the daemon runs every tool: `Supervisor.run`, which starts
`python -I -B -m appliance.isolation.child`, confines it (namespaces, Landlock, seccomp, rlimits),
imports the tool's module, serves the call over the socket pair and reaps the process. Prints
the latency of each (p50, p95), the overhead per call, and the confinement layers applied.
The last line is one JSON object with every figure.

Uses DATABASE_URL, else the server on localhost:5432, else a throwaway cluster (the
supervisor needs a pool for the requests a tool may make; this tool makes none).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import leases, settings  # noqa: E402
from appliance.agents import tools  # noqa: E402
from appliance.db import pool as dbpool  # noqa: E402
from appliance.isolation import confinement, supervisor  # noqa: E402
from tests.support import postgres  # noqa: E402
from tests.support import tools as support_tools  # noqa: E402


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _measure(calls: int) -> dict[str, Any]:
    async with postgres.server() as server, postgres.fresh_database(server, "isolation") as dsn:
        pool = await dbpool.create_pool(dsn, min_size=1, max_size=2)
        try:
            config = settings.IsolationSettings()
            grants = leases.Leases(pool, None, ttl_seconds=config.lease_ttl_seconds)
            isolation = supervisor.Supervisor(pool, grants, config)
            binding = leases.Binding(
                "default", 1, "bench", "tool:0:lookup_order", "lookup_order", (), "bench", 1
            )
            target = supervisor.Target.of(support_tools.lookup_order)
            arguments = {"order": "42"}
            call = tools.Call("default", 1, None, "bench")
            inline: list[float] = []
            isolated: list[float] = []
            for _ in range(calls):
                started = time.perf_counter()
                await support_tools.lookup_order(call, arguments)
                inline.append((time.perf_counter() - started) * 1000)
            for _ in range(calls):
                started = time.perf_counter()
                result = await isolation.run(binding, target, arguments, "bench")
                isolated.append((time.perf_counter() - started) * 1000)
                assert result == {"order": "42", "status": "shipped"}, result
        finally:
            await pool.close()
    found = confinement.capabilities()
    return {
        "calls": calls,
        "inline_p50_ms": round(statistics.median(inline), 4),
        "isolated_p50_ms": round(statistics.median(isolated), 1),
        "isolated_p95_ms": round(_percentile(isolated, 0.95), 1),
        "overhead_p50_ms": round(statistics.median(isolated) - statistics.median(inline), 1),
        "layers": [layer for layer in confinement.LAYERS if found.get(layer)],
        "landlock_abi": found.get("landlock_abi"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    figures = asyncio.run(_measure(args.calls))
    print(f"in the control plane: p50 {figures['inline_p50_ms']} ms (baseline)")
    print(
        f"isolated process:     p50 {figures['isolated_p50_ms']} ms, "
        f"p95 {figures['isolated_p95_ms']} ms"
    )
    print(f"overhead per call:    {figures['overhead_p50_ms']} ms (p50)")
    layers = ", ".join(figures["layers"])
    print(f"layers applied:       {layers} (Landlock ABI {figures['landlock_abi']})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
