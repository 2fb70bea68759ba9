"""Listing fanned out through a queue: the timer enqueues one list message per tenant, workers list them.

Where the work goes (``O365_LIST_FANOUT=true``; the template turns it on):

- the timer (``run_timer``) sends one message per tenant to the list queue (``O365_LIST_QUEUE``), on a
  small pool of senders, and returns: it never waits for any listing;
- the list queue's trigger (``run_list_message``) lists that tenant's content types with the same
  ``Lister`` as before, so the Functions host's scale-out spreads the listing over its instances as it
  does the fetching;
- a stream (tenant x content type) is listed by one worker at a time: a ``StreamLeases`` row beside
  its checkpoint, claimed under an ETag condition and renewed every third of its length while the stream
  is listed. A duplicate or redelivered list message finds the lease held and skips the stream (no API
  call); when a worker dies, its leases lapse and the next message for the tenant lists the streams
  (the checkpoint ETag keeps even a race harmless);
- fairness: one message lists at most ``O365_LIST_WINDOWS_PER_MESSAGE`` windows per stream, then hands
  its leases to a continuation message sent to the back of the queue. A week-long backfill is listed
  a day at a time between the other tenants' messages, which are already on the queue ahead of its
  continuation: small tenants' fresh content waits for one pass of messages, never for the backfill.
  The lease is handed to the continuation, so the schedule's next message for the tenant skips the
  stream instead of starting a second chain; a continuation that finds the stream taken by someone
  else after its lease lapsed is dropped, that worker's chain carries on.

Per tenant rather than per stream: a tenant's content types share one sign-in and one message, and the
timer sends five times fewer messages (the figures are in the README's scaling section).

``run --once`` and ``run --interval`` do the same with the command line's queue runner
(``list_through_queue``): enqueue, then drain the list queue (continuations included) before shipping.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

from .checkpoints import CheckpointStore, StreamLease
from .errors import CollectorError
from .fetcher import FetchResult, Outcome
from .invocation import TiedThreadPool
from .leases import Heartbeat
from .lister import ListerResult, StreamResult
from .models import sign_message, signature_problem
from .queue_runner import DrainResult, QueueRunner
from .redaction import printable
from .runtime import Collector, collector, run_lister
from .tenant_config import TenantConfig

log = logging.getLogger(__name__)

LIST_MESSAGE_VERSION = 1
SEND_WORKERS = 16  # parallel sends: a queue send is one round trip, so 5,000 tenants take seconds, not minutes
MAX_MESSAGE_CHARS = 4096  # a list message is a tenant id and a few content types; anything longer is not ours


class ListMessageError(CollectorError):
    """A list message that is not one of ours; it is logged and dropped (nothing can list it)."""


@dataclass(frozen=True, slots=True)
class ListMessage:
    """What one list message asks: list ``tenant_id``'s content types (all, or ``content_types``).

    ``handed`` is set on a continuation: the lease holder name its streams were handed over as.
    """

    tenant_id: str
    content_types: tuple[str, ...] = ()
    handed: str = ""

    def to_message(self) -> str:
        body: dict[str, object] = {"v": LIST_MESSAGE_VERSION, "tenantId": self.tenant_id}
        if self.content_types:
            body["contentTypes"] = list(self.content_types)
        if self.handed:
            body["handed"] = self.handed
        return orjson.dumps(body).decode()

    @classmethod
    def from_message(cls, body: str | bytes) -> ListMessage:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        if len(text) > MAX_MESSAGE_CHARS:
            raise ListMessageError(f"list message of {len(text)} characters (a list message is far shorter)")
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as err:
            raise ListMessageError(f"list message is not JSON ({err})") from err
        if not isinstance(data, dict) or data.get("v") != LIST_MESSAGE_VERSION:
            version = printable(str(data.get("v") if isinstance(data, dict) else None)[:16])
            raise ListMessageError(f"list message version {version} is not supported")
        tenant_id, types, handed = data.get("tenantId"), data.get("contentTypes", []), data.get("handed", "")
        if not isinstance(tenant_id, str) or not tenant_id:
            raise ListMessageError("list message without a tenantId")
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types) or not isinstance(handed, str):
            raise ListMessageError(f"list message for tenant {printable(tenant_id[:64])} has malformed fields")
        return cls(tenant_id, tuple(types), handed)


@dataclass
class ListOutcome:
    """What one list message did."""

    tenant_id: str
    result: ListerResult = field(default_factory=ListerResult)
    busy: dict[str, dt.datetime] = field(default_factory=dict)
    """Streams another live worker lists now, and when its lease lapses unless renewed."""
    superseded: list[str] = field(default_factory=list)
    """Streams of a continuation that another worker took over after the handed lease lapsed."""
    continued: list[str] = field(default_factory=list)
    """Streams with windows left, handed to a continuation message at the back of the queue."""


def enqueue_listing(target: Collector, tenants: Iterable[TenantConfig] | None = None) -> int:
    """Send one list message per tenant (all of ``target``'s by default) to the list queue; returns how many.

    Bounded in time: the sends run on ``SEND_WORKERS`` threads and each is one storage round trip with
    the SDK's own timeout and retries. A send that fails raises (after the others were tried): the timer
    run fails and the next one sends again; the messages already sent are harmless duplicates (leases).
    """
    chosen = target.tenants() if tenants is None else tenants
    messages = [_signed(target, ListMessage(t.tenant_id).to_message()) for t in chosen]
    if not messages:
        return 0
    # Tied: a send's failure logged from the pool belongs to the timer's invocation.
    with TiedThreadPool(max_workers=min(SEND_WORKERS, len(messages)), thread_name_prefix="list-send") as pool:
        for _ in pool.map(target.list_queue.send_message, messages):
            pass
    return len(messages)


def list_message(
    target: Collector, body: str | bytes, *, message_id: str, wait_for_busy: bool = False
) -> ListOutcome:
    """List what one list message asks, under each stream's lease. ``wait_for_busy`` (the command line, which
    must list everything before it ships) sends the busy streams again, visible when their lease lapses;
    the host drops them instead: their holder lists them, or the next schedule's message does."""
    key = target.settings.message_key
    if key is not None:
        # Signed like the content queue's messages: a forged list message is dropped before it can make a
        # tenant list out of turn or hold its streams' leases.
        problem = signature_problem(body, key.reveal().encode())
        if problem is not None:
            raise ListMessageError(f"list message refused: {problem}")
    message = ListMessage.from_message(body)
    outcome = ListOutcome(message.tenant_id)
    tenant = _tenant(target, message.tenant_id)
    if tenant is None:
        log.warning(
            "list message for tenant %s, which is not configured (any more): dropped",
            printable(message.tenant_id[:64]),
            extra={"tenant_id": printable(message.tenant_id[:64])},
        )
        return outcome
    wanted = [c for c in tenant.streams if not message.content_types or c in message.content_types]
    length = target.settings.listing.lease
    holder = f"list:{message_id}"
    leases: dict[str, StreamLease] = {}
    # One query reads the tenant's checkpoints and leases; one transaction takes the free leases.
    rows = target.checkpoints.read_tenant(tenant.tenant_id)
    verdicts = target.stream_leases.acquire_all(rows, wanted, holder, target.clock(), length, handed=message.handed)
    for content_type, got in verdicts.items():
        if isinstance(got, StreamLease):
            leases[content_type] = got
        elif got is None:
            outcome.superseded.append(content_type)
        else:
            outcome.busy[content_type] = got
    fields = {"tenant_id": tenant.tenant_id}
    if outcome.busy:
        log.info("streams %s are being listed by another worker: skipped", ", ".join(outcome.busy), extra=fields)
    if leases:
        outcome.result = _list_leased(target, tenant, leases, outcome, target.checkpoints.primed(rows))
    if wait_for_busy and outcome.busy:
        lapse = max(outcome.busy.values())
        delay = min(max(1, math.ceil((lapse - target.clock()).total_seconds()) + 1), int(length.total_seconds()) + 1)
        again = ListMessage(tenant.tenant_id, tuple(outcome.busy))
        target.list_queue.send_message(_signed(target, again.to_message()), visibility_timeout=delay)
    return outcome


def _signed(target: Collector, text: str) -> str:
    """``text`` signed with ``O365_MESSAGE_KEY`` when one is set (as the lister signs content messages)."""
    key = target.settings.message_key
    return text if key is None else sign_message(text, key.reveal().encode())


def _tenant(target: Collector, tenant_id: str) -> TenantConfig | None:
    for refresh in (False, True):  # a table registry's tenant added since this instance last read it
        found = next((t for t in target.tenants(refresh=refresh) if t.tenant_id == tenant_id), None)
        if found is not None:
            return found
    return None


def _list_leased(
    target: Collector,
    tenant: TenantConfig,
    leases: dict[str, StreamLease],
    outcome: ListOutcome,
    checkpoints: CheckpointStore,
) -> ListerResult:
    length = target.settings.listing.lease

    def renew() -> bool:
        held = list(leases.items())
        until = target.clock() + length
        renewals = target.stream_leases.write_all([(lease, lease.holder, until) for _, lease in held])
        for (content_type, _), renewed in zip(held, renewals, strict=True):
            if renewed is None:
                # Our lease lapsed (a stall longer than the lease) and another worker took the stream: both
                # list it now; the checkpoint's ETag lets only one of them advance each window.
                log.warning(
                    "the listing lease on %s was taken over while this worker lists it",
                    content_type,
                    extra={"tenant_id": tenant.tenant_id, "content_type": content_type},
                )
                del leases[content_type]
            else:
                leases[content_type] = renewed
        return bool(leases)

    leased = tenant.only_streams(tuple(leases))
    try:
        with Heartbeat(renew, length.total_seconds() / 3, name="listing lease renewal"):
            result = target.lister(
                tenants=(leased,), window_budget=target.settings.listing.windows_per_message, checkpoints=checkpoints
            ).run()
        try:
            target.status.record_runs(result.streams, target.clock())
        except Exception as err:  # status is advisory: the listing itself succeeded or failed on its own
            log.warning("could not record the status of this listing: %s", err, extra={"tenant_id": tenant.tenant_id})
        outcome.continued = [s.content_type for s in result.streams if s.windows_left and s.content_type in leases]
    finally:
        _hand_over_and_release(target, tenant, leases, outcome.continued)
    return result


def _hand_over_and_release(
    target: Collector, tenant: TenantConfig, leases: dict[str, StreamLease], continued: list[str]
) -> None:
    """Release the leases of finished streams; hand the others to a continuation at the back of the queue.

    The hand-over comes before the send: a continuation received at once must find the lease its own.
    """
    now = target.clock()
    token = f"continuation:{uuid.uuid4()}"
    handing = [c for c in leases if c in continued]
    # Releases end the lease now (the row is kept: its holder says who listed last); one transaction for all.
    changes = [(leases[c], token, now + target.settings.listing.lease) for c in handing]
    changes += [(lease, lease.holder, now) for c, lease in leases.items() if c not in continued]
    written = target.stream_leases.write_all(changes)
    handed = [c for c, lease in zip(handing, written[: len(handing)], strict=True) if lease is not None]
    if handed:
        # If this send fails the leases lapse and the next schedule's message lists the rest.
        continuation = ListMessage(tenant.tenant_id, tuple(handed), token)
        target.list_queue.send_message(_signed(target, continuation.to_message()))


# -- the Functions triggers ----------------------------------------------------------------------------------


def run_timer(*, past_due: bool = False) -> int | ListerResult:
    """The timer's work: with the fan-out on, enqueue one list message per tenant and return their number;
    without it, list every tenant in this invocation (``runtime.run_lister``)."""
    active = collector()
    if not active.settings.listing.fanout:
        return run_lister(past_due=past_due)
    sent = enqueue_listing(active)
    log.info("listing fanned out: %d list messages enqueued", sent)
    active.auto_replay()
    return sent


def run_list_message(*, body: str | bytes, message_id: str, dequeue_count: int) -> ListOutcome | None:
    """The list queue trigger's work: list one tenant's streams. A message that is not ours is logged and
    dropped (None); storage failures raise, and the host delivers the message again."""
    try:
        return list_message(collector(), body, message_id=message_id)
    except ListMessageError as err:
        log.error("list message %s dropped (delivery %d): %s", printable(message_id), dequeue_count, err)
        return None


# -- the command line ----------------------------------------------------------------------------------------


def list_through_queue(
    target: Collector,
    *,
    on_window: Callable[[StreamResult], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ListerResult:
    """``run``'s listing with the fan-out on: enqueue every tenant's message, then drain the list queue with
    the command line's queue runner (what the host's trigger does) until every stream is listed."""
    by_stream: dict[tuple[str, str], StreamResult] = {}

    def handle(body: str, message_id: str, _dequeue_count: int) -> FetchResult:
        try:
            outcome = list_message(target, body, message_id=message_id, wait_for_busy=True)
        except ListMessageError as err:
            log.error("list message %s dropped: %s", printable(message_id), err)
            return FetchResult(Outcome.REFUSED, reason=str(err))
        for stream in outcome.result.streams:
            key = (stream.tenant_id, stream.content_type)
            if key in by_stream:
                stream.add_earlier(by_stream[key])
            by_stream[key] = stream
            if on_window is not None and stream.windows:
                on_window(stream)
        # Only the runner's bookkeeping reads this: the listing's own figures are in ``by_stream``.
        return FetchResult(Outcome.SHIPPED)

    enqueue_listing(target)
    runner = QueueRunner(
        target.list_queue,
        target.list_poison_queue,
        handle,
        target.settings.queue_runner,
        processing_lease=target.settings.listing.lease,
    )
    drained: DrainResult = runner.drain(should_stop=should_stop)
    if drained.last_error is not None:
        log.warning("listing through the list queue: %s", drained.last_error)
    return ListerResult(list(by_stream.values()))
