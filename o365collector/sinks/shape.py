"""The optional flat record shape of the http, file, blob and Event Hubs sinks (``SINK_*_SHAPE=flat``).

``raw`` (the default) writes each record exactly as the API served it. ``flat`` writes, instead, one
object per record for pipelines that want the field names some log-management products document for
Office 365 audit events:

* every top-level field ``F`` of the record as ``o365.audit.F``, in the record's order, value unchanged.
  Only the top level is renamed: a nested object or array (``Parameters``, ``ExtendedProperties``,
  ``ModifiedProperties``, …) stays whole, as the value of its one ``o365.audit.F`` key, so no two
  fields can ever collide and the record can be rebuilt from the flat object;
* ``@timestamp``: ``CreationTime`` as ISO-8601 UTC ending in ``Z`` (the API writes it without an offset,
  and means UTC; an explicit offset is honoured). A record whose ``CreationTime`` is absent, not a string
  or unreadable gets no ``@timestamp``: the time is never invented.

Values are never re-typed: integers beyond 64 bits stay exact (``batching.serialize`` writes them with
the standard library when orjson cannot). Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..envparse import Environ, get_choice
from ..models import Record, parse_api_time

SHAPES = ("raw", "flat")
"""``SINK_*_SHAPE`` values; ``raw`` first, the default."""

PREFIX = "o365.audit."
TIMESTAMP = "@timestamp"


def get_shape(env: Environ, name: str) -> str:
    """The ``SINK_*_SHAPE`` setting ``name``: ``raw`` (default) or ``flat``; errors name the setting."""
    return get_choice(env, name, "raw", SHAPES)


def flat_record(record: Record) -> dict[str, Any]:
    """``record`` in the flat shape (see the module docstring): ``@timestamp`` first, then ``o365.audit.*``."""
    flat: dict[str, Any] = {}
    timestamp = _timestamp(record.get("CreationTime"))
    if timestamp is not None:
        flat[TIMESTAMP] = timestamp
    for key, value in record.items():
        flat[PREFIX + key] = value
    return flat


def _timestamp(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        when = parse_api_time(value.strip())
    except (ValueError, OverflowError):  # not ISO-8601, or an offset that moves it past year 1 or 9999
        return None
    return _format_utc(when)


def _format_utc(value: dt.datetime) -> str:
    # Whole seconds as 2024-05-14T10:11:58Z; a fraction keeps its digits (up to microseconds), trailing zeros dropped.
    # (f-string, not strftime: %Y does not pad years below 1000 on every platform).
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"
