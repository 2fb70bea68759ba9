"""The listing fan-out's settings (``o365collector.listing_settings``): defaults, bounds, queue names."""

from __future__ import annotations

import datetime as dt

import pytest

from o365collector.envparse import Gatherer
from o365collector.listing_settings import DEFAULT_LIST_QUEUE, ListingQueueConfig, listing_queue_from_env


def parse(**env: str) -> tuple[ListingQueueConfig, list[str]]:
    """The parsed settings and the text of each error noted (``NAME: problem``)."""
    gather = Gatherer()
    config = listing_queue_from_env(env, gather)
    return config, [str(e) for e in gather.errors]


def test_the_defaults_keep_listing_in_process_with_a_day_of_backfill_per_message_and_a_30_second_lease() -> None:
    config, errors = parse()
    assert errors == []
    assert config == ListingQueueConfig()
    assert (config.fanout, config.queue, config.windows_per_message) == (False, "o365-list", 4)
    assert config.lease == dt.timedelta(seconds=30)
    assert DEFAULT_LIST_QUEUE == "o365-list"


def test_every_setting_is_read() -> None:
    config, errors = parse(
        O365_LIST_FANOUT="true",
        O365_LIST_QUEUE="Tenants-List",  # queue names are lower-case: the setting is folded, not refused
        O365_LIST_WINDOWS_PER_MESSAGE="1",
        O365_LIST_LEASE_SECONDS="10",
    )
    assert errors == []
    assert config == ListingQueueConfig(True, "tenants-list", 1, dt.timedelta(seconds=10))
    config, errors = parse(O365_LIST_WINDOWS_PER_MESSAGE="1000", O365_LIST_LEASE_SECONDS="600")
    assert errors == []
    assert (config.windows_per_message, config.lease) == (1000, dt.timedelta(seconds=600))


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [
        ("O365_LIST_FANOUT", "maybe", "not a boolean"),
        ("O365_LIST_WINDOWS_PER_MESSAGE", "0", "below the minimum"),  # a message that lists nothing loops forever
        ("O365_LIST_WINDOWS_PER_MESSAGE", "1001", "above the maximum"),
        ("O365_LIST_LEASE_SECONDS", "9", "below the minimum"),  # renewed every third: too short to hold
        ("O365_LIST_LEASE_SECONDS", "601", "above the maximum"),
    ],
)
def test_bad_values_are_noted_naming_the_setting_and_the_default_kept(setting: str, value: str, fragment: str) -> None:
    config, errors = parse(**{setting: value})
    assert len(errors) == 1
    assert setting in errors[0]
    assert fragment in errors[0]
    assert config == ListingQueueConfig()


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("abc", True),
        ("a" * 56, True),  # "-poison" still fits within 63 characters
        ("list-2", True),
        ("ab", False),
        ("a" * 57, False),
        ("list--queue", False),
        ("-list", False),
        ("list-", False),
        ("list_queue", False),
        ("list.queue", False),
    ],
)
def test_the_list_queue_name_must_be_a_valid_azure_queue_name_with_room_for_its_poison_queue(
    name: str, valid: bool
) -> None:
    config, errors = parse(O365_LIST_QUEUE=name)
    if valid:
        assert (config.queue, errors) == (name, [])
    else:
        assert config.queue == DEFAULT_LIST_QUEUE
        assert len(errors) == 1
        assert "O365_LIST_QUEUE" in errors[0]
        assert "not a valid queue name" in errors[0]
