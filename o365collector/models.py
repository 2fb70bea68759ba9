"""Value types shared by the lister, the fetcher and the sinks.

``FetchTask`` is the queue message contract between the two functions: a versioned JSON body,
so that a message written by one release can be read (or clearly refused) by the next.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class ContentBlob:
    """One entry of a content listing: where a blob of audit records can be fetched."""

    content_type: str
    content_id: str
    content_uri: str
    content_created: dt.datetime
    content_expiration: dt.datetime

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> ContentBlob:
        return cls(
            content_type=str(item["contentType"]),
            content_id=str(item["contentId"]),
            content_uri=str(item["contentUri"]),
            content_created=parse_api_time(str(item["contentCreated"])),
            content_expiration=parse_api_time(str(item["contentExpiration"])),
        )


@dataclass(frozen=True, slots=True)
class FetchTask:
    """The queue message: one content blob of one tenant to fetch and ship."""

    tenant_id: str
    content_type: str
    content_id: str
    content_uri: str
    content_created: dt.datetime
    content_expiration: dt.datetime

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
        return orjson.dumps(body).decode()

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
        try:
            return cls(
                tenant_id=str(body["tenantId"]),
                content_type=str(body["contentType"]),
                content_id=str(body["contentId"]),
                content_uri=str(body["contentUri"]),
                content_created=parse_api_time(str(body["contentCreated"])),
                content_expiration=parse_api_time(str(body["contentExpiration"])),
            )
        except KeyError as err:
            raise MessageFormatError(f"queue message lacks field {err.args[0]!r}") from err
        except ValueError as err:
            raise MessageFormatError(f"queue message has a bad timestamp: {err}") from err


@dataclass(frozen=True, slots=True)
class BlobContext:
    """What a sink may know about the records it is given (for routing, naming, partitioning)."""

    tenant_id: str
    content_type: str
    content_id: str
    content_created: dt.datetime
