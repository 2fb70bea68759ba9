"""Record filtering: off by default, include then exclude, case-insensitive names, counted."""

from __future__ import annotations

import pytest

from o365collector.errors import ConfigError
from o365collector.filtering import RecordFilter

RECORDS = [
    {"Id": "1", "Operation": "UserLoggedIn", "Workload": "AzureActiveDirectory", "RecordType": 15},
    {"Id": "2", "Operation": "FileAccessed", "Workload": "SharePoint", "RecordType": 6},
    {"Id": "3", "Operation": "DLPRuleMatch", "Workload": "SharePoint", "RecordType": 11},
    {"Id": "4", "Operation": "MailItemsAccessed", "Workload": "Exchange", "RecordType": 50},
    {"Id": "5", "Workload": "Exchange"},
]


def kept(**env: str) -> list[str]:
    records, filtered = RecordFilter.from_env(env).apply(RECORDS)
    assert filtered == len(RECORDS) - len(records)
    return [r["Id"] for r in records]


@pytest.mark.parametrize(
    ("env", "ids"),
    [
        ({}, ["1", "2", "3", "4", "5"]),
        ({"O365_FILTER_INCLUDE_WORKLOADS": "sharepoint"}, ["2", "3"]),
        ({"O365_FILTER_EXCLUDE_OPERATIONS": "dlprulematch, mailitemsaccessed"}, ["1", "2", "5"]),
        ({"O365_FILTER_INCLUDE_RECORD_TYPES": "15,50"}, ["1", "4"]),
        ({"O365_FILTER_EXCLUDE_RECORD_TYPES": "6"}, ["1", "3", "4", "5"]),
        (
            {"O365_FILTER_INCLUDE_WORKLOADS": "SharePoint,Exchange", "O365_FILTER_EXCLUDE_RECORD_TYPES": "11"},
            ["2", "4", "5"],
        ),
        ({"O365_FILTER_INCLUDE_OPERATIONS": "FileAccessed"}, ["2"]),
    ],
)
def test_include_then_exclude(env: dict[str, str], ids: list[str]) -> None:
    assert kept(**env) == ids


def test_no_filter_passes_the_same_sequence_through() -> None:
    records, filtered = RecordFilter().apply(RECORDS)
    assert records is RECORDS
    assert filtered == 0


def test_a_bad_record_type_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="O365_FILTER_EXCLUDE_RECORD_TYPES: 'Exchange'"):
        RecordFilter.from_env({"O365_FILTER_EXCLUDE_RECORD_TYPES": "Exchange"})
