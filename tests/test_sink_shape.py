"""The flat record shape (``o365collector.sinks.shape``): pure unit tests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from o365collector.errors import ConfigError
from o365collector.sinks.batching import serialize
from o365collector.sinks.shape import flat_record, get_shape

NESTED = {"Parameters": [{"Name": "Identity", "Value": "x"}], "Extended": {"A": {"B": [1, None]}}}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param(
            {"CreationTime": "2026-03-01T11:59:58", "Id": "a", "RecordType": 1},
            {
                "@timestamp": "2026-03-01T11:59:58Z",
                "o365.audit.CreationTime": "2026-03-01T11:59:58",
                "o365.audit.Id": "a",
                "o365.audit.RecordType": 1,
            },
            id="no-offset-is-utc",
        ),
        pytest.param(
            {"CreationTime": "2026-03-01T11:59:58.1230000"},
            {"@timestamp": "2026-03-01T11:59:58.123Z", "o365.audit.CreationTime": "2026-03-01T11:59:58.1230000"},
            id="fraction-kept",
        ),
        pytest.param(
            {"CreationTime": "2026-03-01T01:30:00+02:00"},
            {"@timestamp": "2026-02-28T23:30:00Z", "o365.audit.CreationTime": "2026-03-01T01:30:00+02:00"},
            id="offset-honoured",
        ),
        pytest.param(
            {"CreationTime": "2026-03-01T11:59:58Z"},
            {"@timestamp": "2026-03-01T11:59:58Z", "o365.audit.CreationTime": "2026-03-01T11:59:58Z"},
            id="z-suffix",
        ),
        pytest.param({"Id": "a"}, {"o365.audit.Id": "a"}, id="missing-creation-time"),
        pytest.param(
            {"CreationTime": "yesterday"}, {"o365.audit.CreationTime": "yesterday"}, id="unreadable-creation-time"
        ),
        pytest.param({"CreationTime": 1772366398}, {"o365.audit.CreationTime": 1772366398}, id="not-a-string"),
        pytest.param({"CreationTime": None}, {"o365.audit.CreationTime": None}, id="null"),
        pytest.param(
            {"CreationTime": "0001-01-01T00:30:00+01:00"},
            {"o365.audit.CreationTime": "0001-01-01T00:30:00+01:00"},
            id="before-year-one-in-utc",
        ),
        pytest.param(
            {"CreationTime": "0999-01-02T03:04:05"},
            {"@timestamp": "0999-01-02T03:04:05Z", "o365.audit.CreationTime": "0999-01-02T03:04:05"},
            id="four-digit-year",
        ),
        pytest.param(
            {"CreationTime": "2026-03-01T11:59:58", **NESTED},
            {
                "@timestamp": "2026-03-01T11:59:58Z",
                "o365.audit.CreationTime": "2026-03-01T11:59:58",
                "o365.audit.Parameters": NESTED["Parameters"],
                "o365.audit.Extended": NESTED["Extended"],
            },
            id="nested-values-kept-whole",
        ),
        pytest.param(
            {"Big": 2**64 + 1, "Neg": -(2**63) - 1, "F": 0.1, "B": False},
            {"o365.audit.Big": 2**64 + 1, "o365.audit.Neg": -(2**63) - 1, "o365.audit.F": 0.1, "o365.audit.B": False},
            id="big-integers-exact",
        ),
        pytest.param({"@timestamp": "x"}, {"o365.audit.@timestamp": "x"}, id="a-field-named-timestamp-is-prefixed"),
        pytest.param({}, {}, id="empty"),
    ],
)
def test_flat_record(record: dict[str, Any], expected: dict[str, Any]) -> None:
    assert flat_record(record) == expected


def test_flat_record_puts_timestamp_first_then_keeps_the_records_order() -> None:
    record = {"Z": 1, "CreationTime": "2026-03-01T11:59:58", "A": 2}
    assert list(flat_record(record)) == ["@timestamp", "o365.audit.Z", "o365.audit.CreationTime", "o365.audit.A"]


def test_flat_record_leaves_the_record_unchanged() -> None:
    record = {"CreationTime": "2026-03-01T11:59:58", **NESTED}
    before = json.dumps(record)
    flat_record(record)
    assert json.dumps(record) == before


def test_big_integers_serialize_exactly() -> None:
    """orjson cannot write integers beyond 64 bits: ``serialize`` falls back and the value stays exact."""
    body = serialize(flat_record({"CreationTime": "2026-03-01T11:59:58", "N": 10**40}))
    assert json.loads(body) == {
        "@timestamp": "2026-03-01T11:59:58Z",
        "o365.audit.CreationTime": "2026-03-01T11:59:58",
        "o365.audit.N": 10**40,
    }


@pytest.mark.parametrize(("text", "expected"), [(None, "raw"), ("", "raw"), ("FLAT", "flat"), (" raw ", "raw")])
def test_get_shape(text: str | None, expected: str) -> None:
    env = {} if text is None else {"SINK_X_SHAPE": text}
    assert get_shape(env, "SINK_X_SHAPE") == expected


def test_an_unknown_shape_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"SINK_X_SHAPE.*'nested'.*raw, flat"):
        get_shape({"SINK_X_SHAPE": "nested"}, "SINK_X_SHAPE")
