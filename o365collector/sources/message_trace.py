"""Exchange Online message trace through Microsoft Graph: how the log is read, and its optional details.

``GET /v1.0/admin/exchange/tracing/messageTraces`` (application permission ``ExchangeMessageTrace.Read.All``,
global service only, 90 days back): ``$filter`` on ``receivedDateTime`` supports ``ge`` and ``le`` only (a
window asks ``ge start and le end`` and leaves a record at exactly ``end`` to the next window); ``$top`` up
to 5,000 (default 1,000): 5,000 here, the fewest calls. A trace row is one message to one recipient, so
the dedupe key is ``id`` with ``recipientAddress``.
(https://learn.microsoft.com/graph/api/messagetracingroot-list-messagetraces)

Details (``O365_MESSAGE_TRACE_DETAILS``, off by default): ``GET .../messageTraces/{id}/getDetailsByRecipient(
recipientAddress='...')`` per row, a collection of ``exchangeMessageTraceDetail`` (events: Receive, Deliver,
...), attached to the row under ``DETAILS_KEY``. The service allows 100 such calls per 5 minutes per tenant:
they are paced to that and counted (``GraphStats.detail_requests``); a busy tenant's windows take long.
(https://learn.microsoft.com/graph/api/exchangemessagetrace-getdetailsbyrecipient)
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from ..models import Record
from ..ratelimit import RateLimiter
from .catalog import MESSAGE_TRACE, MESSAGE_TRACE_STREAM
from .graph import GraphHttp
from .graph_units import GraphStream

DETAILS_KEY = "traceDetails"
"""The key under which a trace row carries its details (a list of exchangeMessageTraceDetail objects)."""
TRACE_PATH = "admin/exchange/tracing/messageTraces"


def trace_key(record: Record) -> str | None:
    ident, recipient = record.get("id"), record.get("recipientAddress")
    if not isinstance(ident, str) or not ident:
        return None
    return f"{ident}|{recipient.lower()}" if isinstance(recipient, str) else ident


MESSAGE_TRACE_LOG = GraphStream(
    MESSAGE_TRACE_STREAM, MESSAGE_TRACE, TRACE_PATH, "receivedDateTime", top=5000, key=trace_key
)


def details_uri(root: str, record: Record) -> str | None:
    """The details URL of one trace row (None without an id and a recipient). Both values come from the
    service: escaped whole, so they stay one path segment and one OData string literal on the Graph root."""
    ident, recipient = record.get("id"), record.get("recipientAddress")
    if not isinstance(ident, str) or not ident or not isinstance(recipient, str) or not recipient:
        return None
    literal = quote(recipient.replace("'", "''"), safe="@")
    return f"{root}/v1.0/{TRACE_PATH}/{quote(ident, safe='')}/getDetailsByRecipient(recipientAddress='{literal}')"


def attach_details(http: GraphHttp, records: Sequence[Record], limiter: RateLimiter, what: str) -> int:
    """Add each row's details under ``DETAILS_KEY``; returns the calls made (also counted on ``http``)."""
    calls = 0
    for record in records:
        url = details_uri(http.root, record)
        if url is None:
            continue
        details: list[Record] = []

        def before_each() -> None:
            nonlocal calls
            limiter.acquire()  # before each page: a nextLink is a call too
            calls += 1
            http.count("detail_requests")

        for page in http.pages(url, f"{what} details", before_each=before_each):
            details.extend(page)
        record[DETAILS_KEY] = details
    return calls
