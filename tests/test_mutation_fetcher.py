"""What the fetcher, the per-blob ledger, the deferral plan and the message format promise, stated where the
broader tests left a deliberate breakage unnoticed (a mutation audit).

The fetcher and the ledger run across Azurite and the simulator; the pure parts (message format, backoff plan,
the recent-blob set) are unit tests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import orjson
import pytest
from azure.core.exceptions import ResourceModifiedError
from azure.data.tables import TableClient

from o365collector.checkpoints import RECENT_MAX_ENTRIES, ClaimStatus, Ledger, RecentBlobs
from o365collector.config import HealthPolicy
from o365collector.deferral import (
    EXPIRY_WARNING,
    MAX_CAUSE_CHARS,
    MAX_VISIBILITY,
    DeferredBlob,
    backoff_delay,
    expiry_message,
    plan_deferral,
    report_deferrals,
    waiting_for,
)
from o365collector.errors import (
    ApiTransientError,
    MessageFormatError,
    RefusedMessageError,
    RetryableError,
    SinkTransientError,
)
from o365collector.fetcher import Fetcher, Outcome
from o365collector.models import (
    MAX_ATTEMPT,
    SIGNATURE_FIELD,
    BlobContext,
    ContentBlob,
    FetchTask,
    ListingEntryError,
    Record,
    TimeWindow,
    format_api_time,
    parse_api_time,
    sign_message,
    signature_problem,
    utc,
)
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator
from o365collector.status_report import StatusReport, StreamReport
from tests.receivers import HttpReceiver
from tests.support import TENANT, now

TID = TENANT.tenant_id
CollectorFactory = Callable[..., Collector]
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(minutes=10)
H = dt.timedelta(hours=1)


def ledger_task(content_id: str = "2026112212$abc$audit_exchange$Audit_Exchange$emea0001") -> FetchTask:
    return FetchTask(
        TID, "Audit.Exchange", content_id, f"https://x/audit/{content_id}", NOW, NOW + dt.timedelta(days=7)
    )


def one_blob(sim: Simulator) -> FetchTask:
    sim.generate(
        TID, "Audit.Exchange", now() - dt.timedelta(hours=2), now() - dt.timedelta(hours=1),
        blob_every=dt.timedelta(hours=1), records_per_blob=(2, 4),
    )  # fmt: skip
    blob = sim.blobs(TID, "Audit.Exchange")[0]
    return FetchTask(TID, blob.content_type, blob.content_id, blob.content_uri, blob.created, blob.expiration)


def http_collector(make_collector: CollectorFactory, receiver: HttpReceiver) -> Collector:
    return make_collector(SINK_TYPE="http", SINK_URL=receiver.url, O365_CONTENT_TYPES="Audit.Exchange")


# -- the fetcher: skips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["done", "lost"])
def test_content_shipped_or_recorded_as_lost_is_skipped_as_done_without_a_fetch(
    state: str, simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    task = one_blob(simulator)
    collector = http_collector(make_collector, receiver)
    claim = collector.ledger.claim(task, "earlier", now(), LEASE)
    if state == "done":
        collector.ledger.mark_done(claim, 3, now())
    else:
        collector.ledger.mark_lost(claim, "AF20051 expired", now())

    result = collector.process_message(task.to_message(), message_id="later")

    assert result.outcome is Outcome.SKIPPED_DONE
    assert simulator.stats.fetches == {}, "finished content is not fetched again"
    assert receiver.records == []
    row = collector.ledger.get(task)
    assert row is not None
    assert row["State"] == state


def test_the_ledger_counts_the_records_shipped_not_those_filtered_out(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    task = one_blob(simulator)
    collector = make_collector(
        SINK_TYPE="http", SINK_URL=receiver.url, O365_CONTENT_TYPES="Audit.Exchange",
        O365_FILTER_EXCLUDE_WORKLOADS="exchange",
    )  # fmt: skip

    result = collector.process_message(task.to_message(), message_id="m1")

    assert (result.outcome, result.records, receiver.records) == (Outcome.SHIPPED, 0, [])
    assert result.filtered > 0
    assert collector.ledger.get(task)["Records"] == 0  # type: ignore[index]


def test_an_unknown_tenant_is_refused_with_its_id_escaped(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    task = replace(one_blob(simulator), tenant_id="forged\nline\x1b[2J")
    collector = http_collector(make_collector, receiver)
    with pytest.raises(RefusedMessageError) as caught:
        collector.fetcher().accepted_client(task)
    reason = caught.value.reason
    assert "forged" in reason
    assert "is not configured" in reason
    assert "\n" not in reason
    assert "\x1b" not in reason
    assert collector.ledger.get(task) is None


def test_a_blob_another_live_delivery_holds_is_skipped_and_left_to_it(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    task = one_blob(simulator)
    collector = http_collector(make_collector, receiver)
    assert collector.ledger.claim(task, "other", now(), LEASE).status is ClaimStatus.CLAIMED

    result = collector.process_message(task.to_message(), message_id="duplicate")

    assert result.outcome is Outcome.SKIPPED_BUSY
    assert simulator.stats.fetches == {}, "a duplicate does not fetch the blob the other delivery carries"
    assert receiver.records == []
    row = collector.ledger.get(task)
    assert row is not None
    assert (row["State"], row["Owner"]) == ("claimed", "other")


def test_content_the_api_no_longer_has_is_lost_with_the_service_reason(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    task = one_blob(simulator)
    collector = http_collector(make_collector, receiver)
    simulator.set_clock(lambda: task.content_created - dt.timedelta(hours=1))  # not yet there: 404 AF20050

    result = collector.fetcher().process(task, delivery_id="m1")

    assert result.outcome is Outcome.LOST
    assert result.reason is not None
    assert "AF20050" in result.reason
    row = collector.ledger.get(task)
    assert row is not None
    assert row["State"] == "lost"
    assert "AF20050" in row["Error"]


def test_a_failed_fetch_gives_the_claim_back_for_the_next_delivery(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    task = one_blob(simulator)
    collector = make_collector(
        SINK_TYPE="http", SINK_URL=receiver.url, O365_CONTENT_TYPES="Audit.Exchange", O365_RETRY_MAX_ATTEMPTS="1"
    )
    fault = simulator.faults.add(Fault(kind="server_error", route="fetch"))

    with pytest.raises(RetryableError):
        collector.fetcher().process(task, delivery_id="first")

    row = collector.ledger.get(task)
    assert row is not None
    assert row["State"] == "failed"
    assert row["Error"]
    simulator.faults.remove(fault)
    result = collector.fetcher().process(task, delivery_id="second")  # at once, not after the lease
    assert result.outcome is Outcome.SHIPPED
    assert len(receiver.records) == result.records > 0


class Unread:
    """A sink that accepts a blob without reading its records (as one that drops everything may)."""

    name = "unread"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def check(self) -> None:
        return None

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        self.sent.append(context.content_id)

    def close(self) -> None:
        return None


def test_a_malformed_blob_is_refused_and_given_back_even_when_no_sink_read_it(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    """The fetcher itself waits for the blob's validation: nothing is marked done before it passed."""
    created = now() - dt.timedelta(hours=2)
    body = b'[{"CreationTime":"2026-03-01T11:59:58","Id":"nan","Big":123456789012345678901234567890,"V":NaN}]'
    blob = simulator.add_blob(TID, "Audit.Exchange", created, body)
    task = FetchTask(TID, blob.content_type, blob.content_id, blob.content_uri, blob.created, blob.expiration)
    collector = http_collector(make_collector, receiver)
    sink = Unread()
    fetcher = Fetcher(
        ledger=collector.ledger,
        sinks_for_tenant=lambda tenant_id: [sink],
        client_for=collector.client,
        history=collector.unit_memos,
        claim_lease=LEASE,
        clock=now,
    )

    with pytest.raises(RefusedMessageError, match="NaN"):
        fetcher.process(task, delivery_id="m1")

    row = collector.ledger.get(task)
    assert row is not None
    assert row["State"] == "failed"


# -- the message format ---------------------------------------------------------------------------------------


def test_api_times_are_formatted_in_utc_whatever_the_zone_given() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert format_api_time(dt.datetime(2026, 11, 22, 14, 0, 5, tzinfo=plus_two)) == "2026-11-22T12:00:05"
    assert format_api_time(dt.datetime(2026, 11, 22, 12, 0, 5)) == "2026-11-22T12:00:05"  # naive is UTC


def test_utc_converts_an_aware_time_and_takes_a_naive_one_as_utc() -> None:
    minus_five = dt.timezone(dt.timedelta(hours=-5))
    assert utc(dt.datetime(2026, 11, 22, 7, 0, tzinfo=minus_five)) == NOW
    assert utc(dt.datetime(2026, 11, 22, 7, 0, tzinfo=minus_five)).tzinfo is dt.UTC
    assert utc(dt.datetime(2026, 11, 22, 12, 0)) == NOW
    assert parse_api_time("2026-11-22T14:00:00+02:00") == NOW


def test_a_window_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="empty window"):
        TimeWindow(NOW, NOW)
    assert TimeWindow(NOW, NOW + dt.timedelta(seconds=1)).span == dt.timedelta(seconds=1)


def test_a_first_message_is_the_plain_v1_body_and_a_deferred_one_counts_its_attempts() -> None:
    first = ledger_task()
    assert "attempt" not in orjson.loads(first.to_message())
    again = first.deferred().deferred()
    assert again.attempt == 2
    assert orjson.loads(again.to_message())["attempt"] == 2
    assert FetchTask.from_message(again.to_message()) == again
    assert FetchTask.from_message(first.to_message()) == first


@pytest.mark.parametrize(
    ("attempt", "accepted"),
    [(0, True), (MAX_ATTEMPT, True), (MAX_ATTEMPT + 1, False), (-1, False), (True, False), ("1", False), (1.0, False)],
)
def test_the_attempt_counter_is_bounded(attempt: object, accepted: bool) -> None:
    body = orjson.loads(ledger_task().to_message()) | {"attempt": attempt}
    if accepted:
        assert FetchTask.from_message(orjson.dumps(body)).attempt == attempt
    else:
        with pytest.raises(MessageFormatError, match=f"bad attempt counter \\(expected 0..{MAX_ATTEMPT}\\)"):
            FetchTask.from_message(orjson.dumps(body))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[1]", "not a JSON object"),
        (b"{nope", "not JSON"),
        (b'{"tenantId": "t"}', "version None is not supported"),
        (b'{"v": 2}', "version 2 is not supported (this release reads v1)"),
        (b'{"v": 1, "tenantId": "t"}', "lacks field 'contentType'"),
    ],
)
def test_a_message_that_is_not_a_v1_task_is_refused_with_its_problem(body: bytes, problem: str) -> None:
    with pytest.raises(MessageFormatError) as caught:
        FetchTask.from_message(body)
    assert problem in str(caught.value)


def test_a_signature_is_hmac_sha256_over_the_other_fields_with_sorted_keys() -> None:
    """The documented wire format, so that another writer (a replay tool) can sign messages."""
    key = b"k" * 32
    text = ledger_task().to_message()
    signed = orjson.loads(sign_message(text, key))
    fields = orjson.loads(text)
    payload = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    assert signed[SIGNATURE_FIELD] == hmac.new(key, payload, hashlib.sha256).hexdigest()
    assert {k: v for k, v in signed.items() if k != SIGNATURE_FIELD} == fields


def test_re_signing_a_signed_message_replaces_its_signature() -> None:
    key = b"k" * 32
    once = sign_message(ledger_task().to_message(), b"old key")
    again = sign_message(once, key)
    assert signature_problem(again, key) is None
    assert signature_problem(once, key) is not None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[]", "not a JSON object"),
        ("{", "not JSON"),
        ('{"v": 1}', "carries no signature"),
        ('{"v": 1, "sig": 5}', "carries no signature"),
        ('{"v": 1, "sig": "00"}', "does not match"),
    ],
)
def test_an_unsigned_or_badly_signed_message_is_named_as_such(text: str, problem: str) -> None:
    found = signature_problem(text, b"k" * 32)
    assert found is not None
    assert problem in found


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "null"),
        (True, "boolean"),
        (0, "number"),
        (1.5, "number"),
        ("", "empty string"),
        ([], "array"),
        ({}, "object"),
    ],
)
def test_a_listing_entry_field_of_the_wrong_kind_is_named_by_its_json_kind(value: object, kind: str) -> None:
    entry = {
        "contentType": "Audit.Exchange",
        "contentId": "x",
        "contentUri": "https://x/audit/x",
        "contentCreated": "2026-11-22T12:00:00Z",
        "contentExpiration": "2026-11-29T12:00:00Z",
    }
    with pytest.raises(ListingEntryError) as caught:
        ContentBlob.from_api(entry | {"contentUri": value})
    expected = "contentUri is missing" if value is None else f"contentUri is a JSON {kind}, not a non-empty string"
    assert caught.value.problem == expected
    assert caught.value.content_id == "x"


# -- the ledger ---------------------------------------------------------------------------------------------


class Racing:
    """A ledger table on Azurite where another delivery wins the next ``conflicts`` conditional updates."""

    def __init__(self, table: TableClient, conflicts: int) -> None:
        self._table = table
        self.conflicts = conflicts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def update_entity(self, entity: dict[str, Any], **kwargs: Any) -> Any:
        if self.conflicts and kwargs.get("match_condition") is not None:
            self.conflicts -= 1
            raise ResourceModifiedError("another delivery changed the row")
        return self._table.update_entity(entity, **kwargs)


def test_a_claim_lapses_at_its_end_and_not_before(table: TableClient) -> None:
    ledger = Ledger(table)
    ledger.claim(ledger_task(), "msg-1", NOW, LEASE)
    assert ledger.claim(ledger_task(), "msg-2", NOW + LEASE - dt.timedelta(seconds=1), LEASE).status is ClaimStatus.BUSY
    assert ledger.claim(ledger_task(), "msg-2", NOW + LEASE, LEASE).status is ClaimStatus.CLAIMED


def test_a_take_over_that_loses_one_race_tries_again(table: TableClient) -> None:
    Ledger(table).claim(ledger_task(), "msg-1", NOW, LEASE)
    racing = Racing(table, conflicts=1)
    later = NOW + LEASE + dt.timedelta(minutes=1)
    assert Ledger(cast(TableClient, racing)).claim(ledger_task(), "msg-2", later, LEASE).status is ClaimStatus.CLAIMED
    assert racing.conflicts == 0


def test_a_take_over_that_keeps_losing_gives_up_busy(table: TableClient) -> None:
    Ledger(table).claim(ledger_task(), "msg-1", NOW, LEASE)
    racing = Racing(table, conflicts=100)
    later = NOW + LEASE + dt.timedelta(minutes=1)
    assert Ledger(cast(TableClient, racing)).claim(ledger_task(), "msg-2", later, LEASE).status is ClaimStatus.BUSY
    assert racing.conflicts == 97, "three passes, then it leaves the blob to the winner"
    assert Ledger(table).get(ledger_task())["Owner"] == "msg-1"  # type: ignore[index]


def test_a_renewal_extends_a_held_claim_and_fails_once_it_was_taken_over(table: TableClient) -> None:
    ledger = Ledger(table)
    claim = ledger.claim(ledger_task(), "msg-1", NOW, LEASE)
    renewed = ledger.renew(claim, NOW + 2 * LEASE)
    assert renewed is not None
    assert ledger.claim(ledger_task(), "msg-2", NOW + LEASE + dt.timedelta(minutes=1), LEASE).status is ClaimStatus.BUSY
    assert ledger.claim(ledger_task(), "msg-2", NOW + 2 * LEASE, LEASE).status is ClaimStatus.CLAIMED
    assert ledger.renew(renewed, NOW + 3 * LEASE) is None, "the row changed: the claim is no longer ours"
    busy = ledger.claim(ledger_task(), "msg-3", NOW + 2 * LEASE, LEASE)
    assert busy.status is ClaimStatus.BUSY
    assert ledger.renew(busy, NOW + 3 * LEASE) is None, "only a claim is renewed"
    held = ledger.claim(ledger_task("other"), "msg-1", NOW, LEASE)
    assert ledger.renew(replace(held, status=ClaimStatus.DONE), NOW + 3 * LEASE) is None


def test_a_release_by_a_delivery_that_was_taken_over_leaves_the_new_claim_alone(table: TableClient) -> None:
    ledger = Ledger(table)
    stale = ledger.claim(ledger_task(), "msg-1", NOW, LEASE)
    assert ledger.claim(ledger_task(), "msg-2", NOW + LEASE, LEASE).status is ClaimStatus.CLAIMED
    ledger.release(stale, "sink down")
    row = Ledger(table).get(ledger_task())
    assert row is not None
    assert (row["State"], row["Owner"]) == ("claimed", "msg-2")
    assert ledger.claim(ledger_task(), "msg-3", NOW + LEASE, LEASE).status is ClaimStatus.BUSY


def test_errors_kept_in_the_ledger_are_cut_to_a_thousand_characters(table: TableClient) -> None:
    ledger = Ledger(table)
    ledger.release(ledger.claim(ledger_task("a"), "m", NOW, LEASE), "x" * 5000)
    ledger.mark_lost(ledger.claim(ledger_task("b"), "m", NOW, LEASE), "y" * 5000, NOW)
    assert ledger.get(ledger_task("a"))["Error"] == "x" * 1000  # type: ignore[index]
    assert ledger.get(ledger_task("b"))["Error"] == "y" * 1000  # type: ignore[index]


def test_a_done_row_keeps_what_a_resend_needs(table: TableClient) -> None:
    ledger = Ledger(table)
    fetch = ledger_task()
    ledger.mark_done(ledger.claim(fetch, "m", NOW, LEASE), 7, NOW + H)
    row = ledger.get(fetch)
    assert row is not None
    assert (row["State"], row["Records"], row["ContentId"], row["ContentUri"]) == (
        "done", 7, fetch.content_id, fetch.content_uri
    )  # fmt: skip
    assert (utc(row["ContentCreated"]), utc(row["DoneAt"])) == (NOW, NOW + H)


def test_list_done_returns_the_done_rows_created_in_the_half_open_span(table: TableClient) -> None:
    ledger = Ledger(table)
    since, until = NOW, NOW + H

    def at(name: str, created: dt.datetime, tenant: str = TID) -> FetchTask:
        return FetchTask(tenant, "Audit.Exchange", name, f"https://x/audit/{name}", created, created + 7 * 24 * H)

    for fetch in (
        at("before", since - dt.timedelta(seconds=1)),
        at("first", since),
        at("last", until - dt.timedelta(seconds=1)),
        at("after", until),
        at("other tenant", since, "99999999-2222-4333-8444-555555555555"),
    ):
        ledger.mark_done(ledger.claim(fetch, "m", NOW, LEASE), 3, NOW)
    ledger.claim(at("not done", since), "m", NOW, LEASE)

    rows = sorted(ledger.list_done(TID, since, until), key=lambda r: str(r["ContentId"]))
    assert [r["ContentId"] for r in rows] == ["first", "last"]
    assert utc(rows[0]["ContentExpiration"]) == since + 7 * 24 * H
    assert rows[0]["ContentUri"] == "https://x/audit/first"
    assert rows[0]["Records"] == 3


# -- the recent-blob set ------------------------------------------------------------------------------------


def test_pruning_keeps_a_blob_created_exactly_at_the_edge_and_counts_only_what_room_forced_out() -> None:
    recent = RecentBlobs()
    recent.add("edge", NOW)
    recent.add("older", NOW - dt.timedelta(seconds=1))
    assert recent.prune(NOW) == 0
    assert "edge" in recent
    assert "older" not in recent


def test_one_blob_past_the_bound_forgets_the_oldest() -> None:
    recent = RecentBlobs()
    for i in range(RECENT_MAX_ENTRIES + 1):
        recent.add(f"blob-{i}", NOW + dt.timedelta(seconds=i))
    assert recent.prune(NOW) == 1
    assert len(recent) == RECENT_MAX_ENTRIES
    assert "blob-0" not in recent


def test_adding_a_blob_again_keeps_its_latest_time() -> None:
    recent = RecentBlobs()
    recent.add("again", NOW - H)
    recent.add("again", NOW)
    recent.prune(NOW)
    assert "again" in recent


def test_a_truncated_set_is_read_up_to_its_last_whole_entry_and_an_empty_one_still_writes_recent() -> None:
    recent = RecentBlobs()
    recent.add("a", NOW)
    recent.add("b", NOW)
    data = recent.to_bytes()
    again = RecentBlobs.from_bytes(data + data[:5])
    assert len(again) == 2
    assert "a" in again
    assert RecentBlobs().to_properties() == {"Recent": b""}


# -- deferral -----------------------------------------------------------------------------------------------

DAY = dt.timedelta(days=1)
MINUTE = dt.timedelta(minutes=1)


@pytest.mark.parametrize(
    ("attempt", "maximum", "delay"),
    [
        (0, H, MINUTE),
        (1, H, MINUTE),
        (2, H, 2 * MINUTE),
        (4, H, 8 * MINUTE),
        (7, H, H),  # 64 minutes, capped
        (29, 30 * DAY, MAX_VISIBILITY),  # the queue's longest invisibility, whatever the setting
        (MAX_ATTEMPT, H, H),
    ],
)
def test_the_backoff_doubles_from_a_minute_up_to_its_cap(
    attempt: int, maximum: dt.timedelta, delay: dt.timedelta
) -> None:
    assert backoff_delay(attempt, maximum) == delay


def test_a_retry_after_longer_than_the_backoff_is_honoured_up_to_the_cap() -> None:
    task = replace(ledger_task(), attempt=1)
    assert plan_deferral(task, NOW, H, retry_after=600).delay == 10 * MINUTE
    assert plan_deferral(task, NOW, H, retry_after=7200).delay == H
    assert plan_deferral(task, NOW, H, retry_after=0).delay == MINUTE


def test_no_deferral_runs_past_an_hour_before_the_blob_expires() -> None:
    task = replace(ledger_task(), attempt=10)  # 512 minutes of backoff
    three_hours_left = task.content_expiration - 3 * H
    plan = plan_deferral(task, three_hours_left, DAY)
    assert (plan.delay, plan.next_attempt_at, plan.near_expiry) == (2 * H, three_hours_left + 2 * H, True)
    past_the_margin = task.content_expiration - 30 * MINUTE
    assert plan_deferral(task, past_the_margin, DAY).delay == MINUTE, "then every minute until it expires"
    assert plan_deferral(task, task.content_expiration - EXPIRY_WARNING, DAY).near_expiry
    assert not plan_deferral(task, task.content_expiration - EXPIRY_WARNING - MINUTE, DAY).near_expiry


def test_only_the_last_delivery_of_a_sink_or_api_failure_is_deferred_and_says_what_it_waits_for() -> None:
    named = SinkTransientError("503")
    named.sink_name = "http"  # type: ignore[attr-defined]
    assert waiting_for(named, last_delivery=True) == "sink http"
    assert waiting_for(SinkTransientError("503"), last_delivery=True) == "a sink"
    assert waiting_for(ApiTransientError("500"), last_delivery=True) == "the Management Activity API"
    assert waiting_for(named, last_delivery=False) is None
    assert waiting_for(RetryableError("storage"), last_delivery=True) is None


# -- the deferral report (status and health) ------------------------------------------------------------


def _deferred(
    content_id: str, attempt: int, next_attempt: dt.datetime, expiration: dt.datetime, cause: str
) -> DeferredBlob:
    return DeferredBlob(
        TENANT.tenant_id, "Audit.Exchange", content_id, "sink splunk", cause, attempt, next_attempt, expiration
    )


def test_the_deferral_report_names_the_soonest_attempt_the_latest_cause_and_the_nearest_expiry() -> None:
    at = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
    stream = StreamReport(TENANT.tenant_id, "Audit.Exchange")
    blobs = [
        _deferred("a", 1, at + dt.timedelta(minutes=40), at + dt.timedelta(days=5), "HTTP 503 (old)"),
        _deferred("b", 3, at + dt.timedelta(minutes=20), at + EXPIRY_WARNING - dt.timedelta(hours=1), "HTTP 503 old"),
        _deferred("c", 2, at + dt.timedelta(minutes=90), at + dt.timedelta(days=6), "HTTP 401 (newest)"),
    ]
    report_deferrals(StatusReport(at, HealthPolicy(), "q", "p", streams=[stream]), blobs, at)
    [entry] = stream.deferred
    assert entry["blobs"] == 3
    assert entry["next_attempt_at"] == "2026-12-05T12:20:00Z", "the soonest next attempt"
    assert entry["cause"] == "HTTP 401 (newest)", "the cause of the blob deferred last (latest next attempt)"
    assert stream.degraded == ["3 blobs waiting for sink splunk (next attempt 12:20): HTTP 401 (newest)"]
    [problem] = stream.problems
    assert problem == expiry_message(EXPIRY_WARNING - dt.timedelta(hours=1), "sink splunk", "HTTP 401 (newest)")


def test_a_deferral_cause_is_kept_up_to_its_limit_in_the_status_table(make_collector: Callable[..., Collector]) -> None:
    collector = make_collector()
    task = FetchTask(
        TENANT.tenant_id, "Audit.Exchange", "blob-1", "https://x/blob-1", now(), now() + dt.timedelta(days=7)
    )
    long_cause = " ".join(["word"] * 240)  # 1,199 characters
    deferral = plan_deferral(task, now(), MAX_VISIBILITY)
    collector.deferrals.record(task, deferral, "sink splunk", long_cause, now())
    [row] = collector.deferrals.list_deferred()
    assert 900 < len(row.cause) <= MAX_CAUSE_CHARS
