"""Serialize records and split them into request bodies bounded by bytes and by record count.

Shared by every sink that posts many records per request (the generic HTTP sink today; Splunk HEC,
Elasticsearch ``_bulk`` and the like tomorrow). Pure: no I/O, no logging.

Serialization (``serialize``): each record is written exactly as given, as compact JSON, by orjson
(key order kept, nothing dropped, renamed or re-typed). Values orjson refuses (integers beyond 64
bits, lone UTF-16 surrogates, nesting deeper than 255 levels) are written by the standard library
instead, with non-ASCII characters escaped, so the text still decodes to the very same values.
Non-string object keys are refused in both paths rather than turned into strings.
NaN and infinities are not JSON; orjson writes them as ``null``, but records parsed from JSON never hold them.

Records straight from the fetcher (``o365collector.content.ContentRecords``) still hold the bytes the
API served. ``encoded(records)`` yields those bytes as they are (no parse, no re-serialization: the
cheapest and most faithful encoding) and ``serialize(record)`` for any other records; a sink that
writes plain JSON records passes ``iter_batches(encoded(records), ..., serialize=as_is)``, and
``iter_served_batches`` makes the very same batches straight from the served bytes, without any
per-record work (a slice and a ``replace`` per batch).

Batching rule (``iter_batches``):

* records keep their order, and every record lands in exactly one batch;
* a batch holds at most ``max_records`` records, and its encoded body (framing included, before any
  compression) is at most ``max_bytes`` long;
* the one exception: a record whose encoding alone exceeds ``max_bytes`` is sent alone in its own
  batch, flagged ``oversize``, and never dropped. The backend may refuse it (e.g. 413); that is then
  a visible error, not silent data loss.

Framings say how serialized items are joined into a body: ``NDJSON`` (one value per line, each line
ending in ``\\n``) and ``JSON_ARRAY`` (``[a,b,c]``). Items need not be bare records: a sink may pass its
own ``serialize`` (an ``_bulk`` action line plus the document, a HEC event envelope) and keep the same
size accounting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from ..content import ContentRecords
from ..models import Record

T = TypeVar("T")


def serialize(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON, exactly as given (see the module docstring for the fallback)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits, lone surrogates and very deep nesting; the standard
        # library writes all of these. ensure_ascii keeps the output valid UTF-8 even for surrogates.
        _refuse_non_string_keys(value)
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def encoded(records: Iterable[Record]) -> Iterator[bytes]:
    """Each record as compact JSON on one line: as served when ``records`` still holds those bytes, else serialized."""
    if isinstance(records, ContentRecords) and records.raw:
        return records.served()
    return (serialize(record) for record in records)


def as_is(item: bytes) -> bytes:
    """The ``serialize`` for items that are already encoded (``iter_batches(encoded(records), ...)``)."""
    return item


def _refuse_non_string_keys(value: Any) -> None:
    # The standard library would silently turn {1: "a"} into {"1": "a"}: a re-typed field.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise TypeError(f"object key {key!r} is not a string; JSON object keys must be strings")
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)


@dataclass(frozen=True, slots=True)
class Framing:
    """How serialized items are joined into one body: ``opening item terminator separator item ... closing``."""

    name: str
    content_type: str
    opening: bytes = b""
    separator: bytes = b""
    terminator: bytes = b""
    closing: bytes = b""

    def size(self, count: int, item_bytes: int) -> int:
        """Length of the body holding ``count`` items whose encodings total ``item_bytes``."""
        return (
            len(self.opening)
            + len(self.closing)
            + item_bytes
            + count * len(self.terminator)
            + max(count - 1, 0) * len(self.separator)
        )

    def encode(self, items: Sequence[bytes]) -> bytes:
        if not items:
            return self.opening + self.closing
        # One join does the copying in C: items separated by terminator+separator, the last one terminated.
        inner = (self.terminator + self.separator).join(items)
        return b"".join((self.opening, inner, self.terminator, self.closing))


NDJSON = Framing("ndjson", "application/x-ndjson", terminator=b"\n")
"""One JSON value per line, every line (the last too) ending in a newline."""

JSON_ARRAY = Framing("json", "application/json", opening=b"[", separator=b",", closing=b"]")
"""A single JSON array of the values."""

FRAMINGS: dict[str, Framing] = {framing.name: framing for framing in (NDJSON, JSON_ARRAY)}


@dataclass(frozen=True, slots=True)
class Batch:
    """One request body: ``count`` consecutive input records starting at index ``first``."""

    first: int
    count: int
    body: bytes
    oversize: bool = False
    """True when the body exceeds the byte limit: a single record too large to share a batch."""

    @property
    def stop(self) -> int:
        """Index after the last record of the batch."""
        return self.first + self.count


def iter_batches(
    records: Iterable[T],
    *,
    framing: Framing,
    max_bytes: int,
    max_records: int,
    serialize: Callable[[T], bytes] = serialize,
) -> Iterator[Batch]:
    """Serialize ``records`` lazily and yield batches that follow the rule in the module docstring.

    No records, no batches. Records are serialized once each, as they are reached.
    """
    if max_bytes < 1 or max_records < 1:
        raise ValueError(f"batch limits must be positive (max_bytes={max_bytes}, max_records={max_records})")
    items: list[bytes] = []
    item_bytes = 0
    first = 0
    for index, record in enumerate(records):
        item = serialize(record)
        if items and (len(items) >= max_records or framing.size(len(items) + 1, item_bytes + len(item)) > max_bytes):
            yield _batch(framing, first, items, max_bytes)
            items, item_bytes, first = [], 0, index
        items.append(item)
        item_bytes += len(item)
    if items:
        yield _batch(framing, first, items, max_bytes)


def iter_served_batches(
    records: ContentRecords, *, framing: Framing, max_bytes: int, max_records: int
) -> Iterator[Batch]:
    """Exactly the batches of ``iter_batches(encoded(records), ..., serialize=as_is)``, for ``records.raw``.

    Each batch is the longest run of records that fits (found by bisection on the records' offsets),
    cut from the served body in one slice; an oversize record still goes alone. It reads the records'
    split as a draft (see ``ContentRecords``): the batches are final once ``records.settle()`` is True.
    """
    if max_bytes < 1 or max_records < 1:
        raise ValueError(f"batch limits must be positive (max_bytes={max_bytes}, max_records={max_records})")
    count = records.split_count
    joiner = framing.terminator + framing.separator
    first = 0
    while first < count:
        low, high = first + 1, min(count, first + max_records)
        while low < high:  # the largest stop whose body fits; the sizes grow with stop
            middle = (low + high + 1) // 2
            if framing.size(middle - first, records.served_size(first, middle)) <= max_bytes:
                low = middle
            else:
                high = middle - 1
        body = b"".join(
            (framing.opening, records.served_joined(first, low, joiner), framing.terminator, framing.closing)
        )
        yield Batch(first=first, count=low - first, body=body, oversize=len(body) > max_bytes)
        first = low


def _batch(framing: Framing, first: int, items: list[bytes], max_bytes: int) -> Batch:
    body = framing.encode(items)
    return Batch(first=first, count=len(items), body=body, oversize=len(body) > max_bytes)
