"""`[[schedules]]` in the config: what loads, what is refused, and the README's example."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from appliance import demo, errors, settings
from appliance.agents import loop
from appliance.engine import registry
from appliance.ingress import schedules

README = Path(__file__).resolve().parents[2] / "README.md"
TOML_BLOCK = re.compile(r"```toml\n(.*?)```", re.S)


def schedules_of(data: dict[str, Any]) -> tuple[settings.Schedule, ...]:
    return settings.Settings.model_validate(data).schedules


def one(**values: Any) -> dict[str, Any]:
    return {"schedules": [{"name": "n", "cron": "@daily", "workflow": "w", **values}]}


class TestReadme:
    def test_the_readmes_schedules_load_and_fit_their_workflows(self) -> None:
        """Every README block with [[schedules]] loads, and each input fits its workflow."""
        blocks = [b for b in TOML_BLOCK.findall(README.read_text()) if "[[schedules]]" in b]
        assert blocks, "the README shows no [[schedules]] example"
        for block in blocks:
            for definition in schedules_of(tomllib.loads(block)):
                assert definition.workflow in (demo.WORKFLOW, loop.WORKFLOW)
                schedules.check(registry.registry, definition)


class TestRefused:
    @pytest.mark.parametrize(
        ("values", "says"),
        [
            ({"cron": "0 0 * *"}, "five fields"),
            ({"timezone": "Europe/Atlantis"}, "unknown time zone 'Europe/Atlantis'"),
            ({"catchup": "all"}, "set overlap = 'allow'"),
            ({"catchup": "all", "overlap": "cancel-previous"}, "set overlap = 'allow'"),
            ({"catchup_limit": 101}, "less than or equal to 100"),
            ({"name": "Nightly Digest"}, "should match pattern"),
        ],
    )
    def test_a_schedule_that_cannot_work_is_a_config_error(
        self, values: dict[str, Any], says: str
    ) -> None:
        """The config load refuses it, saying why."""
        with pytest.raises(ValueError, match=re.escape(says)):
            schedules_of(one(**values))

    def test_a_toml_date_in_the_input_is_refused(self, tmp_path: Path) -> None:
        """A task input is JSON: a TOML date cannot be stored, so it is refused at load."""
        path = tmp_path / "appliance.toml"
        path.write_text(
            '[[schedules]]\nname = "n"\ncron = "@daily"\nworkflow = "w"\n'
            "input = { since = 2026-01-01 }\n"
        )

        with pytest.raises(errors.ConfigError, match="input must be JSON"):
            settings.load(path, environ={})

    def test_a_name_twice_in_a_tenant_is_refused(self) -> None:
        """Two schedules of one name in one tenant would be one row: refused."""
        twice = {"schedules": one()["schedules"] * 2}

        with pytest.raises(ValueError, match="'n' of tenant 'default' is twice"):
            schedules_of(twice)

    def test_the_same_name_in_two_tenants_is_two_schedules(self) -> None:
        """Names are unique per tenant only."""
        data = {"schedules": [one()["schedules"][0], {**one()["schedules"][0], "tenant": "acme"}]}

        assert [s.tenant for s in schedules_of(data)] == ["default", "acme"]
