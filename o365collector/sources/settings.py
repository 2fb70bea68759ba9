"""Settings of the Microsoft Graph sources (``O365_GRAPH_*``, ``O365_MESSAGE_TRACE_*``): frozen values.

Parsed once with the other settings (``config.Settings.graph``); defaults live here, with why.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..envparse import Environ, Gatherer, get_bool
from ..tenant_config import api_url_from_env


@dataclass(frozen=True, slots=True)
class GraphSettings:
    url: str | None = None
    """O365_GRAPH_URL: another Graph root than the cloud's (a proxy, the simulator); tokens keep its audience."""
    # Entra writes most sign-ins within minutes but some much later: each window re-reads this much of the
    # one before it and ships only ids that window did not ship. Longer catches later records, at more reads.
    overlap: dt.timedelta = dt.timedelta(minutes=15)
    # A window is a unit of work (one message, one ledger row): an hour of a large tenant's sign-ins is
    # tens of thousands of records, held in memory while shipped, and re-shipped whole if a worker dies.
    window: dt.timedelta = dt.timedelta(minutes=60)
    # Per-message details (getDetailsByRecipient) cost one call per message and recipient: off unless asked.
    message_trace_details: bool = False

    @classmethod
    def from_env(cls, env: Environ) -> GraphSettings:
        """``O365_GRAPH_URL``, ``O365_GRAPH_OVERLAP_MINUTES``, ``O365_GRAPH_WINDOW_MINUTES`` and
        ``O365_MESSAGE_TRACE_DETAILS``; every bad one is raised together (``InvalidSettingsError``)."""
        g = Gatherer()
        default = cls()
        settings = cls(
            url=g.read(lambda: api_url_from_env(env, "O365_GRAPH_URL"), None),
            # Up to a day: a record later than that is rare, and every window re-reads the whole overlap.
            overlap=dt.timedelta(
                minutes=g.get_int(env, "O365_GRAPH_OVERLAP_MINUTES", _minutes(default.overlap), minimum=0, maximum=1440)
            ),
            # 5 minutes to a day: shorter costs a queue message and a ledger row per few minutes; longer
            # holds (and on a worker's death re-ships) a large tenant's day of sign-ins at once.
            window=dt.timedelta(
                minutes=g.get_int(env, "O365_GRAPH_WINDOW_MINUTES", _minutes(default.window), minimum=5, maximum=1440)
            ),
            message_trace_details=g.read(
                lambda: get_bool(env, "O365_MESSAGE_TRACE_DETAILS", default.message_trace_details),
                default.message_trace_details,
            ),
        )
        g.raise_if_any()
        return settings


def _minutes(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() // 60)
