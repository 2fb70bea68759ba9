"""A content blob's records, kept as the bytes the API served: split, validated, parsed only when asked.

Parsing a blob into Python objects costs three to four times its size in memory and most of the
fetcher's CPU, while a sink that writes JSON needs nothing but each record's bytes. So
``ContentRecords.from_body`` splits the served JSON array into one byte range per record and
validates each range with orjson, keeping nothing of the parse. The result is a ``Sequence[Record]``:
``len``, indexing and iteration give dicts, parsed as they are reached (and not kept), and
``served()`` gives each record's served bytes, byte for byte, for sinks that write JSON anyway.
Validation can run on another thread while the caller prepares to send (``ContentRecords`` says how).

The split is a fast path for the shape the service sends: a compact array of objects that all start
with the same key (``[{"CreationTime":…},{"CreationTime":…}]``), without line breaks. It is sound
whatever the input: the ranges are accepted only if every one parses as a JSON object on its own, and
then, JSON's grammar being unambiguous, they are exactly the array's elements. Any other shape, and any
range that fails to parse, falls back to parsing the whole body, which either yields the records or
raises the error a malformed blob deserves (``MalformedContentError`` naming the blob). A blob is
malformed unless it is a JSON array whose every element is an object: a record is an object, and
sinks index records by field.

Numbers keep their exact value: a record holding an integer orjson would read as a float (beyond 64
bits) is parsed by the standard library instead; ``served()`` never re-writes numbers at all. Both
parsers refuse what JSON does not have (``NaN``, ``Infinity``) and numbers no double can hold
(``1e999``), which would otherwise reach the sinks as ``null``.
"""

from __future__ import annotations

import json
import math
import re
import threading
from array import array
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import Any, overload

import orjson

from .errors import ApiPermanentError, MalformedContentError
from .invocation import TiedThreadPool
from .models import Record

# orjson reads integers beyond 64 bits as floats: above 2**64 (20+ digits), below -2**63 (19+ digits).
# Such a number sends the text to the stdlib parser, which keeps it exact. A match inside a string
# only costs the slower parse.
HUGE_INTEGER = re.compile(rb"[\[:,]\s*(?:-\d{19,}|\d{20,})")


def _no_constant(name: str) -> Any:
    # The stdlib reads NaN, Infinity and -Infinity, which JSON does not have (orjson refuses them).
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    # The stdlib reads 1e999 as inf; orjson refuses it ("number is infinity when parsed as double").
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number is beyond the range of a double")
    return value


def loads(text: bytes | memoryview) -> Any:
    """One JSON text, numbers exact (see ``HUGE_INTEGER``); ``ValueError`` for what JSON does not allow."""
    if HUGE_INTEGER.search(text):
        return json.loads(bytes(text), parse_constant=_no_constant, parse_float=_finite_float)
    return orjson.loads(text)


def parse_array(body: bytes, what: str) -> list[Any]:
    """The whole body as a list, or ``ApiPermanentError`` naming ``what``."""
    try:
        doc = loads(body)
    except ValueError as err:  # orjson's and json's JSONDecodeError, UnicodeDecodeError, the checks above
        raise ApiPermanentError(f"{what} is not valid JSON (or not UTF-8): {err}") from err
    if not isinstance(doc, list):
        raise ApiPermanentError(f"{what} is not a JSON array")
    return doc


def parse_records(body: bytes, what: str) -> list[Record]:
    """The whole body as a list of records (objects), or ``MalformedContentError`` naming ``what``."""
    try:
        doc = parse_array(body, what)
    except ApiPermanentError as err:
        raise MalformedContentError(str(err)) from err
    for index, item in enumerate(doc):
        if not isinstance(item, dict):
            raise MalformedContentError(
                f"{what} is not an array of records: element {index} is {_json_kind(item)}, not an object"
            )
    return doc


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


def _split(body: bytes) -> tuple[array[int], array[int], bytes] | None:
    """(starts, ends, separator) of the records of a compact array of objects sharing a first key, or None.

    Records are contiguous: one comma lies between record k's end and record k+1's start, and the
    separator (``},{"CreationTime":``) occurs in the body only where one record ends and the next begins.
    """
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
    return starts, ends, separator


def _valid_object(text: memoryview) -> bool:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict)


class ContentRecords(Sequence[Record]):
    """The records of one content blob; see the module docstring.

    Validation may run in the background (``from_body(..., validate_on=pool)``) while the caller goes
    on: every accessor waits for it (``settle``) except the *draft* ones (``split_count``,
    ``served_size``, ``served_joined``), which read the split as it stands, so that a sender can cut
    and compress batches meanwhile. Whatever such a sender prepared it must not deliver before
    ``settle()`` has returned True.
    """

    __slots__ = ("_body", "_ends", "_parsed", "_pending", "_separator", "_starts", "_what")

    def __init__(
        self,
        body: bytes,
        starts: array[int] | None = None,
        ends: array[int] | None = None,
        separator: bytes = b"",
        *,
        parsed: list[Record] | None = None,
        what: str = "content blob",
    ) -> None:
        self._body = body
        self._starts = starts if starts is not None else array("q")
        self._ends = ends if ends is not None else array("q")
        self._separator = separator
        self._parsed = parsed
        self._what = what
        self._pending: Future[None] | None = None

    @classmethod
    def from_body(cls, body: bytes, what: str, *, validate_on: Executor | None = None) -> ContentRecords:
        """Split and validate ``body``, a JSON array of records; ``MalformedContentError`` naming ``what`` if not.

        With ``validate_on``, validation runs there and the error (if any) is raised by ``settle()``
        and by every accessor that waits for it.
        """
        split = _split(body)
        if split is None:
            return cls(b"", parsed=parse_records(body, what), what=what)
        records = cls(body, *split, what=what)
        if validate_on is None:
            records._validate()
        else:
            records._pending = validate_on.submit(records._validate)
        return records

    @classmethod
    def from_records(cls, records: list[Record]) -> ContentRecords:
        return cls(b"", parsed=records)

    def _validate(self) -> None:
        view = memoryview(self._body)
        if all(_valid_object(view[s:e]) for s, e in zip(self._starts, self._ends, strict=True)):
            return
        # Not the fast path's shape after all, or malformed: whatever parsing the whole body says. The
        # split stays as it was, so draft readers on another thread never see it change under them.
        self._parsed = parse_records(self._body, self._what)

    def settle(self) -> bool:
        """Wait for validation; True if the records are held as served. ``MalformedContentError`` if malformed."""
        if self._pending is not None:
            self._pending.result()
        return self._parsed is None

    @property
    def raw(self) -> bool:
        """True when the records are held as served bytes (the fast path), False when parsed."""
        return self.settle()

    @property
    def draft(self) -> bool:
        """True when a split exists (validated or not): the draft accessors can be used."""
        return len(self._starts) > 0

    @property
    def split_count(self) -> int:
        """Records found by the split (draft: the final count once ``settle()`` returned True)."""
        return len(self._starts)

    def __len__(self) -> int:
        return len(self._starts) if self.settle() else len(self._parsed or ())

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | Sequence[Record]:
        if not self.settle():
            assert self._parsed is not None
            return self._parsed[index]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start, end = self._starts[index], self._ends[index]
        record: Record = loads(memoryview(self._body)[start:end])
        return record

    def __iter__(self) -> Iterator[Record]:
        if not self.settle():
            yield from self._parsed or ()
            return
        view = memoryview(self._body)
        for start, end in zip(self._starts, self._ends, strict=True):
            yield loads(view[start:end])

    def served(self) -> Iterator[bytes]:
        """Each record's bytes exactly as served (compact JSON on one line); only when ``raw``."""
        if not self.settle():
            raise ValueError("these records were parsed, so their served bytes are gone: serialize them instead")
        body = self._body
        for start, end in zip(self._starts, self._ends, strict=True):
            yield body[start:end]

    def served_size(self, first: int, stop: int) -> int:
        """Draft: the served bytes of records ``first`` to ``stop - 1``, all together."""
        return self._ends[stop - 1] - self._starts[first] - (stop - 1 - first)  # less the commas between

    def served_joined(self, first: int, stop: int, joiner: bytes) -> bytes:
        """Draft: records ``first`` to ``stop - 1`` as served, joined by ``joiner``.

        One slice of the body, where the separators between these records are the only matches of
        the separator pattern: a single ``replace`` puts ``joiner`` in place of each comma.
        """
        chunk = self._body[self._starts[first] : self._ends[stop - 1]]
        if joiner == b",":
            return chunk
        separator = self._separator  # },{"CreationTime":
        return chunk.replace(separator, b"}" + joiner + separator[2:])


_validators: TiedThreadPool | None = None
_validators_lock = threading.Lock()


def validator_pool() -> TiedThreadPool:
    """The process's threads for background validation (a few, so one big blob never holds up another).

    Shared by every invocation of the process, so each task is tied to the invocation that submitted it."""
    global _validators
    with _validators_lock:
        if _validators is None:
            _validators = TiedThreadPool(4, thread_name_prefix="content-validate")
        return _validators
