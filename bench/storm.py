"""Kill storm: how many `kill -9` of working daemons a queue of tasks survives, and how many of
its tasks fail for it (the durability promise: none).

    python bench/storm.py [--tasks 300] [--kills 50] [--daemons 4] [--seconds 240]

Runs `tests.support.storm` on a fresh database (DATABASE_URL, else the server on
localhost:5432, else a throwaway cluster; dropped after): `--daemons` daemons work through
`--tasks` one-step tasks (0.3-1.5 s each, one attempt allowed each) while, about once a
second, one daemon that holds running tasks is killed with SIGKILL and started again under its
node name, until `--kills` kills, `--seconds` of storm, or the queue is done. The last line is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.db import pool as dbpool  # noqa: E402
from appliance.db import tenants as dbtenants  # noqa: E402
from tests.support import postgres, storm  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--daemons", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=240.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="storm"))
    try:
        async with postgres.server() as server, postgres.fresh_database(server, "storm") as dsn:
            pool = await dbpool.create_pool(dsn, min_size=1, max_size=2)
            await dbtenants.create_tenant(pool, tenant_id="default", name="default", actor="bench")
            await pool.close()
            result = await storm.run(
                dsn,
                folder,
                tasks=args.tasks,
                slots=args.daemons,
                max_kills=args.kills,
                storm_seconds=args.seconds,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    figures = result.figures()
    print(
        f"storm: {result.kills} kill -9 of working daemons in {result.seconds:.0f} s, "
        f"{sum(result.lost_attempts.values())} attempts lost with their daemon "
        f"({result.most_crashes} at most for one task); {result.tasks} tasks: "
        f"{figures['succeeded']} succeeded, {figures['failed']} failed"
    )
    for failure in result.failures:
        print(f"  {failure}")
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
