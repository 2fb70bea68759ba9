"""A content blob's records, kept as the bytes the API served: split, validated, parsed only when asked.

Parsing a blob into Python objects costs three to four times its size in memory and most of the
fetcher's CPU, while a sink that writes JSON needs nothing but each record's bytes. So
``ContentRecords.from_body`` splits the served JSON array into one byte range per record and
validates each range with orjson, keeping nothing of the parse. The result is a ``Sequence[Record]``:
``len``, indexing and iteration give dicts, parsed as they are reached (and not kept), and
``served()`` gives each record's served bytes, byte for byte, for sinks that write JSON anyway.

The split is a fast path for the shape the service sends: a compact array of objects that all start
with the same key (``[{"CreationTime":…},{"CreationTime":…}]``), without line breaks. It is sound
whatever the input: the ranges are accepted only if every one parses as a JSON object on its own, and
then, JSON's grammar being unambiguous, they are exactly the array's elements. Any other shape, and any
range that fails to parse, falls back to parsing the whole body, which either yields the records or
raises the error a malformed blob deserves (``ApiPermanentError`` naming the blob).

Numbers keep their exact value: a record holding an integer orjson would read as a float (beyond 64
bits) is parsed by the standard library instead; ``served()`` never re-writes numbers at all.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, overload

import orjson

from .errors import ApiPermanentError
from .models import Record

# orjson reads integers beyond 64 bits as floats: above 2**64 (20+ digits), below -2**63 (19+ digits).
# Such a number sends the text to the stdlib parser, which keeps it exact. A match inside a string
# only costs the slower parse.
HUGE_INTEGER = re.compile(rb"[\[:,]\s*(?:-\d{19,}|\d{20,})")


def loads(text: bytes | memoryview) -> Any:
    """One JSON text, numbers exact (see ``HUGE_INTEGER``)."""
    if HUGE_INTEGER.search(text):
        return json.loads(bytes(text))
    return orjson.loads(text)


def parse_array(body: bytes, what: str) -> list[Any]:
    """The whole body as a list, or ``ApiPermanentError`` naming ``what``."""
    try:
        doc = loads(body)
    except (orjson.JSONDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiPermanentError(f"{what} is not valid JSON (or not UTF-8): {err}") from err
    if not isinstance(doc, list):
        raise ApiPermanentError(f"{what} is not a JSON array")
    return doc


def _split(body: bytes) -> tuple[array[int], array[int]] | None:
    """(starts, ends) of the records of a compact array of objects sharing a first key; None if not that shape."""
    if len(body) < 4 or not body.startswith(b'[{"') or not body.endswith(b"}]"):
        return None
    if b"\n" in body or b"\r" in body:
        return None  # not compact; NDJSON needs records without line breaks
    key_end = body.find(b'":', 3)
    if key_end < 0 or key_end > 200:
        return None
    separator = b"},{" + body[2 : key_end + 2]  # e.g. b'},{"CreationTime":'
    starts, ends = array("q", [1]), array("q")
    find = body.find
    position = 1
    while True:
        cut = find(separator, position)
        if cut < 0:
            break
        ends.append(cut + 1)
        starts.append(cut + 2)
        position = cut + 2
    ends.append(len(body) - 1)
    return starts, ends


def _valid_object(text: memoryview) -> bool:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict)


class ContentRecords(Sequence[Record]):
    """The records of one content blob; see the module docstring."""

    __slots__ = ("_body", "_ends", "_parsed", "_starts")

    def __init__(
        self,
        body: bytes,
        starts: array[int] | None = None,
        ends: array[int] | None = None,
        parsed: list[Record] | None = None,
    ) -> None:
        self._body = body
        self._starts = starts if starts is not None else array("q")
        self._ends = ends if ends is not None else array("q")
        self._parsed = parsed

    @classmethod
    def from_body(cls, body: bytes, what: str) -> ContentRecords:
        """Split and validate ``body`` (a JSON array of records); ``ApiPermanentError`` naming ``what`` if it is not."""
        split = _split(body)
        if split is not None:
            starts, ends = split
            view = memoryview(body)
            if all(_valid_object(view[s:e]) for s, e in zip(starts, ends, strict=True)):
                return cls(body, starts, ends)
        return cls(b"", parsed=parse_array(body, what))

    @classmethod
    def from_records(cls, records: list[Record]) -> ContentRecords:
        return cls(b"", parsed=records)

    @property
    def raw(self) -> bool:
        """True when the records are held as served bytes (the fast path), False when parsed."""
        return self._parsed is None

    def __len__(self) -> int:
        return len(self._parsed) if self._parsed is not None else len(self._starts)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | Sequence[Record]:
        if self._parsed is not None:
            return self._parsed[index]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start, end = self._starts[index], self._ends[index]
        record: Record = loads(memoryview(self._body)[start:end])
        return record

    def __iter__(self) -> Iterator[Record]:
        if self._parsed is not None:
            yield from self._parsed
            return
        view = memoryview(self._body)
        for start, end in zip(self._starts, self._ends, strict=True):
            yield loads(view[start:end])

    def served(self) -> Iterator[bytes]:
        """Each record's bytes exactly as served (compact JSON on one line); only when ``raw``."""
        if self._parsed is not None:
            raise ValueError("these records were parsed; serialize them instead")
        body = self._body
        for start, end in zip(self._starts, self._ends, strict=True):
            yield body[start:end]
