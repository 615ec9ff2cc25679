"""Tailnet peers identified with `tailscale whois` (the stand-in CLI of tests/support/bin),
each address asked about at most once per `ttl`, concurrent askers sharing one run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from appliance.mesh import peers, tailscale
from tests.support import readers

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cli_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in runs as a Running node and logs each run here."""
    log = tmp_path / "tailscale-argv.jsonl"
    monkeypatch.setenv("FAKE_TAILSCALE_STATE", "Running")
    monkeypatch.setenv("FAKE_TAILSCALE_LOG", str(log))
    return log


def whois_runs(log: Path) -> int:
    if not log.exists():
        return 0
    return sum(json.loads(line)["argv"][1] == "whois" for line in log.read_text().splitlines())


def known(clock: Clock, ttl: float = 30.0) -> peers.Peers:
    return peers.Peers(tailscale.Tailscale(str(readers.STAND_IN)), ttl=ttl, clock=clock)


class TestPeers:
    async def test_a_node_is_known_by_its_name_login_and_tags(self, cli_log: Path) -> None:
        """A person's node has a login; a tagged one has tags and no login."""
        found = known(Clock())
        laptop = await found.identify(readers.LAPTOP, 41000)
        runner = await found.identify(readers.CI_RUNNER, 41000)
        assert laptop is not None
        assert runner is not None
        assert (laptop.node_name, laptop.login_name, laptop.tags) == (
            "laptop.tail1fb5f0.ts.net",
            "user@example.com",
            (),
        )
        assert (runner.node_name, runner.login_name, runner.tags) == (
            "ci-runner.tail1fb5f0.ts.net",
            None,
            ("tag:ci",),
        )

    async def test_an_address_of_no_node_is_none_and_remembered(self, cli_log: Path) -> None:
        """No node: None, and the answer is kept like any other."""
        found = known(Clock())
        assert await found.identify(readers.NOBODY, 1) is None
        assert await found.identify(readers.NOBODY, 2) is None
        assert whois_runs(cli_log) == 1

    async def test_an_address_is_asked_about_again_after_the_ttl(self, cli_log: Path) -> None:
        """Within the ttl, other ports of the same address reuse the answer; after it, ask."""
        clock = Clock()
        found = known(clock, ttl=30)
        await found.identify(readers.LAPTOP, 41000)
        clock.now += 29
        await found.identify(readers.LAPTOP, 41001)
        assert whois_runs(cli_log) == 1
        clock.now += 2
        await found.identify(readers.LAPTOP, 41002)
        assert whois_runs(cli_log) == 2

    async def test_concurrent_askers_share_one_run(self, cli_log: Path) -> None:
        """Ten requests from one address at once run the CLI once."""
        found = known(Clock())
        answers = await asyncio.gather(
            *(found.identify(readers.CI_RUNNER, port) for port in range(40000, 40010))
        )
        assert {answer.node_name for answer in answers if answer} == {"ci-runner.tail1fb5f0.ts.net"}
        assert whois_runs(cli_log) == 1

    async def test_a_failure_to_ask_is_not_remembered(
        self, cli_log: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """tailscaled down raises; once it is back, the next request asks again."""
        found = known(Clock())
        monkeypatch.setenv("FAKE_TAILSCALE_STATE", "DaemonDown")
        with pytest.raises(tailscale.TailscaleUnavailableError):
            await found.identify(readers.LAPTOP, 41000)
        monkeypatch.setenv("FAKE_TAILSCALE_STATE", "Running")
        assert await found.identify(readers.LAPTOP, 41000) is not None
