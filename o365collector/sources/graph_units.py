"""A Microsoft Graph log's unit of work: one time window of one stream, named and addressed by pure functions.

For the window ``[start, end)`` of stream S:

- ``unit_id``: ``f"{S}_{start:%Y%m%dT%H%M%SZ}_{end:%Y%m%dT%H%M%SZ}"`` (UTC); ``parse_unit_id`` reads it back.
- ``unit_uri``: the canonical Graph URL of the window (without overlap): ``{root}/v1.0/<path>?$filter=...``,
  its query percent-encoded here and nowhere else, so the lister and ``unit_problem`` build the same text.
- ``unit_problem``: why a queue message is not a unit this tenant's client would have listed (another
  stream, a malformed id, a URL that is not the id's own window on the configured Graph root, dates that
  do not match the id). A forged message can name no other URL, tenant or window.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from ..models import FetchTask, Record, TimeWindow, parse_api_time, utc

_ID_TIME = "%Y%m%dT%H%M%SZ"
# No window the lister plans is wider (GraphSettings.window is bounded far below): a wider id is forged.
MAX_UNIT_SPAN = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class GraphStream:
    """How one Graph log is read: its path under ``/v1.0/``, the record time it is filtered on, page size."""

    stream: str
    source: str
    path: str
    time_field: str
    top: int | None = None
    """``$top`` on every request (None: the service's default page size, which is its maximum)."""
    end_operator: str = "le"
    """Graph documents only ``eq``/``ge``/``le`` on these time fields (signIn ``createdDateTime``,
    directoryAudit ``activityDateTime``, exchangeMessageTrace ``receivedDateTime``): a window asks
    ``ge start and le end`` and a record at exactly ``end`` is dropped here and shipped by the next window."""
    key: Callable[[Record], str | None] | None = None
    """A record's dedupe key (None: its ``id``)."""

    def record_key(self, record: Record) -> str | None:
        if self.key is not None:
            return self.key(record)
        value = record.get("id")
        return value if isinstance(value, str) and value else None

    def record_time(self, record: Record) -> dt.datetime | None:
        value = record.get(self.time_field)
        if not isinstance(value, str):
            return None
        try:
            return parse_api_time(value)
        except ValueError:
            return None


def graph_time(value: dt.datetime) -> str:
    """The form Graph's ``$filter`` takes: ISO 8601 UTC with ``Z``, whole seconds (windows are whole seconds)."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def unit_id(stream: str, window: TimeWindow) -> str:
    return f"{stream}_{utc(window.start):{_ID_TIME}}_{utc(window.end):{_ID_TIME}}"


def parse_unit_id(stream: str, content_id: str) -> TimeWindow:
    """The window ``content_id`` names; ``ValueError`` (naming the problem, not echoing the id) otherwise."""
    prefix = f"{stream}_"
    if not content_id.startswith(prefix):
        raise ValueError(f"the content id does not start with the stream name {stream!r}")
    parts = content_id[len(prefix) :].split("_")
    if len(parts) != 2:
        raise ValueError("the content id is not <stream>_<start>_<end>")
    try:
        start, end = (dt.datetime.strptime(part, _ID_TIME).replace(tzinfo=dt.UTC) for part in parts)
    except ValueError as err:
        raise ValueError("the content id's times are not YYYYMMDDTHHMMSSZ") from err
    if end <= start:
        raise ValueError("the content id's window is empty")
    if end - start > MAX_UNIT_SPAN:
        raise ValueError(f"the content id's window is wider than {MAX_UNIT_SPAN}, wider than any window listed")
    window = TimeWindow(start, end)
    if unit_id(stream, window) != content_id:  # e.g. a non-canonical but parseable time
        raise ValueError("the content id is not in its canonical form")
    return window


def unit_uri(root: str, spec: GraphStream, window: TimeWindow, *, top: int | None = None) -> str:
    """The window's Graph URL. ``top`` overrides the stream's page size (the ``check`` probe asks for 1)."""
    field = spec.time_field
    query = [
        ("$filter", f"{field} ge {graph_time(window.start)} and {field} {spec.end_operator} {graph_time(window.end)}")
    ]
    page = top if top is not None else spec.top
    if page is not None:
        query.append(("$top", str(page)))
    # One encoding, here: ``$`` stays literal (Graph's own docs and nextLinks write it so), the rest is escaped.
    encoded = "&".join(f"{name}={quote(value, safe='')}" for name, value in query)
    return f"{root.rstrip('/')}/v1.0/{spec.path}?{encoded}"


def unit_problem(
    task: FetchTask, *, spec: GraphStream, root: str, tenant_id: str, retention: dt.timedelta
) -> str | None:
    """Why ``task`` is not the unit of ``spec`` this tenant's client lists (None if it is). Printable text,
    which names what is wrong and never echoes the message's values."""
    if task.tenant_id.lower() != tenant_id.lower():
        return "the message's tenantId is not this client's tenant"
    if task.content_type != spec.stream:
        return f"the message's contentType is not the stream {spec.stream}"
    try:
        window = parse_unit_id(spec.stream, task.content_id)
    except ValueError as err:
        return str(err)
    if task.content_uri != unit_uri(root, spec, window):
        return (
            "the contentUri is not the Graph URL of the window its contentId names "
            "(on the configured Graph root, O365_GRAPH_URL or the cloud's)"
        )
    if utc(task.content_created) != window.end:
        return "the message's contentCreated is not the end of the window its contentId names"
    if utc(task.content_expiration) != window.start + retention:
        return "the message's contentExpiration is not the window's start plus the source's retention"
    return None
