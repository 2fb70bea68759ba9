"""Value types shared by the lister, the fetcher and the sinks.

``FetchTask`` is the queue message contract between the two functions: a versioned JSON body,
so that a message written by one release can be read (or clearly refused) by the next.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass, replace
from typing import Any

import orjson

from .errors import MessageFormatError

CONTENT_TYPES: tuple[str, ...] = (
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
)

Record = dict[str, Any]
"""One audit record exactly as the API served it (parsed JSON object)."""

TASK_VERSION = 1
# Deferrals of one blob: with a 1-minute minimum delay, far more than the source's 7-day retention holds.
MAX_ATTEMPT = 100_000


def utc(value: dt.datetime) -> dt.datetime:
    """The same instant as an aware UTC datetime (naive values are taken as UTC, as the API does)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def parse_api_time(text: str) -> dt.datetime:
    """Parse the API's timestamps (``2015-05-23T17:35:00.000Z``, with or without fraction or ``Z``)."""
    return utc(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))


def format_api_time(value: dt.datetime) -> str:
    """The form the listing endpoint accepts for startTime/endTime: ``YYYY-MM-DDTHH:MM:SS`` in UTC."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A listing window ``[start, end)`` on ``contentCreated``, as the API defines it."""

    start: dt.datetime
    end: dt.datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"empty window {self.start.isoformat()} .. {self.end.isoformat()}")

    @property
    def span(self) -> dt.timedelta:
        return self.end - self.start


class ListingEntryError(ValueError):
    """One entry of a content listing is not a usable content blob.

    ``content_id`` is the entry's contentId when it had a readable one (raw text from the service:
    escape it before logging). The message says what is wrong and never echoes the entry's values.
    """

    def __init__(self, problem: str, content_id: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.content_id = content_id


_LISTING_FIELDS = ("contentType", "contentId", "contentUri", "contentCreated", "contentExpiration")


@dataclass(frozen=True, slots=True)
class ContentBlob:
    """One entry of a content listing: where a blob of audit records can be fetched."""

    content_type: str
    content_id: str
    content_uri: str
    content_created: dt.datetime
    content_expiration: dt.datetime

    @classmethod
    def from_api(cls, item: object) -> ContentBlob:
        """Check and convert one listing entry; raises ``ListingEntryError`` naming every problem found."""
        if not isinstance(item, dict):
            raise ListingEntryError(f"the entry is a JSON {_json_kind(item)}, not an object")
        raw_id = item.get("contentId")
        content_id = raw_id if isinstance(raw_id, str) and raw_id else None
        problems: list[str] = []
        text: dict[str, str] = {}
        for name in _LISTING_FIELDS:
            value = item.get(name)
            if isinstance(value, str) and value:
                text[name] = value
            elif name not in item or value is None:
                problems.append(f"{name} is missing")
            else:
                problems.append(f"{name} is a JSON {_json_kind(value)}, not a non-empty string")
        times: dict[str, dt.datetime] = {}
        for name in ("contentCreated", "contentExpiration"):
            if name in text:
                try:
                    times[name] = parse_api_time(text[name])
                except ValueError:
                    problems.append(f"{name} is not an ISO 8601 timestamp")
        if problems:
            raise ListingEntryError("; ".join(problems), content_id)
        return cls(
            content_type=text["contentType"],
            content_id=text["contentId"],
            content_uri=text["contentUri"],
            content_created=times["contentCreated"],
            content_expiration=times["contentExpiration"],
        )


def _json_kind(value: object) -> str:
    """The JSON name of a parsed value's type, for messages that must not echo the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "empty string" if not value else "string"
    return "array" if isinstance(value, list) else "object"


@dataclass(frozen=True, slots=True)
class FetchTask:
    """The queue message: one content blob of one tenant to fetch and ship."""

    tenant_id: str
    content_type: str
    content_id: str
    content_uri: str
    content_created: dt.datetime
    content_expiration: dt.datetime
    attempt: int = 0
    """How often this blob was deferred (a sink or the API failing; see o365collector.deferral). Written
    only when above 0, so a first message is the v1 body every release reads; older readers ignore it."""

    @classmethod
    def for_blob(cls, tenant_id: str, blob: ContentBlob) -> FetchTask:
        return cls(
            tenant_id=tenant_id,
            content_type=blob.content_type,
            content_id=blob.content_id,
            content_uri=blob.content_uri,
            content_created=blob.content_created,
            content_expiration=blob.content_expiration,
        )

    def to_message(self) -> str:
        body = {
            "v": TASK_VERSION,
            "tenantId": self.tenant_id,
            "contentType": self.content_type,
            "contentId": self.content_id,
            "contentUri": self.content_uri,
            "contentCreated": self.content_created.isoformat(),
            "contentExpiration": self.content_expiration.isoformat(),
        }
        if self.attempt:
            body["attempt"] = self.attempt
        return orjson.dumps(body).decode()

    def deferred(self) -> FetchTask:
        """The same task, deferred once more."""
        return replace(self, attempt=self.attempt + 1)

    @classmethod
    def from_message(cls, text: str | bytes) -> FetchTask:
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError as err:
            raise MessageFormatError(f"queue message is not JSON: {err}") from err
        if not isinstance(body, dict):
            raise MessageFormatError("queue message is not a JSON object")
        version = body.get("v")
        if version != TASK_VERSION:
            raise MessageFormatError(
                f"queue message version {version!r} is not supported (this release reads v{TASK_VERSION})"
            )
        attempt = body.get("attempt", 0)
        # bool is an int to Python: refused too. The bound keeps a forged counter from overflowing a delay.
        if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 <= attempt <= MAX_ATTEMPT:
            raise MessageFormatError(f"queue message has a bad attempt counter (expected 0..{MAX_ATTEMPT})")
        try:
            return cls(
                tenant_id=str(body["tenantId"]),
                content_type=str(body["contentType"]),
                content_id=str(body["contentId"]),
                content_uri=str(body["contentUri"]),
                content_created=parse_api_time(str(body["contentCreated"])),
                content_expiration=parse_api_time(str(body["contentExpiration"])),
                attempt=attempt,
            )
        except KeyError as err:
            raise MessageFormatError(f"queue message lacks field {err.args[0]!r}") from err
        except ValueError as err:
            raise MessageFormatError(f"queue message has a bad timestamp: {err}") from err


# With O365_MESSAGE_KEY set, a task message carries an HMAC-SHA256 of its other fields (keys sorted,
# compact JSON) in this field; readers that do not check it ignore it, so the version stays 1.
SIGNATURE_FIELD = "sig"


def _signature(fields: dict[str, Any], key: bytes) -> str:
    payload = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def sign_message(text: str, key: bytes) -> str:
    """``text`` (a task message) with its signature added."""
    fields = orjson.loads(text)
    if not isinstance(fields, dict):
        raise MessageFormatError("queue message is not a JSON object")
    fields.pop(SIGNATURE_FIELD, None)
    return orjson.dumps({**fields, SIGNATURE_FIELD: _signature(fields, key)}).decode()


def signature_problem(text: str | bytes, key: bytes) -> str | None:
    """Why ``text`` is not a task message signed with ``key``; None if it is."""
    try:
        fields = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "the message is not JSON"
    if not isinstance(fields, dict):
        return "the message is not a JSON object"
    given = fields.pop(SIGNATURE_FIELD, None)
    if not isinstance(given, str):
        return "the message carries no signature (O365_MESSAGE_KEY is set, so every message must be signed)"
    if not hmac.compare_digest(given.encode(), _signature(fields, key).encode()):
        return "the message's signature does not match (altered, or signed with another O365_MESSAGE_KEY)"
    return None


@dataclass(frozen=True, slots=True)
class BlobContext:
    """What a sink may know about the records it is given (for routing, naming, partitioning)."""

    tenant_id: str
    content_type: str
    content_id: str
    content_created: dt.datetime
