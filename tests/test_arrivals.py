"""The arrival table on Azurite: per-blob push/poll records, their counts, the refusal counter, webhook verdicts."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.data.tables import TableClient

from o365collector.arrivals import ArrivalStore, shown_address, webhook_state, webhook_verdicts
from o365collector.azurite import Azurite

TID = "11111111-2222-4333-8444-555555555555"
TYPE = "Audit.Exchange"
NOW = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)


@pytest.fixture
def table(azurite: Azurite) -> Iterator[TableClient]:
    client = TableClient.from_connection_string(azurite.connection_string, "arr" + uuid.uuid4().hex[:10])
    client.create_table()
    yield client
    client.delete_table()


@pytest.fixture
def store(table: TableClient) -> ArrivalStore:
    return ArrivalStore(table)


def test_a_blob_the_lister_enqueued_counts_as_seen_for_a_later_push(store: ArrivalStore) -> None:
    assert not store.seen(TID, TYPE, "c1")
    store.mark(TID, TYPE, "c1", NOW - dt.timedelta(hours=1), NOW, via="poll")
    assert store.seen(TID, TYPE, "c1")
    assert not store.seen(TID, TYPE, "c2")


def test_counts_tell_push_only_poll_only_and_both_apart_and_keep_the_latest_push(store: ArrivalStore) -> None:
    created = NOW - dt.timedelta(hours=1)
    store.mark(TID, TYPE, "pushed", created, NOW - dt.timedelta(minutes=30), via="push")
    store.mark(TID, TYPE, "both", created, NOW - dt.timedelta(minutes=10), via="push")
    store.mark(TID, TYPE, "both", created, NOW - dt.timedelta(minutes=5), via="poll")  # a merge: keeps PushedAt
    store.mark(TID, TYPE, "polled", created, NOW, via="poll")
    store.mark(TID, TYPE, "early", created, NOW - dt.timedelta(minutes=50), via="push")
    counts = store.counts(NOW)[(TID, TYPE)]
    assert (counts.pushed_only, counts.polled_only, counts.both) == (2, 1, 1)
    assert counts.last_push_at == NOW - dt.timedelta(minutes=10)


def test_counts_leave_out_blobs_created_before_the_seven_day_retention(store: ArrivalStore) -> None:
    store.mark(TID, TYPE, "old", NOW - dt.timedelta(days=8), NOW, via="push")
    store.mark(TID, TYPE, "new", NOW - dt.timedelta(days=6), NOW, via="push")
    assert store.counts(NOW)[(TID, TYPE)].pushed_only == 1


def test_refusals_add_up_by_status(store: ArrivalStore) -> None:
    for status in (401, 400, 401):
        assert store.record_refused(status, f"reason {status}", NOW)
    counts = store.refused()
    assert (counts.bad_auth, counts.bad_body, counts.last_status, counts.last_reason) == (2, 1, 401, "reason 401")


class RacingTable:
    """A table whose first read of the refusal row is followed by another receiver's count (a lost race)."""

    def __init__(self, table: TableClient, rival: ArrivalStore) -> None:
        self._table = table
        self._rival: ArrivalStore | None = rival

    def get_entity(self, *args: Any, **kwargs: Any) -> Any:
        row = self._table.get_entity(*args, **kwargs)
        if self._rival is not None:
            rival, self._rival = self._rival, None
            assert rival.record_refused(400, "the rival's", NOW)
        return row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def test_a_refusal_count_that_loses_a_race_is_retried_and_neither_count_is_lost(table: TableClient) -> None:
    ArrivalStore(table).record_refused(401, "first", NOW)
    racing = ArrivalStore(RacingTable(table, ArrivalStore(table)))  # type: ignore[arg-type]
    assert racing.record_refused(401, "second", NOW)
    counts = ArrivalStore(table).refused()
    assert (counts.bad_auth, counts.bad_body) == (2, 1)


def test_webhook_states_are_stored_per_stream_without_the_function_key(store: ArrivalStore) -> None:
    hook = {"address": "https://fn.example.net/api/webhook?code=SECRETKEY", "status": "Disabled"}
    store.record_webhook(TID, {"contentType": TYPE, "webhook": hook}, NOW)
    state = store.webhooks()[(TID, TYPE)]
    assert (state.state, state.address, state.seen_at) == ("disabled", "https://fn.example.net/api/webhook", NOW)


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("https://fn.example.net/api/webhook?code=SECRETKEY", "https://fn.example.net/api/webhook"),
        ("https://fn.example.net/api/webhook#SECRET", "https://fn.example.net/api/webhook"),
    ],
)
def test_a_webhook_address_is_shown_without_its_query_or_fragment(address: str, shown: str) -> None:
    assert shown_address(address) == shown
    assert webhook_state({"webhook": {"address": address, "status": "enabled"}}) == ("enabled", shown)


def subscription(content_type: str, status: str | None) -> dict[str, Any]:
    hook = {"address": "https://h.example/api/webhook", "status": status} if status else None
    return {"contentType": content_type, "webhook": hook}


@pytest.mark.parametrize(
    ("push", "status", "expected"),
    [
        (False, None, []),  # push mode off and no webhook anywhere: nothing to say
        (False, "disabled", [False]),  # off here, but a webhook the service disabled still fails
        (False, "enabled", [True]),
        (True, None, [False]),  # push mode on and no webhook: fails with the command that sets it
        (True, "disabled", [False]),
        (True, "expired", [False]),
        (True, "enabled", [True]),
    ],
)
def test_webhook_verdicts_pass_only_an_enabled_webhook(push: bool, status: str | None, expected: list[bool]) -> None:
    verdicts = webhook_verdicts((TYPE,), [subscription(TYPE, status)], push=push)
    assert [passed for passed, _ in verdicts] == expected
    for passed, detail in verdicts:
        assert passed or f"subscriptions start --content-type {TYPE} --webhook <URL>" in detail


def test_a_stream_without_a_webhook_is_not_flagged_when_push_mode_is_off() -> None:
    subscriptions = [subscription(TYPE, "enabled"), subscription("DLP.All", None)]
    assert [p for p, _ in webhook_verdicts((TYPE, "DLP.All"), subscriptions, push=False)] == [True]
    assert [p for p, _ in webhook_verdicts((TYPE, "DLP.All"), subscriptions, push=True)] == [True, False]
