"""Run summaries for Application Insights: one line per run, a stable prefix, a JSON object of counts.

The Python worker of Azure Functions does not turn ``extra`` into customDimensions, so the fields
ride in the message as JSON after a fixed prefix; Kusto reads them with ``parse_json`` (README,
"Monitoring"). The prefixes and field names are a contract with the alerts of the ARM template and
with operators' queries: add fields, never rename or remove one.

- ``lister run complete {…}`` / ``lister run failed {…}`` (lister, per stream and run): tenant_id,
  content_type, windows, windows_left, blobs_listed, blobs_enqueued, throttled, lag_seconds, seconds,
  error_code, error.
- ``fetch run complete {…}`` (this module, per queue-trigger run, i.e. per content blob shipped):
  tenant_id, content_type, content_id, blobs_shipped, records, seconds.
- ``collector run complete {…}`` (this module, the command line's ``run``, per stream and pass):
  tenant_id, content_type, windows, blobs_listed, blobs_enqueued, blobs_shipped, blobs_skipped,
  blobs_lost, blobs_refused, blobs_deferred, records, failures, throttled, lag_seconds, seconds, error_code.
- ``content expired before delivery {…}`` (fetcher) and ``message moved to poison queue`` at ERROR.

On an interactive terminal the command line drops the JSON summary lines (``HideSummaryLines``) and
prints a human line per pass instead, unless ``--json-logs`` asks for them; anywhere else (a
service, a container, Application Insights) they are always written.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

import orjson

from .errors import MessageFormatError
from .fetcher import FetchResult, Outcome
from .lister import FAILED_MESSAGE, RUN_SUMMARY_MESSAGE, SUMMARY_MESSAGE, ListerResult
from .models import FetchTask

log = logging.getLogger(__name__)

FETCH_RUN_MESSAGE = "fetch run complete"
COLLECTOR_RUN_MESSAGE = "collector run complete"

# Every machine-read summary line starts with one of these (then a space and a JSON object).
SUMMARY_PREFIXES = (SUMMARY_MESSAGE, FAILED_MESSAGE, RUN_SUMMARY_MESSAGE, COLLECTOR_RUN_MESSAGE, FETCH_RUN_MESSAGE)

Handler = Callable[[str, str, int], FetchResult]
StreamKey = tuple[str, str]


def log_fetch_result(task: FetchTask, result: FetchResult) -> None:
    """The queue trigger's summary: INFO for a shipped blob (throughput charts), DEBUG for a skip.

    A lost blob is already logged at ERROR by the fetcher, with its content id.
    """
    fields = {"tenant_id": task.tenant_id, "content_type": task.content_type, "content_id": task.content_id}
    if result.outcome is not Outcome.SHIPPED:
        log.debug("content %s: %s", task.content_id, result.outcome.value, extra=fields)
        return
    summary = {**fields, "blobs_shipped": 1, "records": result.records, "seconds": round(result.seconds, 3)}
    log.info("%s %s", FETCH_RUN_MESSAGE, orjson.dumps(summary).decode(), extra=fields)


class ShipTally:
    """What the queue side did per tenant and content type, for the command line's run summary."""

    def __init__(self) -> None:
        self.counts: dict[StreamKey, Counter[str]] = {}
        # The queue runner's threads count at once; ``+=`` on a Counter is not atomic.
        self._lock = threading.Lock()

    def wrap(self, handler: Handler) -> Handler:
        def counted(body: str, message_id: str, dequeue_count: int) -> FetchResult:
            key = _stream_of(body)
            try:
                result = handler(body, message_id, dequeue_count)
            except Exception:
                self._add(key, "failures")
                raise
            self._add(key, _COUNTER[result.outcome])
            self._add(key, "records", result.records)
            return result

        return counted

    def reset(self) -> None:
        self.counts = {}

    def _add(self, key: StreamKey, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counts.setdefault(key, Counter())[name] += amount

    def get(self, tenant_id: str, content_type: str) -> Counter[str]:
        return self.counts.get((tenant_id, content_type), Counter())


_COUNTER = {
    Outcome.SHIPPED: "blobs_shipped",
    Outcome.SKIPPED_DONE: "blobs_skipped",
    Outcome.SKIPPED_BUSY: "blobs_skipped",
    Outcome.LOST: "blobs_lost",
    Outcome.REFUSED: "blobs_refused",  # the handler moved the message to the poison queue itself
    Outcome.DEFERRED: "blobs_deferred",  # a sink or the API failing: back on the queue with a delay
    Outcome.WAITING: "units_waiting",  # a Graph window waiting for the one before it: back with a short delay
}


def _stream_of(body: str) -> StreamKey:
    try:
        task = FetchTask.from_message(body)
    except MessageFormatError:
        return ("?", "?")
    return (task.tenant_id, task.content_type)


def log_run_summary(listed: ListerResult, tally: ShipTally, seconds: float) -> None:
    """One INFO line per stream for a command-line pass: listing and shipping together."""
    for stream in listed.streams:
        shipped = tally.get(stream.tenant_id, stream.content_type)
        fields = {"tenant_id": stream.tenant_id, "content_type": stream.content_type}
        summary = {
            **fields,
            "source": stream.summary()["source"],
            "windows": stream.windows,
            "blobs_listed": stream.blobs_listed,
            "blobs_enqueued": stream.blobs_enqueued,
            "blobs_shipped": shipped["blobs_shipped"],
            "blobs_skipped": shipped["blobs_skipped"],
            "blobs_lost": shipped["blobs_lost"],
            "blobs_refused": shipped["blobs_refused"],
            "blobs_deferred": shipped["blobs_deferred"],
            "records": shipped["records"],
            "failures": shipped["failures"],
            "throttled": stream.throttled,
            "lag_seconds": stream.lag_seconds,
            "seconds": round(seconds, 3),
            "error_code": stream.error_code,
        }
        log.info("%s %s", COLLECTOR_RUN_MESSAGE, orjson.dumps(summary).decode(), extra=fields)


class HideSummaryLines(logging.Filter):
    """Drops the JSON summary lines: a handler filter for a person at a terminal, who gets human lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(prefix + " {") for prefix in SUMMARY_PREFIXES)
