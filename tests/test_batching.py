"""The shared batching helper: exact serialization, batch limits by bytes and by count, framings."""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

import orjson
import pytest

from o365collector.sinks.batching import JSON_ARRAY, NDJSON, Batch, Framing, iter_batches, serialize


def record_of_size(size: int, tag: int = 0) -> dict[str, str]:
    """A record whose compact JSON is exactly ``size`` bytes (at least 12)."""
    prefix = f"{tag:03d}"
    record = {"k": prefix + "x" * (size - 8 - len(prefix))}
    assert len(serialize(record)) == size
    return record


def batch_sizes(batches: list[Batch]) -> list[int]:
    return [batch.count for batch in batches]


def assert_same(actual: Any, expected: Any) -> None:
    """Equal values of the same JSON types (True is not 1, 1.0 is not 1, -0.0 keeps its sign), same key order."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for left, right in zip(actual, expected, strict=True):
            assert_same(left, right)
    elif isinstance(expected, float):
        assert actual == expected
        assert math.copysign(1.0, actual) == math.copysign(1.0, expected)
    else:
        assert actual == expected


# (case, record sizes, framing, max_bytes, max_records, expected records per batch, oversize flags)
LIMIT_CASES = [
    ("no records, no batches", [], NDJSON, 100, 10, [], []),
    ("all fit (ndjson: 3 x (12+1) = 39)", [12, 12, 12], NDJSON, 39, 10, [3], [False]),
    ("one byte short splits", [12, 12, 12], NDJSON, 38, 10, [2, 1], [False, False]),
    ("count limit", [12] * 5, NDJSON, 10_000, 2, [2, 2, 1], [False] * 3),
    ("count limit of one", [12] * 3, NDJSON, 10_000, 1, [1, 1, 1], [False] * 3),
    ("both limits, bytes first", [20] * 6, NDJSON, 63, 4, [3, 3], [False, False]),
    ("both limits, count first", [20] * 6, NDJSON, 1000, 4, [4, 2], [False, False]),
    ("oversize record alone in the middle", [12, 100, 12], NDJSON, 50, 10, [1, 1, 1], [False, True, False]),
    ("oversize record first", [100, 12, 12], NDJSON, 50, 10, [1, 2], [True, False]),
    ("oversize record last", [12, 12, 100], NDJSON, 50, 10, [2, 1], [False, True]),
    ("two oversize records never share", [100, 100], NDJSON, 50, 10, [1, 1], [True, True]),
    ("record exactly at the limit is not oversize", [49], NDJSON, 50, 10, [1], [False]),
    ("json array all fit (2 + 36 + 2 = 40)", [12, 12, 12], JSON_ARRAY, 40, 10, [3], [False]),
    ("json array one byte short", [12, 12, 12], JSON_ARRAY, 39, 10, [2, 1], [False, False]),
    ("json array brackets count toward oversize", [49], JSON_ARRAY, 50, 10, [1], [True]),
]


@pytest.mark.parametrize(
    ("sizes", "framing", "max_bytes", "max_records", "expected", "oversize"),
    [case[1:] for case in LIMIT_CASES],
    ids=[case[0] for case in LIMIT_CASES],
)
def test_batches_respect_byte_and_count_limits(
    sizes: list[int], framing: Framing, max_bytes: int, max_records: int, expected: list[int], oversize: list[bool]
) -> None:
    records = [record_of_size(size, tag) for tag, size in enumerate(sizes)]
    batches = list(iter_batches(records, framing=framing, max_bytes=max_bytes, max_records=max_records))

    assert batch_sizes(batches) == expected
    assert [batch.oversize for batch in batches] == oversize
    for batch in batches:
        assert batch.count <= max_records
        assert (len(batch.body) <= max_bytes) != batch.oversize
        assert not batch.oversize or batch.count == 1


@pytest.mark.parametrize("framing", [NDJSON, JSON_ARRAY], ids=lambda f: f.name)
@pytest.mark.parametrize("seed", range(5))
def test_batches_cover_every_record_once_in_order(framing: Framing, seed: int) -> None:
    """Random sizes and limits: batches are contiguous, lose nothing, and only a lone record may exceed the limit."""
    rng = random.Random(seed)
    records = [record_of_size(rng.randint(12, 400), tag) for tag in range(rng.randint(1, 300))]
    max_bytes, max_records = rng.randint(40, 2000), rng.randint(1, 50)

    batches = list(iter_batches(records, framing=framing, max_bytes=max_bytes, max_records=max_records))

    assert [batch.first for batch in batches] == [0, *[batch.stop for batch in batches[:-1]]]
    assert batches[-1].stop == len(records)
    decoded: list[Any] = []
    for batch in batches:
        items = (
            orjson.loads(batch.body) if framing is JSON_ARRAY else [orjson.loads(x) for x in batch.body.splitlines()]
        )
        assert items == records[batch.first : batch.stop]
        decoded.extend(items)
        assert batch.count <= max_records
        assert len(batch.body) <= max_bytes or batch.count == 1
    assert decoded == records


def test_a_batch_is_closed_only_when_the_next_record_does_not_fit() -> None:
    """Greedy packing: merging any batch with the next record would break a limit."""
    rng = random.Random(7)
    records = [record_of_size(rng.randint(12, 200), tag) for tag in range(200)]
    batches = list(iter_batches(records, framing=NDJSON, max_bytes=700, max_records=8))
    for batch, following in itertools.pairwise(batches):
        grown = NDJSON.size(batch.count + 1, len(batch.body) - batch.count + len(serialize(records[following.first])))
        assert batch.count == 8 or grown > 700


ROUND_TRIP_VALUES: list[tuple[str, Any]] = [
    ("unicode", {"City": "Zürich", "Emoji": "🙂👍🏽", "Cjk": "監査ログ", "Rtl": "مرحبا", "Nbsp": "a\u00a0b"}),
    ("escapes", {"Quote": 'say "hi"', "Backslash": "C:\\Users\\x", "Newline": "a\nb\r\n", "Nul": "\x00\x1f"}),
    ("integers at the 64-bit edges", {"Min": -(2**63), "Max": 2**64 - 1, "Zero": 0}),
    ("integers beyond 64 bits", {"Big": 2**64, "Neg": -(2**63) - 1, "Huge": 10**40, "Nested": [2**100]}),
    ("big int and unicode together", {"Big": 2**70, "Name": "Jürgen 🙂"}),
    (
        "floats",
        {"Tenth": 0.1, "Tiny": 5e-324, "Max": 1.7976931348623157e308, "NegZero": -0.0, "Long": 123456789.12345679},
    ),
    ("integral float stays a float", {"One": 1.0, "Big": 1e20}),
    ("literals", {"T": True, "F": False, "N": None, "Empty": "", "EmptyList": [], "EmptyObject": {}}),
    (
        "nested",
        {"Parameters": [{"Name": "Identity", "Value": "x"}, {"Name": "Flags", "Value": [1, [2, [3, {"d": None}]]]}]},
    ),
    ("key order is kept", {"z": 1, "a": 2, "m": {"y": 1, "b": 2}}),
    ("deep nesting beyond orjson's limit", {"Deep": json.loads("[" * 300 + "]" * 300)}),
    ("lone surrogate", {"Broken": "a\ud800b"}),
]


@pytest.mark.parametrize("value", [case[1] for case in ROUND_TRIP_VALUES], ids=[case[0] for case in ROUND_TRIP_VALUES])
@pytest.mark.parametrize("framing", [NDJSON, JSON_ARRAY], ids=lambda f: f.name)
def test_values_round_trip_exactly(value: dict[str, Any], framing: Framing) -> None:
    """What the receiver parses is what was given: same keys, order, types and values."""
    records = [value, {"After": 1}]
    (batch,) = iter_batches(records, framing=framing, max_bytes=1 << 20, max_records=10)
    # The stdlib parser reads integers of any size exactly, as a SIEM's JSON parser should.
    if framing is NDJSON:
        parsed = [json.loads(line) for line in batch.body.decode("utf-8").splitlines()]
    else:
        parsed = json.loads(batch.body.decode("utf-8"))
    assert_same(parsed, records)


def test_serialize_is_orjson_output_when_orjson_can() -> None:
    record = {"Operation": "MailItemsAccessed", "Id": "e3f2", "Count": 3, "Ratio": 0.5, "Name": "Zoë"}
    assert serialize(record) == orjson.dumps(record)


def test_integers_beyond_64_bits_are_written_as_integers() -> None:
    assert serialize({"n": 2**64}) == b'{"n":18446744073709551616}'
    assert serialize([-(2**63) - 1]) == b"[-9223372036854775809]"


def test_fallback_output_is_valid_utf8_json() -> None:
    """The fallback escapes non-ASCII, so even a lone surrogate yields bytes every parser accepts."""
    body = serialize({"n": 2**64, "s": "é\ud800"})
    assert body.isascii()
    assert json.loads(body) == {"n": 2**64, "s": "é\ud800"}


def test_non_string_keys_are_refused_not_retyped() -> None:
    with pytest.raises(TypeError):
        serialize({1: "a"})
    with pytest.raises(TypeError, match="key"):
        serialize({"big": 2**64, "inner": [{2: "b"}]})


def test_ndjson_framing_is_one_object_per_line_with_trailing_newline() -> None:
    (batch,) = iter_batches([{"a": 1}, {"b": "x\ny"}], framing=NDJSON, max_bytes=1000, max_records=10)
    assert batch.body == b'{"a":1}\n{"b":"x\\ny"}\n'
    assert NDJSON.content_type == "application/x-ndjson"


def test_json_array_framing() -> None:
    (batch,) = iter_batches([{"a": 1}, {"b": 2}], framing=JSON_ARRAY, max_bytes=1000, max_records=10)
    assert batch.body == b'[{"a":1},{"b":2}]'
    assert JSON_ARRAY.encode([]) == b"[]"
    assert JSON_ARRAY.content_type == "application/json"


def test_framing_size_matches_encoding() -> None:
    items = [b"{}", b'{"a":1}', b"[1,2,3]"]
    for framing in (NDJSON, JSON_ARRAY):
        for count in range(len(items) + 1):
            chosen = items[:count]
            assert framing.size(count, sum(map(len, chosen))) == len(framing.encode(chosen))


def test_custom_serializer_keeps_the_limits() -> None:
    """A sink may frame each record itself (an Elasticsearch _bulk action line + document) and still batch."""

    def bulk_item(record: dict[str, Any]) -> bytes:
        return b'{"create":{}}\n' + serialize(record)

    records = [{"n": index} for index in range(10)]
    batches = list(iter_batches(records, framing=NDJSON, max_bytes=100, max_records=100, serialize=bulk_item))

    body = b"".join(batch.body for batch in batches)
    assert body.count(b'{"create":{}}\n') == 10
    assert all(len(batch.body) <= 100 for batch in batches)
    assert sum(batch.count for batch in batches) == 10


def test_records_are_serialized_lazily() -> None:
    """A generator of records is consumed as batches are taken, not all up front."""
    seen: list[int] = []

    def records() -> Any:
        for index in range(6):
            seen.append(index)
            yield {"n": index}

    batches = iter_batches(records(), framing=NDJSON, max_bytes=1000, max_records=2)
    first = next(batches)
    assert first.count == 2
    assert seen == [0, 1, 2]  # the third record was read to learn the first batch was full


@pytest.mark.parametrize(("max_bytes", "max_records"), [(0, 10), (10, 0), (-1, -1)])
def test_limits_must_be_positive(max_bytes: int, max_records: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        list(iter_batches([{"a": 1}], framing=NDJSON, max_bytes=max_bytes, max_records=max_records))
