"""Realistic audit content for the benchmarks: mixed content types, 0.5-5 KB records, a few of 100 KB+.

Records start from the simulator's schema-faithful samples (``o365collector/simulator/samples.json``)
and are grown to a drawn size with the list fields real records carry (``ModifiedProperties`` of
directory changes, ``Parameters`` of Exchange cmdlets, ``ExtendedProperties``), filled with GUIDs,
paths and words, so that they compress about as well as real audit JSON does (6-10x with gzip).

Sizes: log-uniform between 0.5 and 5 KB (median 1.6 KB); one record in ``large_every`` is 100-400 KB
(a transport rule or an application manifest change). Blob sizes: drawn from ``records_per_blob``,
uniformly or log-uniformly (many small blobs). Every record has its own ``Id``; the same seed gives
the same bytes.

Generating is kept cheap (a pool of padded records, then only the Id and time are spliced per record),
so a benchmark spends its time measuring, not preparing.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from o365collector.models import CONTENT_TYPES
from o365collector.simulator.data import SAMPLE_TENANT_ID, sample_records

ID_PLACEHOLDER = b"00000000-0000-4000-8000-0000000000ff"
TIME_PLACEHOLDER = b"2000-01-01T00:00:00"
POOL_SIZE = 1500  # distinct padded records per content type; more only slows generation

_WORDS = (
    "Documents", "Shared", "Finance", "Reports", "Quarterly", "Budget", "Contoso", "Project", "Phoenix",
    "Marketing", "Campaign", "Drafts", "Legal", "Contracts", "Archive", "HR", "Onboarding", "Policies",
    "Engineering", "Specs", "Release", "Notes", "Customer", "Escalations", "Mailbox", "FolderPermission",
    "TransportRule", "Conditional", "Access", "Policy", "Application", "Owner", "ServicePrincipal", "Member",
    "Group", "Role", "Assignment", "Sensitivity", "Label", "Retention", "Compliance", "Search", "Export",
    "eDiscovery", "Hold",
)  # fmt: skip
_PADDING_FIELD = {
    "Audit.AzureActiveDirectory": "ModifiedProperties",
    "Audit.Exchange": "Parameters",
    "Audit.SharePoint": "ModifiedProperties",
    "Audit.General": "ExtendedProperties",
    "DLP.All": "ExtendedProperties",
}


@dataclass(frozen=True, slots=True)
class BlobBody:
    """One content blob as the API serves it: a compact JSON array."""

    content_type: str
    body: bytes
    records: int


def _entry(rng: random.Random, field: str) -> dict[str, str]:
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6)))
    guid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    path = "/".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5)))
    if field == "Parameters":
        return {"Name": rng.choice(_WORDS), "Value": f"{words};{guid};https://contoso.sharepoint.com/sites/{path}"}
    if field == "ModifiedProperties":
        return {
            "Name": rng.choice(_WORDS) + "." + rng.choice(_WORDS),
            "NewValue": orjson.dumps([guid, words, path]).decode(),
            "OldValue": orjson.dumps([words]).decode(),
        }
    return {"Name": rng.choice(_WORDS), "Value": f"{words} {guid} /{path}"}


def _padded(template: bytes, content_type: str, target: int, rng: random.Random) -> bytes:
    """The template with its Id and time replaced by placeholders, grown to about ``target`` bytes."""
    record = orjson.loads(template)
    record["Id"] = ID_PLACEHOLDER.decode()
    record["CreationTime"] = TIME_PLACEHOLDER.decode()
    field = _PADDING_FIELD[content_type]
    entries = record.get(field)
    if not isinstance(entries, list):
        entries = record[field] = []
    size = len(orjson.dumps(record))
    while size < target:
        entry = _entry(rng, field)
        entries.append(entry)
        size += len(orjson.dumps(entry)) + 1
    return orjson.dumps(record)


def _target_size(rng: random.Random, large_every: int) -> int:
    if large_every and rng.randrange(large_every) == 0:
        return rng.randint(100_000, 400_000)
    return int(math.exp(rng.uniform(math.log(500), math.log(5000))))


class RecordMaker:
    """Makes records of one tenant: ``make(content_type, created)`` returns one serialized record."""

    def __init__(self, seed: int, tenant_id: str, *, large_every: int = 4000) -> None:
        self._rng = random.Random(f"bench|{seed}")
        self._large_every = large_every
        tenant = tenant_id.encode()
        self._pools: dict[str, list[bytes]] = {}
        for content_type in CONTENT_TYPES:
            templates = [t.replace(SAMPLE_TENANT_ID.encode(), tenant) for t in sample_records()[content_type]]
            self._pools[content_type] = [
                _padded(self._rng.choice(templates), content_type, _target_size(self._rng, 0), self._rng)
                for _ in range(POOL_SIZE)
            ]
            self._templates = templates

    def make(self, content_type: str, created: dt.datetime) -> bytes:
        rng = self._rng
        if self._large_every and rng.randrange(self._large_every) == 0:
            template = sample_records()[content_type][0]
            base = _padded(template, content_type, _target_size(rng, 1), rng)
        else:
            base = rng.choice(self._pools[content_type])
        record_id = str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode()
        when = (created - dt.timedelta(seconds=rng.randint(30, 900))).strftime("%Y-%m-%dT%H:%M:%S").encode()
        return base.replace(ID_PLACEHOLDER, record_id, 1).replace(TIME_PLACEHOLDER, when, 1)


def blob_sizes(rng: random.Random, total: int, low: int, high: int, *, spread: str = "uniform") -> Iterator[int]:
    """Record counts per blob in ``[low, high]``, summing to exactly ``total``.

    ``uniform``: every size equally likely (mean (low+high)/2). ``log``: log-uniform, many small blobs
    (mean about (high-low)/ln(high/low)), which stresses the fixed cost per blob.
    """
    left = total
    while left > 0:
        if spread == "log":
            size = int(math.exp(rng.uniform(math.log(low), math.log(high + 1))))
        else:
            size = rng.randint(low, high)
        size = max(low, min(size, high, left))
        left -= size
        yield size


def make_blobs(
    seed: int,
    tenant_id: str,
    total_records: int,
    *,
    records_per_blob: tuple[int, int] = (1, 5000),
    spread: str = "uniform",
    large_every: int = 4000,
) -> list[BlobBody]:
    """Blobs holding ``total_records`` records in all, content types in turn."""
    maker = RecordMaker(seed, tenant_id, large_every=large_every)
    rng = random.Random(f"bench-blobs|{seed}")
    when = dt.datetime.now(dt.UTC)
    blobs: list[BlobBody] = []
    for index, size in enumerate(blob_sizes(rng, total_records, *records_per_blob, spread=spread)):
        content_type = CONTENT_TYPES[index % len(CONTENT_TYPES)]
        parts = [maker.make(content_type, when) for _ in range(size)]
        blobs.append(BlobBody(content_type, b"[" + b",".join(parts) + b"]", size))
    return blobs


def describe(blobs: list[BlobBody]) -> str:
    records = sum(b.records for b in blobs)
    size = sum(len(b.body) for b in blobs)
    biggest = max(b.records for b in blobs)
    return (
        f"{len(blobs)} blobs, {records} records ({size / 1e6:.1f} MB of JSON, {size / max(records, 1):.0f} B/record "
        f"on average), 1-{biggest} records per blob"
    )
