"""bench/peers.py, the engine's adapter of the peers harness, runs a small workload W on a
fresh, unmigrated database through the harness's own drivers (no peer's package needed).

The harness lives beside the project (`../shared/bench/peers`, or the folder PEERS_HARNESS
names); without it these tests are skipped."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio

from appliance.db import pool as dbpool
from tests.support import postgres

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(os.environ.get("PEERS_HARNESS", ROOT.parent / "shared" / "bench" / "peers"))


@pytest_asyncio.fixture(loop_scope="session")
async def harness(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """durable_bench loaded as the harness loads itself, with bench.peers imported against it."""
    path = HARNESS / "durable_bench.py"
    if not path.is_file():
        pytest.skip(f"the peers harness is not at {HARNESS} (set PEERS_HARNESS)")
    spec = importlib.util.spec_from_file_location("durable_bench", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "durable_bench", module)
    spec.loader.exec_module(module)
    monkeypatch.delitem(sys.modules, "bench.peers", raising=False)
    module.TRACKER.bind()
    return module


@pytest_asyncio.fixture(loop_scope="session")
async def blank_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A database nothing migrated yet, as the harness hands each run."""
    async with postgres.fresh_database(server_dsn, "peers", migrated=False) as dsn:
        yield dsn


async def test_workload_w_runs_on_a_fresh_database(harness: ModuleType, blank_dsn: str) -> None:
    """Setup migrates; a batch and a lone workflow end with three checkpoints each."""
    peers: Any = importlib.import_module("bench.peers")
    assert issubclass(peers.Engine, harness.Adapter)
    engine = peers.Engine(blank_dsn, 2, producers=2)
    await engine.setup()
    try:
        batch = await engine.run_batch(6, "t")
        steps, done = await engine.run_one("lone")
        lone = await engine.enqueue("again")
        await harness.poll_until(lambda: engine.terminal_by_keys(["again", "t-0"]), 0.01, 30)
        assert await engine.all_terminal([lone])
    finally:
        await engine.teardown()
    assert batch["step_rows"] == 18
    assert 0 < steps <= done


async def test_a_second_process_runs_what_the_first_left(
    harness: ModuleType, blank_dsn: str
) -> None:
    """With `resume`, setup keeps the schema and data and runs the task left queued."""
    peers: Any = importlib.import_module("bench.peers")
    first = peers.Engine(blank_dsn, 2)
    await first.setup()
    await first.worker.stop()
    left = await first.enqueue("left")
    await first.teardown()
    assert not await _terminal(peers, blank_dsn, ["left"])
    second = peers.Engine(blank_dsn, 2, resume=True)
    await second.setup()
    try:
        await harness.poll_until(lambda: second.terminal_by_keys(["left"]), 0.01, 30)
        assert await second.verify([left]) == {"step_rows": 3}
    finally:
        await second.teardown()


async def _terminal(peers: Any, dsn: str, keys: list[str]) -> bool:
    probe = peers.Engine(dsn, 1, resume=True)
    probe.mon = await dbpool.connect(dsn)
    try:
        done: bool = await probe.terminal_by_keys(keys)
    finally:
        await probe.mon.close()
    return done
