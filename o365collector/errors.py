"""The collector's error hierarchy: what went wrong and what the caller must do about it.

::

    CollectorError
    ├── ConfigError                  a setting is missing or invalid (names the setting)
    │   └── UnknownTenantError       a tenant id this deployment does not collect from
    ├── RetryableError               try again later: redelivery, not poison
    │   ├── ApiTransientError        throttling (403 AF429, 429), 408, 5xx, AF50000, network
    │   ├── SinkTransientError       backend timeout, 429, 5xx, connection refused
    │   ├── StorageTransientError    Azure Storage unreachable or busy
    │   └── UnitNotReadyError        a unit waits for the one before it (being read by another delivery)
    └── PermanentError               retrying will not help: an operator must act
        ├── ApiPermanentError        bad tenant, missing permission, disabled subscription, ...
        │   ├── SubscriptionMissingError   AF20022 (the client starts it and retries)
        │   ├── ContentUnavailableError    AF20050/AF20051: the blob is gone at the source
        │   └── MalformedContentError      a blob that is not a JSON array of objects, or too large
        ├── UntrustedUrlError        a contentUri / NextPageUri that points away from the API host
        ├── SinkPermanentError       backend refused the data (auth, schema)
        ├── MessageFormatError       a queue message we cannot read
        └── RefusedMessageError      a queue message refused at fetch time: poisoned at once, never retried

Service data stays on the exception (``code``, ``status``, ``retry_after``) so callers can
classify without parsing messages. Messages never contain secrets or record bodies.
"""

from __future__ import annotations

from collections.abc import Iterator


class CollectorError(Exception):
    """Base of every error the collector raises on purpose."""

    retryable: bool = False


class ConfigError(CollectorError):
    """A setting is missing or invalid. ``setting`` names it, so the message can too."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class UnknownTenantError(ConfigError):
    """A tenant id (from a queue message) that is not among the configured tenants."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__("O365_TENANT_ID", f"tenant {tenant_id} is not configured in this deployment")
        self.tenant_id = tenant_id


class RetryableError(CollectorError):
    """The operation may succeed if repeated later (the queue redelivers, the next run re-lists)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(CollectorError):
    """Repeating the operation will fail the same way until someone changes something."""


class ApiTransientError(RetryableError):
    """The Management Activity API throttled us or failed in a way that usually passes."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.code = code

    @property
    def throttled(self) -> bool:
        return self.code == "AF429" or self.status == 429


class ApiPermanentError(PermanentError):
    """The API refused the request for a reason only an administrator can fix."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class SubscriptionMissingError(ApiPermanentError):
    """AF20022: no subscription for the content type. The client starts it and retries once."""


class ContentUnavailableError(ApiPermanentError):
    """AF20050 / AF20051: the content blob no longer exists at the source. Its records are lost."""


class MalformedContentError(ApiPermanentError):
    """A content blob that is not a JSON array of objects (or holds NaN, Infinity, a number beyond a
    double), or that decompresses beyond ``O365_MAX_CONTENT_MB``. Fetching it again gives the same bytes."""


class UntrustedUrlError(PermanentError):
    """A URL from the API points to a host other than the configured API host.

    Following it would send the bearer token to that host, so it is refused.
    """

    def __init__(
        self, url_kind: str, host: str, expected_host: str, *, settings: str = "O365_API_URL and O365_CLOUD"
    ) -> None:
        super().__init__(
            f"refused to follow a {url_kind} pointing to {host!r}: only the configured API host "
            f"{expected_host!r} receives the access token (check {settings})"
        )
        self.url_kind = url_kind
        self.host = host


class SinkTransientError(RetryableError):
    """The backend is down, slow or throttling; the same data should be sent again later."""


class SinkPermanentError(PermanentError):
    """The backend refused the data or our credentials; an operator must fix the sink settings."""


class StorageTransientError(RetryableError):
    """Azure Storage (queue or tables) failed; the work will be picked up again."""


class UnitNotReadyError(RetryableError):
    """A unit of work must wait for the unit before it, which another delivery is reading right now
    (a Graph window re-reads the end of the previous one). Not a failure: the message is put back
    with a short delay (``retry_after`` seconds) and does not count toward the poison queue."""


class MessageFormatError(PermanentError):
    """A queue message is not a content task this version can read."""


class RefusedMessageError(PermanentError):
    """A queue message the fetcher will not act on: forged or misrouted (a contentUri other than the
    content path of its own tenant and content id, a tenant or content type this deployment does not
    collect, a missing or wrong signature) or naming a blob that can never be shipped (malformed).

    The handler moves it to the poison queue at once, with ``reason``, instead of letting the queue
    redeliver it ``maxDequeueCount`` times; a forged message is refused before it claims anything.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def error_chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and everything it wraps: ``__cause__``/``__context__``, azure-core's ``inner_exception``,
    urllib3's ``reason``, exception args. For classifying transport failures by their root cause."""
    seen: set[int] = set()
    stack: list[BaseException] = [err]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [
            current.__cause__,
            current.__context__,
            getattr(current, "inner_exception", None),
            getattr(current, "reason", None),
            *current.args,
        ]
        stack.extend(item for item in linked if isinstance(item, BaseException))


def root_reason(causes: list[BaseException], *, limit: int = 200) -> str:
    """The text of the OS / ssl / http.client error underneath a transport failure: unlike the texts of
    requests, urllib3 and azure-core, it names no URL (which may carry a key) and no header."""
    for cause in causes:
        if not type(cause).__module__.startswith(("azure", "requests", "urllib3")):
            return (str(cause) or type(cause).__name__)[:limit]
    return type(causes[0]).__name__
