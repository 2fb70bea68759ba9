"""ContentRecords: a blob's records held as the bytes served, split soundly, parsed only when read,
batched straight from those bytes into exactly the batches serializing them would give, and
validated in the background without a single batch leaving before the validation passed."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from o365collector.content import ContentRecords
from o365collector.errors import ApiPermanentError, MalformedContentError
from o365collector.models import BlobContext
from o365collector.sinks.batching import FRAMINGS, as_is, encoded, iter_batches, iter_served_batches, serialize
from o365collector.sinks.http import HttpSink, HttpSinkSettings
from tests.receivers import HttpReceiver


def record(index: int, **extra: Any) -> dict[str, Any]:
    return {"CreationTime": "2026-03-01T11:59:58", "Id": f"id-{index}", "Operation": "FileAccessed", **extra}


def compact(records: list[Any]) -> bytes:
    return orjson.dumps(records)


def test_a_compact_array_is_held_as_served_and_reads_back_as_the_same_records() -> None:
    records = [record(1), record(2, Nested=[{"Name": "a", "Value": "b"}, {"Name": "c"}]), record(3)]
    body = compact(records)
    held = ContentRecords.from_body(body, "content blob x")
    assert held.raw
    assert len(held) == 3
    assert list(held) == records
    assert held[1] == records[1]
    assert held[-1] == records[-1]
    assert held[0:2] == records[0:2]
    assert list(held.served()) == [orjson.dumps(r) for r in records]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'[\n  {"CreationTime": "t", "Id": "a"},\n  {"CreationTime": "t", "Id": "b"}\n]', "pretty-printed"),
        (b'[{"Id": "a", "CreationTime": "t"}, {"CreationTime": "t", "Id": "b"}]', "first keys differ"),
        (b'[{"CreationTime":"t","Inner":[{"CreationTime":"u"},{"CreationTime":"v"}]},{"CreationTime":"w"}]', "nested"),
        (b'[{"CreationTime":"t","V":"},{\\"CreationTime\\":1}"},{"CreationTime":"w"}]', "the pattern inside a string"),
        (b"[]", "empty"),
        (b'[{"CreationTime":"t","Big":123456789012345678901234567890}]', "a huge integer"),
    ],
)
def test_any_other_shape_gives_exactly_what_parsing_the_whole_body_gives(body: bytes, why: str) -> None:
    held = ContentRecords.from_body(body, "content blob x")
    assert list(held) == json.loads(body), why
    assert len(held) == len(json.loads(body))
    assert list(encoded(held)) == [serialize(r) for r in json.loads(body)], why


def test_huge_integers_stay_exact_when_read_and_untouched_when_sent() -> None:
    body = (
        b'[{"CreationTime":"t","Big":123456789012345678901234567890,"Low":-9223372036854775809},{"CreationTime":"u"}]'
    )
    held = ContentRecords.from_body(body, "content blob x")
    assert held.raw
    assert held[0]["Big"] == 123456789012345678901234567890
    assert held[0]["Low"] == -9223372036854775809
    assert next(held.served()) == body[1 : body.index(b'},{"CreationTime":"u"') + 1]


@pytest.mark.parametrize(
    "body",
    [
        b'[{"CreationTime":"t","Id":"a"},{"CreationTime":"t","Id":',
        b'[{"CreationTime":"t","Id":"\xff\xfe"},{"CreationTime":"t"}]',
        b'[{"CreationTime":"t","Id":"a"}},{"CreationTime":"t"}]',
        b'{"CreationTime":"t"}',
        b"",
    ],
)
def test_a_malformed_blob_is_a_permanent_error_naming_it(body: bytes) -> None:
    with pytest.raises(ApiPermanentError, match="content blob abc"):
        ContentRecords.from_body(body, "content blob abc")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'[{"CreationTime":"t","V":NaN}]', "not valid JSON"),
        (b'[{"CreationTime":"t","V":Infinity}]', "not valid JSON"),
        (b'[{"CreationTime":"t","V":-Infinity}]', "not valid JSON"),
        (b'[{"CreationTime":"t","V":1e999}]', "number is infinity"),
        # A huge integer sends the text to the stdlib parser, which used to read these as nan/inf (then null).
        (b'[{"CreationTime":"t","Big":123456789012345678901234567890,"V":NaN}]', "NaN is not a JSON number"),
        (b'[{"CreationTime":"t","Big":123456789012345678901234567890,"V":1e999}]', "beyond the range of a double"),
        (b'[{"CreationTime":"t","Big":123456789012345678901234567890},{"CreationTime":"u","V":-1E400}]', "double"),
        (b"[1, 2, 3]", "element 0 is a number, not an object"),
        (b'["a", "b"]', "element 0 is a string"),
        (b'[{"CreationTime":"t"},{"CreationTime":"u"}, 3]', "element 2 is a number"),
        (b'[{"CreationTime":"t"}, null]', "element 1 is null"),
        (b'[[{"CreationTime":"t"}]]', "element 0 is an array"),
        (b'[{"CreationTime":"t","Big":123456789012345678901234567890}, true]', "element 1 is a boolean"),
    ],
)
def test_a_blob_that_is_not_an_array_of_finite_json_records_is_malformed(body: bytes, why: str) -> None:
    """NaN, Infinity and numbers beyond a double are not JSON values a sink can write (they became null);
    an element that is not an object is not a record (the file sink wrote it, Elasticsearch crashed)."""
    with pytest.raises(MalformedContentError, match="content blob abc") as caught:
        list(ContentRecords.from_body(body, "content blob abc"))
    assert why in str(caught.value)


def test_a_malformed_element_found_in_the_background_fails_the_readers(pool: ThreadPoolExecutor) -> None:
    body = compact([record(i) for i in range(20)]).replace(b'"id-7"', b"1e999")
    held = ContentRecords.from_body(body, "content blob abc", validate_on=pool)
    with pytest.raises(MalformedContentError, match="content blob abc"):
        held.settle()


def test_parsed_records_have_no_served_bytes_to_give() -> None:
    held = ContentRecords.from_records([record(1)])
    assert not held.raw
    assert list(encoded(held)) == [orjson.dumps(record(1))]
    with pytest.raises(ValueError, match="serialize them"):
        next(held.served())


def test_served_size_and_joined_agree_with_the_records_one_by_one() -> None:
    records = [record(i, Pad="x" * i) for i in range(7)]
    held = ContentRecords.from_body(compact(records), "blob")
    items = [orjson.dumps(r) for r in records]
    for first in range(7):
        for stop in range(first + 1, 8):
            assert held.served_size(first, stop) == sum(len(i) for i in items[first:stop])
            assert held.served_joined(first, stop, b"\n") == b"\n".join(items[first:stop])
            assert held.served_joined(first, stop, b",") == b",".join(items[first:stop])


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_batches_cut_from_the_served_bytes_equal_batches_of_serialized_records(framing: str) -> None:
    rng = random.Random(7)
    for _ in range(60):
        records = [
            record(
                i, Pad="é" * rng.choice([0, 1, 10, 100, 3000]), List=[{"Name": "n", "Value": "v"}] * rng.randint(0, 3)
            )
            for i in range(rng.randint(1, 40))
        ]
        held = ContentRecords.from_body(compact(records), "blob")
        assert held.raw
        cut = FRAMINGS[framing]
        max_bytes, max_records = rng.choice([200, 1024, 5000, 1 << 20]), rng.choice([1, 3, 7, 5000])
        expected = list(
            iter_batches(encoded(held), framing=cut, max_bytes=max_bytes, max_records=max_records, serialize=as_is)
        )
        assert list(iter_served_batches(held, framing=cut, max_bytes=max_bytes, max_records=max_records)) == expected
        assert list(iter_batches(records, framing=cut, max_bytes=max_bytes, max_records=max_records)) == expected


# -- validation in the background, and the http sink that overlaps it -----------------------------------


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as instance:
        yield instance


def http_sink(receiver: HttpReceiver, **env: str) -> HttpSink:
    return HttpSink(HttpSinkSettings.from_env({"SINK_URL": receiver.url, **env}), sleep=lambda _: None)


CONTEXT = BlobContext(
    "11111111-2222-4333-8444-555555555555", "Audit.Exchange", "blob-1", dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
)


def test_a_malformed_blob_validated_in_the_background_fails_every_reader_and_sends_nothing(
    pool: ThreadPoolExecutor, receiver: HttpReceiver
) -> None:
    body = compact([record(i) for i in range(50)]).replace(b'"id-7"', b'"id-7\xff"')
    held = ContentRecords.from_body(body, "content blob blob-1", validate_on=pool)
    assert held.draft
    sink = http_sink(receiver, SINK_HTTP_BATCH_MAX_RECORDS="5")
    with pytest.raises(ApiPermanentError, match="content blob blob-1 is not valid JSON"):
        sink.send(held, CONTEXT)
    sink.close()
    assert receiver.requests == [], "no batch was posted before the validation failed"
    for read in (held.settle, lambda: len(held), lambda: list(held), lambda: held[0]):
        with pytest.raises(ApiPermanentError):
            read()


def test_valid_json_of_another_shape_is_sent_from_the_parsed_records_instead(
    pool: ThreadPoolExecutor, receiver: HttpReceiver
) -> None:
    records = [record(0, Inner=[{"CreationTime": "x"}, {"CreationTime": "y"}]), record(1), record(2)]
    held = ContentRecords.from_body(compact(records), "content blob blob-1", validate_on=pool)
    assert held.split_count == 4, "the split was fooled by the nested objects"
    sink = http_sink(receiver, SINK_HTTP_BATCH_MAX_RECORDS="2")
    sink.send(held, CONTEXT)
    sink.close()
    assert not held.raw
    assert receiver.records == records
    assert [r.headers["x-o365-batch-index"] for r in receiver.requests] == ["0", "1"]


def test_records_validated_in_the_background_ship_exactly_as_served(
    pool: ThreadPoolExecutor, receiver: HttpReceiver
) -> None:
    records = [record(i, Pad="é" * (i * 50)) for i in range(200)]
    held = ContentRecords.from_body(compact(records), "content blob blob-1", validate_on=pool)
    sink = http_sink(receiver, SINK_HTTP_BATCH_MAX_BYTES="4096")
    sink.send(held, CONTEXT)
    sink.close()
    assert receiver.records == records
    assert b"".join(r.body for r in receiver.requests) == b"".join(orjson.dumps(r) + b"\n" for r in records)
