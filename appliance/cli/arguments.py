"""The kinds of value a command line takes: each refuses a bad one as a usage error (exit 2)
that says what the value must be, before any command runs or touches the database."""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import math
import re
from collections.abc import Callable

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_DELAY_SECONDS = 10 * 366 * 86_400  # ten years
MAX_USD = decimal.Decimal(10) ** 12


def whole(low: int, high: int) -> Callable[[str], int]:
    """A whole number from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high}, not {text!r}"
            )
        return value

    return parse


identifier = whole(1, INT64_MAX)  # a task's or an approval's id
version = whole(1, INT32_MAX)
count = whole(1, 100_000)  # --limit, --max-attempts
days = whole(1, 36_600)
priority = whole(-INT32_MAX - 1, INT32_MAX)


def seconds(text: str) -> float:
    """A duration in seconds: zero or more, finite, at most ten years."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_DELAY_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be seconds from 0 to {MAX_DELAY_SECONDS} (ten years), not {text!r}"
        )
    return value


def day(text: str) -> dt.date:
    """A calendar date, YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, not {text!r}") from None


def usd(text: str) -> decimal.Decimal:
    """An amount of US dollars: a plain decimal number, zero or more (3, 0.30, 1.25)."""
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        value = decimal.Decimal("NaN")
    if not value.is_finite() or not 0 <= value < MAX_USD:
        raise argparse.ArgumentTypeError(
            f"must be an amount of USD from 0 to below {MAX_USD:,} (like 3 or 0.30), not {text!r}"
        )
    return value


def cron_expression(text: str) -> str:
    """A cron expression: five fields or a name such as @hourly (read in UTC to check it)."""
    from appliance import errors
    from appliance.ingress import cron

    try:
        cron.parse(text, "UTC")
    except errors.InputError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def timezone(text: str) -> str:
    """An IANA time zone name."""
    from appliance import errors
    from appliance.ingress import cron

    try:
        cron.zone(text)
    except errors.InputError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def schedule_name(text: str) -> str:
    """A schedule's name: lower-case letters, digits, '-' and '_', at most 63."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", text):
        raise argparse.ArgumentTypeError(
            f"must be lower-case letters, digits, '-' and '_' (at most 63, starting with a "
            f"letter or digit), not {text!r}"
        )
    return text


catchup_limit = whole(1, 100)
