"""List messages (``o365collector.listing_queue``): what the list queue carries is validated before anything is listed.

A list message comes from outside (anything that can write to the queue); one that is not ours is refused with
``ListMessageError`` and dropped by the trigger, never redelivered until it is poisoned.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import cast

import orjson
import pytest

from o365collector import listing_queue
from o365collector.listing_queue import MAX_MESSAGE_CHARS, ListMessage, ListMessageError, run_list_message
from o365collector.runtime import Collector

TID = "11111111-2222-4333-8444-555555555555"


@pytest.mark.parametrize(
    "message",
    [
        ListMessage(TID),
        ListMessage(TID, ("Audit.Exchange", "DLP.All")),
        ListMessage(TID, ("Audit.General",), "continuation:1234"),
    ],
)
def test_a_list_message_round_trips_with_its_content_types_and_handover(message: ListMessage) -> None:
    text = message.to_message()
    assert ListMessage.from_message(text) == message
    assert ListMessage.from_message(text.encode()) == message
    body = orjson.loads(text)
    assert body["v"] == 1
    assert ("handed" in body) is bool(message.handed)
    assert ("contentTypes" in body) is bool(message.content_types)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "version None is not supported"),
        (orjson.dumps({"tenantId": TID}).decode(), "version None"),
        (orjson.dumps({"v": 2, "tenantId": TID}).decode(), "version 2 is not supported"),
        (orjson.dumps({"v": "1", "tenantId": TID}).decode(), "version 1 is not supported"),
        (orjson.dumps({"v": 1}).decode(), "without a tenantId"),
        (orjson.dumps({"v": 1, "tenantId": ""}).decode(), "without a tenantId"),
        (orjson.dumps({"v": 1, "tenantId": 7}).decode(), "without a tenantId"),
        (orjson.dumps({"v": 1, "tenantId": TID, "contentTypes": "Audit.Exchange"}).decode(), "malformed"),
        (orjson.dumps({"v": 1, "tenantId": TID, "contentTypes": ["Audit.Exchange", 3]}).decode(), "malformed"),
        (orjson.dumps({"v": 1, "tenantId": TID, "handed": 5}).decode(), "malformed"),
    ],
)
def test_a_message_that_is_not_ours_is_refused_saying_why(body: str, fragment: str) -> None:
    with pytest.raises(ListMessageError, match=fragment):
        ListMessage.from_message(body)


def test_an_oversized_message_is_refused_before_it_is_parsed() -> None:
    padded = orjson.dumps({"v": 1, "tenantId": TID, "contentTypes": ["Audit.Exchange"] * 400}).decode()
    assert len(padded) > MAX_MESSAGE_CHARS
    with pytest.raises(ListMessageError, match="characters"):
        ListMessage.from_message(padded)
    at_limit = orjson.dumps({"v": 1, "tenantId": TID, "handed": ""}).decode()
    at_limit = at_limit.replace('"handed":""', '"handed":"' + "x" * (MAX_MESSAGE_CHARS - len(at_limit)) + '"')
    assert len(at_limit) == MAX_MESSAGE_CHARS
    assert ListMessage.from_message(at_limit).tenant_id == TID


def test_the_trigger_drops_a_message_that_is_not_ours_with_one_error_instead_of_retrying_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The message is refused before the collector lists anything: only its message key is read.
    stand_in = SimpleNamespace(settings=SimpleNamespace(message_key=None))
    monkeypatch.setattr(listing_queue, "collector", lambda: stand_in)
    with caplog.at_level(logging.ERROR, logger="o365collector.listing_queue"):
        assert run_list_message(body="\x1b[31mnot json", message_id="m-1\n", dequeue_count=2) is None
    [record] = [r for r in caplog.records if r.name == "o365collector.listing_queue"]
    assert record.levelno == logging.ERROR
    assert "list message m-1\\n dropped (delivery 2)" in record.getMessage()


class Registry:
    """A collector whose table registry gained a tenant since it was last read (seen only on a refresh)."""

    def __init__(self, added: str) -> None:
        self.added = added
        self.refreshes: list[bool] = []

    def tenants(self, *, refresh: bool = True) -> tuple[SimpleNamespace, ...]:
        self.refreshes.append(refresh)
        return (SimpleNamespace(tenant_id="known"),) + ((SimpleNamespace(tenant_id=self.added),) if refresh else ())


def test_a_message_for_a_tenant_added_since_the_registry_was_read_rereads_it_once() -> None:
    registry = Registry(TID)
    found = listing_queue._tenant(cast(Collector, registry), TID)
    assert found is not None
    assert found.tenant_id == TID
    assert registry.refreshes == [False, True]
    registry.refreshes.clear()
    assert listing_queue._tenant(cast(Collector, registry), "known") is not None
    assert registry.refreshes == [False], "a known tenant costs no registry read"
    assert listing_queue._tenant(cast(Collector, registry), "gone") is None
