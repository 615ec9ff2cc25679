"""What the CLI prints: the one JSON encoder, whole texts in `show`, marked cuts in listings."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pydantic
import pytest

from appliance.cli import output

LONG = "the policy asks a person because " + "this reason is long and must be read whole " * 4


class Colour(enum.Enum):
    RED = "red"


class Model(pydantic.BaseModel):
    when: dt.date
    secret: pydantic.SecretStr


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    price: decimal.Decimal
    at: dt.datetime
    inner: Model


def printed(data: Any, capsys: pytest.CaptureFixture[str]) -> Any:
    output.emit_json(data)
    return json.loads(capsys.readouterr().out)


class TestJson:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (decimal.Decimal("0.30"), "0.30"),
            (decimal.Decimal("1E-7"), "1E-7"),
            (dt.date(2031, 2, 3), "2031-02-03"),
            (dt.datetime(2031, 2, 3, 4, 5, 6, tzinfo=dt.UTC), "2031-02-03T04:05:06+00:00"),
            (dt.time(4, 5), "04:05:00"),
            (dt.timedelta(days=1, seconds=1), 86401.0),
            (Path("/var/lib/appliance"), "/var/lib/appliance"),
            (b"\x00\xffkey", "AP9rZXk="),
            (Colour.RED, "red"),
            (ipaddress.ip_address("100.64.0.1"), "100.64.0.1"),
            (frozenset({"b", "a"}), ["a", "b"]),
        ],
        ids=lambda v: type(v).__name__,
    )
    def test_each_kind_of_value_is_encoded(
        self, value: Any, expected: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Money exact, times ISO 8601, durations in seconds, bytes base64, enums by value."""
        assert printed({"v": value}, capsys) == {"v": expected}

    def test_dataclasses_and_models_nest(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A dataclass row holding a pydantic model is one object; a secret stays asterisks."""
        row = Row(
            decimal.Decimal("12.50"),
            dt.datetime(2031, 1, 1, tzinfo=dt.UTC),
            Model(when=dt.date(2031, 1, 2), secret=pydantic.SecretStr("hunter2")),
        )

        assert printed([row], capsys) == [
            {
                "price": "12.50",
                "at": "2031-01-01T00:00:00+00:00",
                "inner": {"when": "2031-01-02", "secret": "**********"},
            }
        ]

    def test_a_float_that_is_not_json_is_refused(self) -> None:
        """NaN would make the document invalid JSON: it is a bug (ValueError), never printed."""
        with pytest.raises(ValueError, match="JSON"):
            output.emit_json({"v": float("nan")})


class TestText:
    def test_a_listing_cuts_long_cells_and_says_where_they_are_whole(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Cut at CELL_LIMIT, marked, with a note on stderr naming the show command."""
        output.table([(1, LONG)], ("id", "why"), whole_in="appliance approvals show ID")

        printed = capsys.readouterr()
        row = printed.out.splitlines()[1]
        assert row.endswith(output.CUT_MARK)
        assert len(row.split(None, 1)[1]) == output.CELL_LIMIT
        assert "`appliance approvals show ID` shows them whole" in printed.err

    def test_a_table_without_a_show_command_is_whole(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Where no other command shows the row, nothing is cut and nothing is said."""
        output.table([(1, LONG)], ("id", "why"))

        printed = capsys.readouterr()
        assert LONG.strip() in printed.out
        assert printed.err == ""

    def test_a_field_is_whole_on_a_pipe(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`show` prints the whole text on one line when stdout is not a terminal."""
        output.field("why", LONG, width=17)

        assert capsys.readouterr().out == f"{'why':<17}{LONG.rstrip()}\n"

    def test_a_field_keeps_its_own_lines(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A text of several lines is printed line by line, under its first."""
        output.field("error", "first line\nsecond line", width=8)

        assert capsys.readouterr().out == "error   first line\n        second line\n"

    def test_a_field_wraps_on_a_terminal_and_loses_no_word(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a terminal a long text is wrapped to its width under the value's column."""
        monkeypatch.setattr("sys.stdout.isatty", lambda: True)
        monkeypatch.setattr("shutil.get_terminal_size", lambda: os.terminal_size((60, 24)))
        output.field("why", LONG, width=17)

        lines = capsys.readouterr().out.splitlines()
        assert len(lines) > 1
        assert all(len(line) <= 60 for line in lines)
        assert all(line.startswith(" " * 17) for line in lines[1:])
        assert " ".join(line[17:].strip() for line in lines).split() == LONG.split()
