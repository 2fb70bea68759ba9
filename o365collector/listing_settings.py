"""Settings of the listing fan-out (o365collector.listing_queue): the switch, the list queue, the bounds.

Parsed once into ``ListingQueueConfig`` by ``Settings.from_env``; every error names the setting.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .envparse import Environ, Gatherer, get_bool, get_str
from .errors import ConfigError

DEFAULT_LIST_QUEUE = "o365-list"


@dataclass(frozen=True, slots=True)
class ListingQueueConfig:
    # Off in code (a single `run` process, the tests, existing installs keep listing in-process);
    # the template turns it on in Azure, where the list queue's trigger scales listing out.
    fanout: bool = False
    queue: str = DEFAULT_LIST_QUEUE
    # Windows one list message lists per stream before it re-enqueues the rest: 4 x 6 h windows is a
    # day of backfill, a few seconds of API calls, so a week-long backfill yields to the other tenants'
    # messages between each day and never holds them back by more than one schedule.
    windows_per_message: int = 4
    # How long a stream's listing lease stands unrenewed (renewed every third of it while listing): a
    # dead worker's streams are free again this long after it died.
    lease: dt.timedelta = dt.timedelta(seconds=30)


def listing_queue_from_env(env: Environ, g: Gatherer) -> ListingQueueConfig:
    """The fan-out settings; errors are noted on ``g`` (reported with all the others)."""
    return ListingQueueConfig(
        fanout=g.read(lambda: get_bool(env, "O365_LIST_FANOUT", False), False),
        queue=g.read(lambda: _queue_name(env, "O365_LIST_QUEUE", DEFAULT_LIST_QUEUE), DEFAULT_LIST_QUEUE),
        windows_per_message=g.get_int(env, "O365_LIST_WINDOWS_PER_MESSAGE", 4, minimum=1, maximum=1000),
        lease=dt.timedelta(seconds=g.get_int(env, "O365_LIST_LEASE_SECONDS", 30, minimum=10, maximum=600)),
    )


def _queue_name(env: Environ, name: str, default: str) -> str:
    value = (get_str(env, name) or default).lower()
    # Azure queue names: 3-63 chars, lower-case letters, digits and single hyphens; "-poison" must fit too.
    ok = 3 <= len(value) <= 56 and value[0].isalnum() and value[-1].isalnum() and "--" not in value
    if not ok or not all(c.isalnum() or c == "-" for c in value):
        raise ConfigError(name, f"{value!r} is not a valid queue name (3-56 lower-case letters, digits, hyphens)")
    return value
