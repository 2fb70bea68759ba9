"""bench/fleet.py, tiny: instances in their own processes list every tenant once through the list queue.

The bench's figures (wall time against the schedule) are printed, never asserted; what is asserted here is
what the bench exists to show at any size: every stream listed, every blob on the content queue exactly
once, no publisher-minute over the simulator's quota, and the storage transactions counted in every process.
"""

from __future__ import annotations

from collections import Counter

import pytest

from bench.fleet import QUOTA_PER_MINUTE, compare_ids, run_fleet
from o365collector.models import CONTENT_TYPES

pytestmark = pytest.mark.integration


def test_a_fleet_of_processes_lists_every_stream_once_within_the_quota() -> None:
    report = run_fleet(6, 2, latency=0.0, threads=3)

    assert report.errors == []
    assert report.streams_listed == report.streams_expected == 6 * len(CONTENT_TYPES)
    assert report.failed_streams == 0
    assert report.blobs_expected == report.blobs_enqueued == report.blobs_in_queue > 0
    assert (report.duplicates, report.missing, report.unexpected) == (0, 0, 0)
    assert report.af429 == 0
    assert 0 < report.max_per_minute <= QUOTA_PER_MINUTE
    assert report.messages == 6  # one list message per tenant, none handled twice
    assert report.storage_total > report.timer_storage >= 6  # the instances' transactions reached the parent
    assert report.pacing.calls == report.api_calls  # every feed call drew on the shared pacing
    assert len(report.instance_cpu) == 2
    assert report.ok


@pytest.mark.parametrize(
    ("seen", "expected", "figures"),
    [
        (Counter({"a": 1, "b": 1}), ["a", "b"], (2, 0, 0, 0)),
        (Counter({"a": 3, "b": 1}), ["a", "b"], (4, 2, 0, 0)),
        (Counter({"a": 1, "x": 1}), ["a", "b"], (2, 0, 1, 1)),
    ],
)
def test_the_content_queue_is_compared_with_the_simulators_blobs(
    seen: Counter[str], expected: list[str], figures: tuple[int, int, int, int]
) -> None:
    """Duplicates, missing and unexpected content ids are each counted: a breach cannot pass unseen."""
    assert compare_ids(seen, expected) == figures
