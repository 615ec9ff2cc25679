"""Who may read `/metrics`, asked from inside a network namespace whose `tailscale0` holds the
addresses of the stand-in tailnet's nodes (tests/support/bin/tailscale: `laptop`, a person's,
and `ci-runner`, tagged `tag:ci`), so the exporter sees a real peer address and asks the
stand-in CLI who it is.

Run inside the namespace: `python -m tests.support.readers CASES_JSON`, where each case is
`{"address", "readers", "tailscaled"}` (`tailscaled`: the stand-in's state, Running or
DaemonDown). For each, an exporter with those readers serves /metrics on the address, and a
client bound to the same address GETs it; one JSON line lists `{"status", "body"}` per case.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from appliance import metrics, settings
from appliance.mesh import tailscale

STAND_IN = Path(__file__).resolve().parent / "bin" / "tailscale"
LAPTOP = "100.103.182.58"  # laptop.tail1fb5f0.ts.net, user@example.com
CI_RUNNER = "100.90.1.7"  # ci-runner.tail1fb5f0.ts.net, tag:ci
NOBODY = "100.100.1.2"  # no node of the stand-in's tailnet has it
TIMEOUT_SECONDS = 20.0


async def ask(case: dict[str, Any]) -> dict[str, Any]:
    """Serve an exporter with the case's readers on its address and GET /metrics from there."""
    os.environ["FAKE_TAILSCALE_STATE"] = case.get("tailscaled", "Running")
    config = settings.MetricsSettings(readers=tuple(case["readers"]))
    mesh = tailscale.Tailscale(str(STAND_IN), timeout=TIMEOUT_SECONDS / 2)
    app = web.Application()
    app.add_routes(metrics.routes(metrics.Exporter(config, mesh=mesh)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, case["address"], 0).start()
        url = f"http://{case['address']}:{runner.addresses[0][1]}/metrics"
        connector = aiohttp.TCPConnector(local_addr=(case["address"], 0))
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(url) as response,
        ):
            return {"status": response.status, "body": await response.text()}
    finally:
        await runner.cleanup()


async def _main(cases: list[dict[str, Any]]) -> None:
    answers = [await ask(case) for case in cases]
    print(json.dumps(answers), flush=True)


if __name__ == "__main__":
    asyncio.run(_main(json.loads(sys.argv[1])))
