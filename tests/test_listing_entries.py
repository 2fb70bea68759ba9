"""Listing entries are checked one by one: a bad entry is refused and reported, the others are collected.

Unit cases for ``ContentBlob.from_api``, then a listing served by the simulator (several pages) with
a malformed entry, an entry that is not an object and an entry of another content type, collected
through Azurite to a loopback receiver.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

import orjson
import pytest

from o365collector.health import build_report
from o365collector.lister import SUMMARY_MESSAGE
from o365collector.models import ContentBlob, ListingEntryError
from o365collector.running import run_once
from o365collector.simulator import Simulator
from tests.receivers import HttpReceiver
from tests.support import TENANT

TID = TENANT.tenant_id
CREATED = "2026-11-22T10:00:00.123Z"
GOOD: dict[str, Any] = {
    "contentType": "Audit.Exchange",
    "contentId": "20261122100000123$abc$audit_exchange$Audit_Exchange$emea0001",
    "contentUri": "https://manage.office.com/api/v1.0/t/activity/feed/audit/abc",
    "contentCreated": CREATED,
    "contentExpiration": "2026-11-29T10:00:00.123Z",
}
CONTENT_ID = GOOD["contentId"]


def test_a_well_formed_entry_is_read() -> None:
    blob = ContentBlob.from_api(GOOD)
    assert blob.content_id == CONTENT_ID
    assert blob.content_created == dt.datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("entry", "problem", "content_id"),
    [
        ("a string", "the entry is a JSON string, not an object", None),
        ([GOOD], "the entry is a JSON array, not an object", None),
        (None, "the entry is a JSON null, not an object", None),
        (7, "the entry is a JSON number, not an object", None),
        ({k: v for k, v in GOOD.items() if k != "contentUri"}, "contentUri is missing", CONTENT_ID),
        (GOOD | {"contentId": 12}, "contentId is a JSON number, not a non-empty string", None),
        (GOOD | {"contentId": ""}, "contentId is a JSON empty string, not a non-empty string", None),
        (GOOD | {"contentCreated": "yesterday <b>"}, "contentCreated is not an ISO 8601 timestamp", CONTENT_ID),
        (GOOD | {"contentExpiration": None}, "contentExpiration is missing", CONTENT_ID),
        (GOOD | {"contentType": ["Audit.Exchange"]}, "contentType is a JSON array, not a non-empty string", CONTENT_ID),
        (
            {"contentId": "x", "contentCreated": True},
            "contentType is missing; contentUri is missing; contentCreated is a JSON boolean, not a non-empty "
            "string; contentExpiration is missing",
            "x",
        ),
    ],
)
def test_a_bad_entry_is_refused_with_every_problem_named_and_no_value_echoed(
    entry: object, problem: str, content_id: str | None
) -> None:
    with pytest.raises(ListingEntryError) as caught:
        ContentBlob.from_api(entry)
    assert str(caught.value) == problem
    assert caught.value.content_id == content_id
    assert "<b>" not in str(caught.value)


# -- across the simulator and Azurite -------------------------------------------------------------------



def test_bad_entries_are_refused_and_reported_while_every_other_blob_ships_and_the_checkpoint_advances(
    simulator: Simulator, receiver: HttpReceiver, make_collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    simulator.set_clock(lambda: now)
    base = now - dt.timedelta(hours=2)
    rewrites: dict[int, Any] = {
        3: lambda e: {k: v for k, v in e.items() if k != "contentUri"},  # malformed, on the first page
        8: lambda e: e | {"contentType": "Audit.SharePoint"},  # another content type, on the second page
        11: lambda e: "not an object",
        12: lambda e: e | {"contentId": "evil\nFAKE LOG LINE", "contentCreated": "soon"},
    }
    blobs = [
        simulator.add_blob(
            TID,
            "Audit.Exchange",
            base + dt.timedelta(minutes=i),
            [{"Id": f"record-{i}", "Operation": "Send", "Workload": "Exchange", "RecordType": 2}],
            listing_entry=rewrites.get(i),
        )
        for i in range(15)
    ]
    collector = make_collector(
        clock=lambda: now,
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        O365_CONTENT_TYPES="Audit.Exchange",
        O365_START_TIME=(base - dt.timedelta(minutes=30)).isoformat(),
    )
    with caplog.at_level(logging.INFO, logger="o365collector.lister"):
        assert run_once(collector) == 0, "the stream does not fail for its bad entries"

    expected = Counter(f"record-{i}" for i in range(15) if i not in rewrites)
    assert Counter(r["Id"] for r in receiver.records) == expected
    checkpoint = collector.checkpoints.get(TID, "Audit.Exchange")
    assert checkpoint.cursor == now - dt.timedelta(minutes=5), "the checkpoint moved past the bad entries"

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4
    text = [r.getMessage() for r in errors]
    assert "entry 3 of the" in text[0]
    assert f"(contentId {blobs[3].content_id}): contentUri is missing" in text[0]
    assert "entry 8 of the" in text[1]
    assert f"(contentId {blobs[8].content_id}): its contentType is not Audit.Exchange" in text[1]
    assert "entry 11 of the" in text[2]
    assert "the entry is a JSON string, not an object" in text[2]
    assert "(contentId evil\\nFAKE LOG LINE): contentCreated is not an ISO 8601 timestamp" in text[3]
    assert all("\n" not in t for t in text)
    assert errors[0].content_id == blobs[3].content_id  # type: ignore[attr-defined]
    assert all(r.content_type == "Audit.Exchange" for r in errors)  # type: ignore[attr-defined]
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(SUMMARY_MESSAGE)]
    assert orjson.loads(summary[len(SUMMARY_MESSAGE) :])["refused_entries"] == 4

    report = build_report(collector)
    (stream,) = orjson.loads(report.to_json())["streams"]
    assert stream["last_run"]["refused_entries"] == 4
    refused = stream["refused_entries"]
    assert refused["count"] == 4
    assert [line.split(":")[0].split(" listing")[0].split(" ")[1] for line in refused["entries"]] == [
        "3", "8", "11", "12"
    ]  # fmt: skip
    assert not report.healthy
    assert report.problems == [
        f"{TID} Audit.Exchange: 4 listing entries refused 0 s ago (malformed, or of another content type): "
        "the content they name was not collected (the lister's ERROR log names each one)"
    ]
