"""Cron expressions in a time zone: parsing, slots across DST changes, catch-up plans.

The DST expectations are Debian cron's documented rules (cron(8), "daylight saving time"): a
job at a fixed time that the spring change skips runs right after the jump, one that the
autumn change repeats runs once; a job with a wildcard minute or hour runs by the new time
(real time). 2026 changes: Europe/Berlin 29 March 02:00 CET -> 03:00 CEST and 25 October
03:00 CEST -> 02:00 CET; America/New_York 8 March 02:00 EST -> 03:00 EDT and 1 November
02:00 EDT -> 01:00 EST.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from appliance import errors, models
from appliance.ingress import cron


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def slots(expression: str, zone: str, start: str, count: int) -> list[str]:
    """The first `count` slots after `start` (UTC), as UTC times `YYYY-MM-DDTHH:MM`."""
    found = cron.parse(expression, zone).slots(utc(start))
    return [f"{s:%Y-%m-%dT%H:%M}" for s in itertools.islice(found, count)]


class TestParse:
    @pytest.mark.parametrize(
        ("name", "fields"),
        [
            ("@hourly", "0 * * * *"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@weekly", "0 0 * * 0"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@HOURLY", "0 * * * *"),
        ],
    )
    def test_names_stand_for_their_five_fields(self, name: str, fields: str) -> None:
        """`@hourly` and its kin mean what crontab(5) says they mean."""
        assert cron.parse(name, "UTC").fields == fields

    def test_extra_spaces_are_one(self) -> None:
        """Fields may be separated by several spaces or tabs, as in a crontab."""
        assert cron.parse(" 30  2\t* * * ", "UTC").fields == "30 2 * * *"

    @pytest.mark.parametrize(
        ("expression", "says"),
        [
            ("61 * * * *", "bad minute field"),
            ("* 24 * * *", "bad hour field"),
            ("0 0 31 2 *", "bad day-of-month field"),
            ("0 0 * 13 *", "bad month field"),
            ("0 0 * * 8", "bad day-of-week field"),
            ("H * * * *", "bad minute field"),
            ("* * * *", "needs five fields"),
            ("0 * * * * *", "needs five fields"),
            ("0 0 1 1 * 2030", "needs five fields"),
            ("@reboot", "unknown name"),
            ("", "needs five fields"),
        ],
    )
    def test_a_bad_expression_says_what_is_wrong(self, expression: str, says: str) -> None:
        """Each refusal names the expression and the field or form that is wrong."""
        with pytest.raises(errors.InputError, match=says) as caught:
            cron.parse(expression, "UTC")
        assert repr(expression) in str(caught.value)

    @pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe/berlin ", "../etc/passwd", ""])
    def test_an_unknown_zone_is_refused(self, zone: str) -> None:
        """A zone that is not an IANA name is refused, naming it."""
        with pytest.raises(errors.InputError, match="unknown time zone"):
            cron.parse("@daily", zone)

    def test_describe_says_it_in_words(self) -> None:
        """The expression in words, for `schedules list`."""
        assert cron.parse("30 2 * * *", "Europe/Berlin").describe() == "At 02:30 every day"


class TestSlots:
    def test_slots_follow_the_zone(self) -> None:
        """`0 9 * * *` in New York is 14:00 UTC in winter, 13:00 in summer."""
        assert slots("0 9 * * *", "America/New_York", "2026-03-06T00:00", 3) == [
            "2026-03-06T14:00",
            "2026-03-07T14:00",
            "2026-03-08T13:00",
        ]

    def test_slots_are_strictly_after_the_start(self) -> None:
        """A slot exactly at the start is not returned again."""
        assert slots("0 * * * *", "UTC", "2026-01-01T10:00", 1) == ["2026-01-01T11:00"]


class TestDaylightSaving:
    def test_berlin_spring_a_skipped_time_fires_after_the_jump(self) -> None:
        """02:30 does not exist on 29 March: it fires at 03:00 CEST, once."""
        assert slots("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00", 3) == [
            "2026-03-28T01:30",  # 02:30 CET
            "2026-03-29T01:00",  # 03:00 CEST, right after the jump
            "2026-03-30T00:30",  # 02:30 CEST
        ]

    def test_berlin_autumn_a_repeated_time_fires_once(self) -> None:
        """02:30 happens twice on 25 October: it fires at the first, CEST."""
        assert slots("30 2 * * *", "Europe/Berlin", "2026-10-23T12:00", 3) == [
            "2026-10-24T00:30",
            "2026-10-25T00:30",  # 02:30 CEST; not again at 02:30 CET (01:30 UTC)
            "2026-10-26T01:30",
        ]

    def test_berlin_hourly_follows_real_time(self) -> None:
        """A wildcard hour fires every real hour: none at 02:00 in spring, two in autumn."""
        assert slots("0 * * * *", "Europe/Berlin", "2026-03-28T23:30", 3) == [
            "2026-03-29T00:00",  # 01:00 CET
            "2026-03-29T01:00",  # 03:00 CEST: there is no 02:00
            "2026-03-29T02:00",  # 04:00 CEST
        ]
        assert slots("0 * * * *", "Europe/Berlin", "2026-10-24T23:30", 3) == [
            "2026-10-25T00:00",  # 02:00 CEST
            "2026-10-25T01:00",  # 02:00 CET
            "2026-10-25T02:00",  # 03:00 CET
        ]

    def test_new_york_spring_a_skipped_time_fires_after_the_jump(self) -> None:
        """02:30 does not exist on 8 March: it fires at 03:00 EDT."""
        assert slots("30 2 * * *", "America/New_York", "2026-03-06T12:00", 3) == [
            "2026-03-07T07:30",  # 02:30 EST
            "2026-03-08T07:00",  # 03:00 EDT
            "2026-03-09T06:30",  # 02:30 EDT
        ]

    def test_new_york_autumn_a_repeated_time_fires_once(self) -> None:
        """01:30 happens twice on 1 November: it fires at the first, EDT."""
        assert slots("30 1 * * *", "America/New_York", "2026-10-30T12:00", 3) == [
            "2026-10-31T05:30",
            "2026-11-01T05:30",  # 01:30 EDT; not again at 01:30 EST (06:30 UTC)
            "2026-11-02T06:30",
        ]

    def test_new_york_autumn_every_half_hour_follows_real_time(self) -> None:
        """`*/30 * * * *` fires four times in the repeated hour's two passes."""
        assert slots("*/30 * * * *", "America/New_York", "2026-11-01T04:50", 5) == [
            "2026-11-01T05:00",  # 01:00 EDT
            "2026-11-01T05:30",  # 01:30 EDT
            "2026-11-01T06:00",  # 01:00 EST
            "2026-11-01T06:30",  # 01:30 EST
            "2026-11-01T07:00",  # 02:00 EST
        ]

    def test_from_the_second_pass_a_repeated_time_is_not_returned(self) -> None:
        """Iterating from 01:10 EST, the 01:30 that already fired (EDT) is not next."""
        assert slots("30 1 * * *", "America/New_York", "2026-11-01T06:10", 1) == [
            "2026-11-02T06:30"
        ]


def plan(
    expression: str,
    *,
    due: str,
    now: str,
    catchup: models.Catchup = "latest",
    limit: int = 10,
    grace_seconds: float = 60,
) -> cron.Plan:
    return cron.plan(
        cron.parse(expression, "UTC"),
        due=utc(due),
        now=utc(now),
        catchup=catchup,
        limit=limit,
        grace=dt.timedelta(seconds=grace_seconds),
    )


class TestPlan:
    def test_nothing_is_due_before_the_slot(self) -> None:
        """Before its slot a schedule fires nothing and still waits for that slot."""
        found = plan("0 * * * *", due="2026-01-01T10:00", now="2026-01-01T09:59:59")

        assert (found.fire, found.missed, found.upcoming) == ((), 0, utc("2026-01-01T10:00"))

    def test_an_on_time_slot_fires_under_every_policy(self) -> None:
        """One slot due a moment ago fires, whatever the catch-up policy."""
        for catchup in ("skip", "latest", "all"):
            found = plan(
                "0 * * * *", due="2026-01-01T10:00", now="2026-01-01T10:00:01", catchup=catchup
            )
            assert found.fire == (utc("2026-01-01T10:00"),), catchup
            assert (found.missed, found.upcoming) == (0, utc("2026-01-01T11:00"))

    def test_latest_fires_the_newest_missed_slot(self) -> None:
        """Five hours down: the 14:00 slot fires, the four before it are missed."""
        found = plan("0 * * * *", due="2026-01-01T10:00", now="2026-01-01T14:30")

        assert (found.fire, found.missed) == ((utc("2026-01-01T14:00"),), 4)
        assert found.newest == utc("2026-01-01T14:00")

    def test_skip_fires_nothing_late(self) -> None:
        """With skip, a slot older than the grace period is missed like the others."""
        found = plan("0 * * * *", due="2026-01-01T10:00", now="2026-01-01T14:30", catchup="skip")

        assert (found.fire, found.missed, found.newest) == ((), 5, utc("2026-01-01T14:00"))

    def test_skip_fires_a_newest_slot_within_the_grace(self) -> None:
        """With skip, the newest slot still fires when it is within the grace period."""
        found = plan("0 * * * *", due="2026-01-01T10:00", now="2026-01-01T14:00:30", catchup="skip")

        assert (found.fire, found.missed) == ((utc("2026-01-01T14:00"),), 4)

    def test_all_fires_the_newest_up_to_the_limit_oldest_first(self) -> None:
        """With all and a limit of 3, five missed slots fire the last three in order."""
        found = plan(
            "0 * * * *", due="2026-01-01T10:00", now="2026-01-01T14:30", catchup="all", limit=3
        )

        assert found.fire == tuple(utc(f"2026-01-01T{h}:00") for h in (12, 13, 14))
        assert found.missed == 2

    def test_a_long_outage_fires_the_newest_slot(self) -> None:
        """A minute schedule down for 30 days fires its newest minute, at once."""
        found = plan("* * * * *", due="2026-01-01T00:00", now="2026-01-31T12:00:30")

        assert found.fire == (utc("2026-01-31T12:00"),)
        assert found.upcoming == utc("2026-01-31T12:01")
        assert found.missed == cron.SCAN_LIMIT - 1  # a lower bound: it stopped counting

    def test_a_long_outage_of_a_sparse_schedule_finds_its_newest_slot(self) -> None:
        """Every minute of January, down since January 2024: January 2026's last minute fires."""
        found = plan(
            "* * * 1 *", due="2024-01-01T00:00", now="2026-07-15T00:00", catchup="all", limit=2
        )

        assert found.fire == (utc("2026-01-31T23:58"), utc("2026-01-31T23:59"))
        assert found.upcoming == utc("2027-01-01T00:00")
