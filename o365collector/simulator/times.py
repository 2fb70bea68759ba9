"""Time formats of the Management Activity API, and the simulator's clock type.

The API writes three different shapes, and the simulator must reproduce each exactly:
content descriptors use ISO-8601 UTC with milliseconds and ``Z`` ([REF] sample
``2015-05-23T17:35:00.000Z``); audit records use ``2015-06-29T20:03:19`` (no ``Z``, no fraction,
[SCH] and every Beats fixture); ``startTime``/``endTime`` accept several forms (see ``parse_query_time``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

Clock = Callable[[], dt.datetime]
"""Returns the current instant as an aware UTC datetime."""


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """The same instant as an aware UTC datetime; a naive value is taken as UTC (the API does the same)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def format_content_time(value: dt.datetime) -> str:
    """``contentCreated`` / ``contentExpiration`` form: ``2015-05-23T17:35:00.000Z``."""
    value = as_utc(value)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def format_record_time(value: dt.datetime) -> str:
    """A record's ``CreationTime`` form: ``2015-06-29T20:03:19``."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S")


def format_query_time(value: dt.datetime) -> str:
    """The form we put back into a NextPageUri when the caller omitted the window."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S")


# [REF] documents YYYY-MM-DD, YYYY-MM-DDTHH:MM and YYYY-MM-DDTHH:MM:SS. Beats sends no zone, Wazuh
# sends a trailing Z, and both work in production; a fraction and an explicit offset are accepted
# too because the service binds the value as an ASP.NET DateTime (INF).
_QUERY_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?$",
    re.IGNORECASE,
)


def parse_query_time(text: str) -> dt.datetime | None:
    """Parse a ``startTime``/``endTime`` value into aware UTC, or ``None`` if it is not a valid time."""
    match = _QUERY_TIME.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz = dt.UTC
    if zone and zone.upper() != "Z":
        sign = 1 if zone[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        value = dt.datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), micro, tzinfo=tz
        )
    except ValueError:
        return None
    return value.astimezone(dt.UTC)
