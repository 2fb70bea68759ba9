"""What the sources' catalog, selection and per-stream record helpers promise, pinned where nothing else did.

The source catalog is released data: a stream's name, its source's retention (how far back windows may
reach) and the permission ``check`` names never change silently. Source names from settings are echoed
cut short. The Graph record helpers the sinks share read the record's own ``id`` and time only when usable,
and an Elasticsearch ``_id`` stays within the 512 bytes the cluster allows. Request counters give each
thread its own share and stop counting into it once its ``counting()`` block ends. Pure functions only.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from o365collector.errors import ConfigError
from o365collector.models import CONTENT_TYPES
from o365collector.request_counts import RequestCounts
from o365collector.sinks import elastic_graph
from o365collector.sinks.streams import record_id
from o365collector.sources.catalog import (
    DIRECTORY_AUDITS_STREAM,
    MESSAGE_TRACE_STREAM,
    SIGNINS_STREAM,
    SOURCES,
    labels_for,
    source_of,
)
from o365collector.sources.selection import parse_sources

TENANT = "11111111-2222-4333-8444-555555555555"

# --- the catalog: released facts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "streams", "days", "permission", "global_only"),
    [
        # The Management Activity API keeps content 7 days (start time "no more than 7 days in the past").
        ("audit", CONTENT_TYPES, 7, "ActivityFeed.Read (Office 365 Management APIs)", False),
        ("signins", (SIGNINS_STREAM,), 30, "AuditLog.Read.All (Microsoft Graph)", False),
        ("directoryaudits", (DIRECTORY_AUDITS_STREAM,), 30, "AuditLog.Read.All (Microsoft Graph)", False),
        # Graph message trace: 90 days back, Microsoft Graph's global service only.
        ("messagetrace", (MESSAGE_TRACE_STREAM,), 90, "ExchangeMessageTrace.Read.All (Microsoft Graph)", True),
    ],
)
def test_each_source_has_its_streams_retention_and_permission(
    name: str, streams: tuple[str, ...], days: int, permission: str, global_only: bool
) -> None:
    spec = SOURCES[name]
    assert spec.streams == streams
    assert spec.retention == dt.timedelta(days=days)
    assert spec.permission == permission
    assert spec.global_cloud_only is global_only
    for stream in streams:
        assert source_of(stream) is spec


@pytest.mark.parametrize("stream", ["Audit.Foo", "", "entra.signins", "Exchange.MessageTrace "])
def test_a_stream_no_source_has_has_no_source_and_the_audit_feeds_labels(stream: str) -> None:
    """A forged or misrouted stream name is not taken for any source; its labels are the audit feed's."""
    assert source_of(stream) is None
    assert labels_for(stream) == labels_for("Audit.Exchange")
    assert labels_for(stream).splunk_sourcetype == "o365:management:activity"


# --- selection: text from settings is echoed cut short ----------------------------------------------------


def test_an_unknown_source_name_is_echoed_cut_to_40_characters() -> None:
    """A pasted blob in O365_SOURCES is named in the error by its first 40 characters only."""
    with pytest.raises(ConfigError) as caught:
        parse_sources("audit, " + "y" * 39 + "z" * 5000, "O365_SOURCES", cloud=None)
    assert caught.value.setting == "O365_SOURCES"
    text = str(caught.value)
    assert f"unknown source '{'y' * 39}z' (expected one of" in text
    assert len(text) < 200


# --- record ids and times of Graph records ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "stream", "expected"),
    [
        ({"id": "66ea54eb"}, SIGNINS_STREAM, "66ea54eb"),
        ({"id": " a1 "}, SIGNINS_STREAM, " a1 "),  # taken as served: two ids never merge into one
        ({"id": 42}, DIRECTORY_AUDITS_STREAM, "42"),
        ({"id": True}, SIGNINS_STREAM, None),
        ({"id": False}, MESSAGE_TRACE_STREAM, None),
        ({"id": ""}, SIGNINS_STREAM, None),
        ({"id": None}, SIGNINS_STREAM, None),
        ({"id": 4.5}, SIGNINS_STREAM, None),
        ({"id": ["a"]}, SIGNINS_STREAM, None),
        ({"Id": "audit-style"}, SIGNINS_STREAM, None),  # a Graph record's id is ``id``
        ({"Id": "6f5b", "id": "other"}, "Audit.Exchange", "6f5b"),  # an audit record's is ``Id``
        ({"id": "graph-style"}, "Audit.Exchange", None),
    ],
)
def test_record_id_is_the_streams_own_id_field_when_usable(
    record: dict[str, Any], stream: str, expected: str | None
) -> None:
    assert record_id(record, stream) == expected


@pytest.mark.parametrize(
    ("record_id_value", "expected"),
    [
        ("x" * (512 - len(TENANT) - 1), True),  # exactly 512 bytes with the tenant: the most _id allows
        ("x" * (512 - len(TENANT)), False),
        ("é" * 300, False),  # 300 characters but 600 bytes: the limit is in bytes
        ("é" * ((512 - len(TENANT) - 1) // 2), True),
        (7, True),
        ("", False),
        (True, False),
    ],
)
def test_a_graph_document_id_is_tenant_scoped_and_at_most_512_bytes(record_id_value: object, expected: bool) -> None:
    """Too long an _id would fail the whole document: it is left to the cluster instead."""
    got = elastic_graph.document_id({"id": record_id_value}, SIGNINS_STREAM, TENANT)
    assert got == (f"{TENANT}:{record_id_value}" if expected else None)
    if got is not None:
        assert len(got.encode()) <= 512


@pytest.mark.parametrize(
    ("index", "namespace"),
    [
        ("logs-o365.audit-prod", "prod"),
        ("logs-o365.audit-default", "default"),
        ("o365-audit", "default"),
        ("logs-o365.audit-prod-eu", "default"),  # not a data stream name: namespaces hold no '-'
        ("logs-o365.audit-", "default"),
        ("my-logs-o365.audit-prod", "default"),
    ],
)
def test_graph_data_streams_share_the_audit_data_streams_namespace_only_when_it_is_one(
    index: str, namespace: str
) -> None:
    assert elastic_graph.namespace_of(index) == namespace
    assert elastic_graph.data_stream(SIGNINS_STREAM, namespace) == f"logs-o365collector.entra_signins-{namespace}"


@pytest.mark.parametrize("when", ["", None, 1772366281, {"at": "2026-03-01T11:58:01Z"}])
def test_a_graph_record_without_a_usable_time_gets_no_timestamp(when: object) -> None:
    """An empty or non-text time is left out (the cluster then refuses or stamps it), never sent as ``""``."""
    record = {"id": "a1", "createdDateTime": when}
    document = orjson.loads(
        elastic_graph.graph_document(record, orjson.dumps(record), SIGNINS_STREAM, "prod", preserve_original=False)
    )
    assert "@timestamp" not in document
    assert document["entra"]["signin"] == record


@pytest.mark.parametrize("preserve", [True, False])
def test_message_trace_documents_carry_the_preserve_original_tag_only_when_asked(preserve: bool) -> None:
    record = {"id": "m1", "receivedDateTime": "2026-03-01T11:55:42Z", "subject": "hello"}
    document = orjson.loads(
        elastic_graph.graph_document(
            record, orjson.dumps(record), MESSAGE_TRACE_STREAM, "default", preserve_original=preserve
        )
    )
    assert document["@timestamp"] == "2026-03-01T11:55:42Z"
    assert orjson.loads(document["message"]) == record
    if preserve:
        assert document["tags"] == ["preserve_original_event"]
    else:
        assert "tags" not in document
    # Sign-ins and directory audits keep the record as an object: the tag is the message trace pipeline's.
    signin = orjson.loads(
        elastic_graph.graph_document(
            record, orjson.dumps(record), SIGNINS_STREAM, "default", preserve_original=preserve
        )
    )
    assert "tags" not in signin


# --- request counters -------------------------------------------------------------------------------------


@dataclass
class Counts:
    calls: int = 0
    throttled: int = 0


def test_a_counting_block_counts_only_its_own_thread_and_only_while_it_lasts() -> None:
    counts = RequestCounts(Counts)
    counts.count("calls")  # before any block: the total only
    with counts.counting() as first:
        counts.count("calls")
        counts.count("throttled")
    counts.count("calls")  # after the block: not this block's share any more
    assert first == Counts(calls=1, throttled=1)
    with counts.counting() as second:
        counts.count("calls")
    assert second == Counts(calls=1)
    assert first == Counts(calls=1, throttled=1)

    shares: dict[str, Counts] = {}
    started = threading.Barrier(2)

    def list_stream(name: str, calls: int) -> None:
        with counts.counting() as mine:
            started.wait(timeout=10)  # both blocks open at once
            for _ in range(calls):
                counts.count("calls")
            started.wait(timeout=10)
            shares[name] = mine

    threads = [threading.Thread(target=list_stream, args=(n, c)) for n, c in (("a", 3), ("b", 5))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert shares == {"a": Counts(calls=3), "b": Counts(calls=5)}
    assert counts.total == Counts(calls=4 + 8, throttled=1)
