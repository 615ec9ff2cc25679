"""Ingress benchmark: signed webhook deliveries to a durable 202, over a real listener.

    python bench/ingress.py [--deliveries 3000] [--concurrency 32] [--idle 300]

Serves the ingress endpoint on 127.0.0.1 (the public port's server, caps and all) against a
fresh database (DATABASE_URL, else the server on localhost:5432, else a throwaway cluster;
dropped after), and sends Standard Webhooks deliveries from `--concurrency` clients sharing one
aiohttp session (from one address: its per-address connection cap is lifted). Each 202 means the
task and its delivery row are committed. The same run is repeated with verification skipped
(`skip_verification_for_bench`), to show what HMAC verification costs, and once more verified
but with one delivery per transaction (no grouping of the deliveries that arrive together), to
show what grouping buys: every task notifies the workers, and Postgres serialises the commits of
notifying transactions, WAL flush included. Last, `--idle` deliveries one at a time give the
latency of a lone delivery. Each phase starts with a short warm-up that is not counted. The
clients run in this process, on the same cores as the server and Postgres. The last line is one
JSON object with every figure.

Absolute rates move from machine to machine and with the machine's other load, so the run first
measures a floor: the same deliveries, at the same concurrency, answered by a bare aiohttp
handler that commits one row per request (`floor_per_s`) and nothing else (no signature, no
task, no caps). The figure to compare across machines is `ratio_to_floor`: verified deliveries
per second over the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import settings  # noqa: E402
from appliance.db import pool as dbpool  # noqa: E402
from appliance.db import tenants as dbtenants  # noqa: E402
from appliance.engine import context, registry  # noqa: E402
from appliance.ingress import intake as ingress_intake  # noqa: E402
from appliance.ingress import public, signatures, webhooks  # noqa: E402
from tests.support import postgres  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the spec's test secret
WORKFLOW = "bench.hook"
WARMUP = 200
# (label, verify signatures, commit deliveries that arrive together in one transaction)
PHASES = (("verified", True, True), ("unverified", False, True), ("one_per_commit", True, False))


def _registry() -> registry.Registry:
    reg = registry.Registry()

    @reg.workflow(WORKFLOW)
    async def hook(ctx: context.TaskContext, task_input: Any) -> Any:
        return None

    return reg


def _body(n: int) -> bytes:
    """A small event, like a typical webhook (about 250 bytes)."""
    return json.dumps(
        {
            "type": "invoice.paid",
            "timestamp": "2026-01-01T00:00:00Z",
            "data": {"invoice": f"in_{n:08d}", "customer": "cus_42", "amount": 1999},
            "padding": "x" * 120,
        }
    ).encode()


async def _drive(url: str, prefix: str, count: int, concurrency: int) -> tuple[float, list[float]]:
    """Send `count` signed deliveries with `concurrency` in flight; (seconds, latencies in ms)."""
    latencies: list[float] = []
    queue = iter(range(count))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            for n in queue:
                body = _body(n)
                delivery_id = f"msg_{prefix}_{n}"
                stamp = int(time.time())
                headers = {
                    "content-type": "application/json",
                    "webhook-id": delivery_id,
                    "webhook-timestamp": str(stamp),
                    "webhook-signature": signatures.sign_standard(SECRET, delivery_id, stamp, body),
                }
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 202:
                        raise RuntimeError(f"delivery {n}: {response.status}")
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies


async def _phase(
    pool: dbpool.Pool, *, verify: bool, grouped: bool, label: str, count: int, concurrency: int
) -> tuple[float, list[float]]:
    config = settings.IngressSettings(
        enabled=True,
        max_connections_per_address=1024,
        sources=(
            settings.Source(
                tenant="default",
                name="bench",
                secrets=(SECRET,),
                workflow=WORKFLOW,
                rate_limit_per_minute=10_000_000,
            ),
        ),
    )
    intake = (
        ingress_intake.DurableIntake(pool, _registry(), settings.EngineSettings())
        if grouped
        else ingress_intake.DurableIntake(
            pool, _registry(), settings.EngineSettings(), committers=concurrency, group_size=1
        )
    )
    endpoint = webhooks.Endpoint(config, intake, skip_verification_for_bench=not verify)
    listener = await public.listen(
        endpoint, host="127.0.0.1", port=0, limits=public.Limits.of(config)
    )
    try:
        url = f"http://127.0.0.1:{listener.port}/hooks/default/bench"
        await _drive(url, f"{label}warm", WARMUP, concurrency)
        return await _drive(url, label, count, concurrency)
    finally:
        await listener.close()
        await intake.close()


async def _floor(pool: dbpool.Pool, count: int, concurrency: int) -> tuple[float, list[float]]:
    """The same deliveries answered 202 by a bare aiohttp handler once it committed the body
    as one row: what serving and committing alone cost on this machine now."""
    await pool.execute("CREATE TABLE bench_floor (id bigserial PRIMARY KEY, body bytea NOT NULL)")

    async def handle(request: web.Request) -> web.Response:
        await pool.execute("INSERT INTO bench_floor (body) VALUES ($1)", await request.read())
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/hooks/{tenant}/{source}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks/default/bench"
        await _drive(url, "floorwarm", WARMUP, concurrency)
        return await _drive(url, "floor", count, concurrency)
    finally:
        await runner.cleanup()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--idle", type=int, default=300, help="deliveries sent one at a time")
    parser.add_argument("--pool", type=int, default=16, help="most Postgres connections")
    args = parser.parse_args()
    runs = [(*phase, args.deliveries, args.concurrency) for phase in PHASES]
    runs.append(("idle", True, True, args.idle, 1))
    figures: dict[str, Any] = {"deliveries": args.deliveries, "concurrency": args.concurrency}
    async with postgres.server() as server, postgres.fresh_database(server, "ingress") as dsn:
        pool = await dbpool.create_pool(dsn, min_size=args.pool, max_size=args.pool)
        await dbtenants.create_tenant(pool, tenant_id="default", name="default", actor="bench")
        elapsed, latencies = await _floor(pool, args.deliveries, args.concurrency)
        floor = args.deliveries / elapsed
        print(
            f"floor: {floor:,.0f} rows/s committed by a bare aiohttp handler, "
            f"p50 {_percentile(latencies, 0.5):.2f} ms, p99 {_percentile(latencies, 0.99):.2f} ms"
        )
        figures["floor_per_s"] = round(floor, 1)
        figures["floor_p50_ms"] = round(_percentile(latencies, 0.5), 3)
        figures["floor_p99_ms"] = round(_percentile(latencies, 0.99), 3)
        for label, verify, grouped, count, concurrency in runs:
            elapsed, latencies = await _phase(
                pool,
                verify=verify,
                grouped=grouped,
                label=label,
                count=count,
                concurrency=concurrency,
            )
            rate = count / elapsed
            p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
            print(
                f"{label}: {rate:,.0f} deliveries/s to a durable 202, "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({count} at concurrency {concurrency})"
            )
            figures[f"{label}_per_s"] = round(rate, 1)
            figures[f"{label}_p50_ms"] = round(p50, 3)
            figures[f"{label}_p99_ms"] = round(p99, 3)
            figures[f"{label}_mean_ms"] = round(statistics.fmean(latencies), 3)
        tasks = await pool.fetchval("SELECT count(*) FROM appliance.tasks")
        deliveries = await pool.fetchval("SELECT count(*) FROM appliance.webhook_deliveries")
        await pool.close()
    expected = sum(count + WARMUP for *_, count, _ in runs)
    if tasks != expected or deliveries != expected:
        raise RuntimeError(f"{tasks} tasks, {deliveries} delivery rows; expected {expected}")
    figures["ratio_to_floor"] = round(figures["verified_per_s"] / figures["floor_per_s"], 3)
    print(f"verified / floor: {figures['ratio_to_floor']:.2f}")
    figures["p50_ms"] = figures["verified_p50_ms"]
    figures["p99_ms"] = figures["verified_p99_ms"]
    figures["tasks_committed"] = tasks
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
