"""Who may read `/metrics` on the tailnet: the devices and tags named in `metrics.readers`,
known by `tailscale whois` on the real peer address of the connection; loopback always.

The peers connect from inside a network namespace holding the stand-in tailnet's addresses
(tests/support/readers.py), so the exporter sees them as it would on a box's tailscale0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from appliance import metrics, settings
from tests.support import netns, readers, scrape

pytestmark = pytest.mark.timeout(120)

LAPTOP_NAME = "laptop.tail1fb5f0.ts.net"
DOWN = "DaemonDown"  # the stand-in's state for a tailscaled that is not running
CASES: dict[str, dict[str, Any]] = {
    "unnamed person": {"address": readers.LAPTOP, "readers": ["tag:prometheus"]},
    "named tag": {"address": readers.CI_RUNNER, "readers": ["tag:prometheus", "tag:ci"]},
    "named device": {"address": readers.LAPTOP, "readers": [LAPTOP_NAME.upper() + "."]},
    "unnamed tag": {"address": readers.CI_RUNNER, "readers": [LAPTOP_NAME]},
    "not a node": {"address": readers.NOBODY, "readers": ["tag:ci"]},
    "nobody named": {"address": readers.CI_RUNNER, "readers": [], "tailscaled": DOWN},
    "tailscaled down": {"address": readers.CI_RUNNER, "readers": ["tag:ci"], "tailscaled": DOWN},
}  # fmt: skip


@pytest.fixture(scope="module")
def answers() -> dict[str, dict[str, Any]]:
    """Each case's answer, asked from inside one namespace holding every address."""
    try:
        with netns.namespace(f"{readers.NOBODY}/24") as created:
            for address in (readers.LAPTOP, readers.CI_RUNNER):
                netns.ip("-n", created.name, "addr", "add", f"{address}/32", "dev", "tailscale0")
            result = subprocess.run(
                created.command(
                    sys.executable, "-m", "tests.support.readers", json.dumps(list(CASES.values()))
                ),
                capture_output=True,
                text=True,
                timeout=netns.PROBE_SECONDS,
                env=netns.environment(),
                cwd=netns.ROOT,
                check=False,
            )
    except netns.NamespaceUnavailableError as exc:
        pytest.skip(str(exc))
    assert result.returncode == 0, result.stderr
    answered: list[dict[str, Any]] = json.loads(result.stdout)
    return dict(zip(CASES, answered, strict=True))


class TestTailnetReaders:
    def test_a_person_not_named_is_refused_with_who_and_the_setting(
        self, answers: dict[str, dict[str, Any]]
    ) -> None:
        """403 naming the node, its login and the setting that would let it read."""
        answer = answers["unnamed person"]
        assert answer["status"] == 403
        assert f"{LAPTOP_NAME} (user@example.com)" in answer["body"]
        assert "metrics.readers" in answer["body"]
        assert "appliance_" not in answer["body"]

    def test_a_device_with_a_named_tag_reads(self, answers: dict[str, dict[str, Any]]) -> None:
        """A tagged Prometheus server (tag:ci here) gets the page."""
        answer = answers["named tag"]
        assert answer["status"] == 200
        assert "appliance_postgres_up" in answer["body"]

    def test_a_named_device_reads_whatever_the_case_and_final_dot(
        self, answers: dict[str, dict[str, Any]]
    ) -> None:
        """A MagicDNS name matches as DNS names do: case-insensitive, trailing dot or not."""
        assert answers["named device"]["status"] == 200

    def test_a_tagged_device_not_named_is_refused_with_its_tags(
        self, answers: dict[str, dict[str, Any]]
    ) -> None:
        """A tagged device whose name and tags are not in the setting is refused."""
        answer = answers["unnamed tag"]
        assert answer["status"] == 403
        assert "ci-runner.tail1fb5f0.ts.net (tag:ci)" in answer["body"]

    def test_an_address_of_no_tailnet_node_is_refused(
        self, answers: dict[str, dict[str, Any]]
    ) -> None:
        """whois finds no node: 403."""
        answer = answers["not a node"]
        assert answer["status"] == 403
        assert "no tailnet node has that address" in answer["body"]

    def test_without_readers_no_peer_is_asked_about(
        self, answers: dict[str, dict[str, Any]]
    ) -> None:
        """With nobody named, a tailnet peer is refused before any whois (tailscaled is down
        in this case: asking would have been a 503)."""
        answer = answers["nobody named"]
        assert answer["status"] == 403
        assert "metrics.readers names nobody" in answer["body"]

    def test_tailscaled_down_is_a_503_to_retry(self, answers: dict[str, dict[str, Any]]) -> None:
        """When whois cannot answer, the peer is told to try again, not refused for good."""
        answer = answers["tailscaled down"]
        assert answer["status"] == 503
        assert "try again" in answer["body"]


class TestLoopback:
    @pytest.mark.asyncio(loop_scope="session")
    async def test_loopback_reads_without_being_named(self) -> None:
        """127.0.0.1 reads with no readers configured and no tailscale at all."""
        exporter = metrics.Exporter(settings.MetricsSettings(), mesh=None)
        async with scrape.serving(exporter) as url:
            page = await scrape.scrape(url)
        assert page.status == 200
        assert page.value("appliance_postgres_up") == 0


class TestReadersSetting:
    @pytest.mark.parametrize("entry", ["tag:prometheus", "prom.tail1234.ts.net", "PROM.ts.net."])
    def test_tags_and_magicdns_names_are_accepted(self, entry: str) -> None:
        """A tag or a dotted device name is a reader."""
        assert settings.MetricsSettings(readers=(entry,)).readers == (entry,)

    @pytest.mark.parametrize("entry", ["prometheus", "user@example.com", "tag:", "100.90.1.7"])
    def test_anything_else_is_a_config_error(self, entry: str) -> None:
        """A bare host name, a login or a malformed tag is refused at load, naming the forms."""
        with pytest.raises(ValueError, match="neither a tag"):
            settings.MetricsSettings(readers=(entry,))
