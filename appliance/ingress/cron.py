"""Cron expressions read in a time zone: a schedule's slots, as Debian's cron fires them.

An expression is five fields (minute, hour, day of month, month, day of week) or one of the
names `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`, `@yearly` (`@annually`).
Evaluation is cronsim's (the Healthchecks parser; croniter's 2026 releases changed what
existing expressions mean, cronsim follows Debian cron). Across a DST change it does what
Debian's cron does:

- an expression with a fixed minute and hour (`30 2 * * *`) is read on the wall clock: a time
  the spring change skips fires at the first minute after the jump (03:00), a time the autumn
  change repeats fires once, at its first occurrence;
- an expression with `*` in the minute or hour field (`0 * * * *`, `*/15 * * * *`) follows
  real time: no slot in the skipped hour, and the repeated hour has its slots twice.

A slot is an instant (UTC). Slots always increase: a wall time that falls before the instant
iterated from (the first pass of a repeated hour) is not returned again.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Iterator

import cronsim

from appliance import errors, models

NAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELDS = "minute hour day-of-month month day-of-week"
# A catch-up looks at this many missed slots one by one; past it, it finds the newest ones
# from the recent past instead (a schedule due every minute that was down for a week).
SCAN_LIMIT = 10_000


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone; InputError naming it when there is none of that name."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise errors.InputError(
            f"unknown time zone {name!r}: an IANA name such as UTC, Europe/Berlin or "
            "America/New_York"
        ) from None


@dataclasses.dataclass(frozen=True)
class Cron:
    """A checked expression in its zone."""

    expression: str  # as written
    fields: str  # the five fields (a name replaced)
    zone: zoneinfo.ZoneInfo

    def slots(self, start: dt.datetime) -> Iterator[dt.datetime]:
        """Every slot strictly after the instant `start`, in UTC, increasing."""
        last = start.astimezone(dt.UTC)
        for wall in cronsim.CronSim(self.fields, start.astimezone(self.zone)):
            instant = wall.astimezone(dt.UTC)
            if instant > last:
                last = instant
                yield instant

    def after(self, instant: dt.datetime) -> dt.datetime:
        """The first slot strictly after `instant`."""
        for slot in self.slots(instant):
            return slot
        raise errors.InputError(f"cron {self.expression!r} has no slot in the next 50 years")

    def describe(self) -> str:
        """The expression in words (`At 02:30`)."""
        return cronsim.CronSim(self.fields, dt.datetime.now(self.zone)).explain()


def parse(expression: str, timezone: str) -> Cron:
    """The expression checked in its zone; InputError saying what is wrong with it."""
    where = zone(timezone)
    text = " ".join(expression.split())
    fields = NAMES.get(text.lower(), text)
    if fields.startswith("@"):
        raise errors.InputError(
            f"cron {expression!r}: unknown name; use {', '.join(NAMES)} or five fields ({FIELDS})"
        )
    if len(fields.split()) != 5:
        raise errors.InputError(f"cron {expression!r}: needs five fields ({FIELDS}) or a name")
    try:
        cronsim.CronSim(fields, dt.datetime.now(where))
    except cronsim.CronSimError as exc:
        raise errors.InputError(f"cron {expression!r}: {str(exc).lower()} field") from None
    cron = Cron(expression, fields, where)
    cron.after(dt.datetime.now(dt.UTC))  # one that never fires is refused too
    return cron


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do with the slots that are due: fire these (oldest first), count the others
    as missed, and wait for `upcoming`; `newest` is the newest due slot (None: none is due)."""

    fire: tuple[dt.datetime, ...]
    missed: int
    upcoming: dt.datetime
    newest: dt.datetime | None


def plan(
    cron: Cron,
    *,
    due: dt.datetime,
    now: dt.datetime,
    catchup: models.Catchup,
    limit: int,
    grace: dt.timedelta,
) -> Plan:
    """The slots from `due` (the schedule's next slot) to `now`, by the catch-up policy.

    One due slot is on time if it is at most `grace` old; more than one means slots passed
    while no node fired them. `latest` fires the newest of them, `all` the newest `limit`
    (oldest first), `skip` only a newest one that is on time. The rest count as missed (past
    SCAN_LIMIT of them, the count is a lower bound).
    """
    if due > now:
        return Plan((), 0, due, None)
    keep = limit if catchup == "all" else 1
    recent = collections.deque([due], maxlen=keep)
    seen = 1
    upcoming: dt.datetime | None = None
    for slot in cron.slots(due):
        if slot > now:
            upcoming = slot
            break
        recent.append(slot)
        seen += 1
        if seen >= SCAN_LIMIT:
            recent = _newest(cron, now, keep, since=slot)
            upcoming = cron.after(now)
            break
    if upcoming is None:
        upcoming = cron.after(now)
    fire = list(recent)
    newest = fire[-1]
    if catchup == "skip":
        fire = [newest] if now - newest <= grace else []
    return Plan(tuple(fire), seen - len(fire), upcoming, newest)


def _newest(
    cron: Cron, now: dt.datetime, keep: int, *, since: dt.datetime
) -> collections.deque[dt.datetime]:
    """The newest `keep` slots up to `now`: looked for over the last day, then a window twice
    as long each time until there are enough (or the window reaches back to `since`)."""
    window = dt.timedelta(days=1)
    while True:
        start = now - window
        found: collections.deque[dt.datetime] = collections.deque(maxlen=keep)
        if start <= since:
            start = since
            found.append(since)
        for slot in cron.slots(start):
            if slot > now:
                break
            found.append(slot)
        if len(found) == keep or start == since:
            return found
        window *= 2
