"""Client for the Office 365 Management Activity API: listing (pages inside), content, subscriptions.

The client owns paging and retries; callers see iterators and exceptions from ``errors``.

- Every call carries ``PublisherIdentifier`` (the quota key), next-page and content GETs included.
- The bearer token goes only to the configured API host: a ``contentUri`` or ``NextPageUri`` that
  points anywhere else raises ``UntrustedUrlError`` instead of being followed. ``content_uri_problem``
  says whether a queue message's contentUri is the content path of its own tenant and content id.
- A content body is read up to ``O365_MAX_CONTENT_MB`` once decompressed, and refused beyond it.
- Throttling is HTTP 403 with code ``AF429`` (not 429); it is retried like 408, 429, 5xx and
  ``AF50000``, honouring ``Retry-After`` when the service sends one, bounded in count and time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import ParseResult, SplitResult, parse_qsl, unquote, urlencode, urlparse, urlsplit, urlunparse

import orjson
import requests
import urllib3
from azure.core.exceptions import AzureError

from .auth import TokenProvider
from .config import CollectionPolicy, HttpPolicy
from .content import ContentRecords, parse_array, validator_pool
from .errors import (
    ApiPermanentError,
    ApiTransientError,
    CollectorError,
    ContentUnavailableError,
    MalformedContentError,
    SubscriptionMissingError,
    UntrustedUrlError,
)
from .models import ContentBlob, FetchTask, ListingEntryError, Record, TimeWindow, format_api_time
from .ratelimit import Pacer, RateLimiter
from .redaction import printable, shown_host
from .request_counts import RequestCounts
from .retry import RetryPolicy, parse_retry_after, retrying
from .sessions import EnvironmentOnceSession
from .sources.base import FetchedUnit, UnitHistory
from .sources.catalog import AUDIT
from .tenant_config import TenantConfig

log = logging.getLogger(__name__)

# Both names: the docs corrected NextPageUrl to NextPageUri in 2018, but older pages still say Url.
NEXT_PAGE_HEADERS = ("NextPageUri", "NextPageUrl")
MAX_PAGES = 10_000  # a listing longer than this is a service fault, not data: stop rather than loop

_AUDIT_OFF_HINT = (
    "unified audit logging appears to be off for tenant {tenant}: turn it on in Microsoft Purview "
    "(Audit > Start recording user and admin activity); it can take up to 60 minutes to take effect"
)

# What each permanent AF code asks of the admin.
_PERMANENT_HINTS: dict[str, str] = {
    "AF10001": "the app lacks the ActivityFeed.Read permission: add Office 365 Management APIs > "
    "ActivityFeed.Read (application) to the app registration and grant admin consent",
    "AF20010": "the token's tenant does not match O365_TENANT_ID: use the tenant where the app is registered",
    "AF20011": "the tenant does not exist for the Management Activity API: check O365_TENANT_ID and O365_CLOUD",
    "AF20012": "the tenant is incorrectly configured for the Management Activity API: contact Microsoft support",
    "AF20013": "O365_TENANT_ID is not a valid GUID",
    "AF20020": "the content type is not valid: check O365_CONTENT_TYPES",
    "AF20023": "the subscription was disabled by an administrator: re-enable it with "
    "`python -m o365collector subscriptions start --content-type <type>` once that is intended",
    "AF20030": "the listing window was refused: check this machine's clock (windows must be at most 24 h, "
    "within the last 7 days)",
    "AF20055": "the listing window was refused: check this machine's clock (windows must be at most 24 h, "
    "within the last 7 days)",
    "AF20052": "the content id is invalid",
}
_TRANSIENT_CODES = frozenset({"AF429", "AF50000", "AF50005", "AF50006", "AF20031"})
_DEFAULT_PORTS = {"https": 443, "http": 80}
# A content body is read in pieces of this size (decompressed), so the size cap is checked as it grows.
_READ_CHUNK = 1 << 20


@dataclass
class ApiStats:
    """Counters for the run summary (per client, i.e. per tenant; a thread may also count its own share)."""

    requests: int = 0
    throttled: int = 0
    retries: int = 0


def _service_error(body: bytes) -> tuple[str | None, str]:
    """(code, message) from an error body: ``{"error":{"code","message"}}`` or ``{"Message": ...}``."""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None, body[:300].decode("utf-8", "replace")
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            return (str(err["code"]) if err.get("code") else None), str(err.get("message", ""))
        if "Message" in doc:
            return None, str(doc["Message"])
    return None, body[:300].decode("utf-8", "replace")


def classify_response(
    status: int, body: bytes, headers: dict[str, str] | Any, tenant_id: str, what: str
) -> CollectorError:
    """The exception a non-2xx answer means. Pure: unit-tested over a table of service answers."""
    code, message = _service_error(body)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    where = f"{what}: HTTP {status}" + (f" {code}" if code else "")
    if "does not exist" in message and "DataServiceException" in message:
        return ApiPermanentError(f"{where}: {_AUDIT_OFF_HINT.format(tenant=tenant_id)}", status=status, code=code)
    if code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
        return ApiTransientError(f"{where} {message}".strip(), status=status, code=code, retry_after=retry_after)
    if code == "AF20022":
        return SubscriptionMissingError(f"{where}: no subscription for this content type", status=status, code=code)
    if code == "AF20051":
        return ContentUnavailableError(f"{where}: content expired at the source ({message})", status=status, code=code)
    if code == "AF20050":
        return ContentUnavailableError(f"{where}: content does not exist ({message})", status=status, code=code)
    if status == 404 and code is None and what.startswith("fetch"):
        # Only AF20050/AF20051 say the blob is gone. A 404 without a code comes from a front end or a
        # routing hiccup, not from the content store: marking the blob lost on it would lose it for good.
        return ApiTransientError(
            f"{where}: not found without an AF code, retried (only AF20050/AF20051 mean the content is gone)",
            status=status,
        )
    if status == 401 and code is None:
        # The API answers 401 {"Message": "Authorization has been denied..."} to a token it rejects:
        # usually a refresh race; when it persists, the permission or consent is missing.
        return ApiTransientError(
            f"{where}: the access token was refused; if this persists, check that the app has "
            "Office 365 Management APIs permissions with admin consent",
            status=status,
        )
    hint = _PERMANENT_HINTS.get(code or "")
    detail = hint or message or "the request was refused"
    return ApiPermanentError(f"{where}: {detail}", status=status, code=code)


class ManagementApiClient:
    """One tenant's view of the Management Activity API; the audit feed's ``sources.base.SourceClient``."""

    source = AUDIT

    def __init__(
        self,
        tenant: TenantConfig,
        *,
        tokens: TokenProvider | None = None,
        session: requests.Session | None = None,
        policy: HttpPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pacer: Pacer | None = None,
    ) -> None:
        """``pacer``: the publisher's budget shared with other instances (``o365collector.pacing``), if any."""
        self.tenant = tenant
        self._tokens = tokens or TokenProvider(tenant)
        self._session = session or requests.Session()
        self._policy = policy or HttpPolicy()
        self._sleep = sleep
        self._root = f"{tenant.api_url}/api/v1.0/{tenant.tenant_id}/activity/feed"
        api = urlparse(tenant.api_url)
        self._api_netloc = api.netloc
        self._counts = RequestCounts(ApiStats)
        self.stats = self._counts.total
        # The API's quota is per tenant (2,000 requests/min baseline): pace below it, with a margin.
        self._limiter = RateLimiter(self._policy.max_requests_per_minute / 60.0, sleep=sleep)
        self._pacer = pacer

    def counting(self) -> AbstractContextManager[ApiStats]:
        """Counts this thread's requests separately (several streams of one tenant share the client)."""
        return self._counts.counting()

    def _count(self, field: str) -> None:
        self._counts.count(field)

    def sign_in(self) -> None:
        """Get (or reuse) the access token now, so a credential problem shows before any listing."""
        try:
            self._tokens.get_token()
        except AzureError as err:  # network failure talking to the login host
            raise ApiTransientError(f"token request failed: {type(err).__name__}") from err

    # -- the source contract (o365collector.sources.base) ---------------------------------------
    def policy(self, base: CollectionPolicy) -> CollectionPolicy:
        """The settings' policy is the audit feed's own (7-day retention, re-list overlap, late sweep)."""
        return base

    def list_units(
        self,
        stream: str,
        window: TimeWindow,
        on_malformed: Callable[[ListingEntryError], None] | None = None,
    ) -> Iterator[ContentBlob]:
        return self.list_content(stream, window, on_malformed)

    def unit_problem(self, task: FetchTask) -> str | None:
        return content_uri_problem(
            task.content_uri, api_url=self.tenant.api_url, tenant_id=self.tenant.tenant_id, content_id=task.content_id
        )

    def fetch_unit(self, task: FetchTask, history: UnitHistory) -> FetchedUnit:
        """A content blob's records; a blob stands alone, so ``history`` is not read."""
        return FetchedUnit(self.fetch_records(task.content_uri), filterable=True)

    # -- listing ---------------------------------------------------------------------------
    def list_content(
        self,
        content_type: str,
        window: TimeWindow,
        on_malformed: Callable[[ListingEntryError], None] | None = None,
    ) -> Iterator[ContentBlob]:
        """Every content blob of ``content_type`` whose contentCreated lies in ``window``, all pages.

        A missing subscription (AF20022) is started and the listing retried once. An entry that is
        not a usable blob is handed to ``on_malformed`` and skipped, so it never hides the entries
        after it (without ``on_malformed`` its ``ListingEntryError`` ends the listing).
        """
        params = {
            "contentType": content_type,
            "startTime": format_api_time(window.start),
            "endTime": format_api_time(window.end),
        }
        url: str | None = f"{self._root}/subscriptions/content?{urlencode(params)}"
        what = f"list {content_type} {params['startTime']}..{params['endTime']}"
        pages = 0
        seen_pages: set[str] = set()
        while url is not None:
            try:
                response = self._call("GET", url, what, url_kind="NextPageUri" if pages else "listing URL")
            except SubscriptionMissingError:
                if pages:
                    raise
                log.warning(
                    "no subscription for %s: starting it",
                    content_type,
                    extra={"tenant_id": self.tenant.tenant_id, "content_type": content_type},
                )
                self.start_subscription(content_type)
                response = self._call("GET", url, what, url_kind="listing URL")
            pages += 1
            for item in _json_array(response.content, what):
                try:
                    blob = ContentBlob.from_api(item)
                except ListingEntryError as err:
                    if on_malformed is None:
                        raise
                    on_malformed(err)
                    continue
                yield blob
            url = next((response.headers[h] for h in NEXT_PAGE_HEADERS if response.headers.get(h)), None)
            if url is not None:
                if url in seen_pages or pages >= MAX_PAGES:
                    raise ApiTransientError(f"{what}: the service repeated a page or exceeded {MAX_PAGES} pages")
                seen_pages.add(url)

    # -- content ---------------------------------------------------------------------------
    def fetch_content(self, content_uri: str) -> list[Record]:
        """The audit records of one content blob, exactly as served."""
        return list(self.fetch_records(content_uri))

    def fetch_records(self, content_uri: str) -> ContentRecords:
        """The records of one content blob, held as the bytes served (see ``content``).

        The body is read into one buffer (not in the 10 KB chunks ``requests`` joins), inside the
        retry: a connection lost halfway through the body is retried like one lost before it. The
        records are validated on a background thread; reading them waits for it, and a blob that is
        not a JSON array of objects raises ``MalformedContentError`` naming it (``ContentRecords.settle``),
        as does a body beyond ``O365_MAX_CONTENT_MB`` (decompressed), which is not read further.
        """
        what = f"fetch {_short(content_uri)}"
        target = self._trusted(content_uri, "contentUri")
        limit = self._policy.max_content_mb << 20
        policy = RetryPolicy(
            max_attempts=self._policy.max_attempts,
            max_seconds=self._policy.max_retry_seconds,
            backoff_seconds=self._policy.backoff_seconds,
        )
        for attempt in retrying(policy, sleep=self._sleep, on_retry=self._count_retry):
            with attempt:
                with self._send("GET", target, what, stream=True) as response:
                    try:
                        body = _read_capped(response, limit, f"content blob {_short(content_uri)}")
                    except (urllib3.exceptions.HTTPError, OSError) as err:
                        raise ApiTransientError(f"{what}: {type(err).__name__} reading the body") from err
                return ContentRecords.from_body(
                    body, f"content blob {_short(content_uri)}", validate_on=validator_pool()
                )
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    # -- subscriptions ---------------------------------------------------------------------
    def list_subscriptions(self) -> list[dict[str, Any]]:
        response = self._call("GET", f"{self._root}/subscriptions/list", "list subscriptions")
        return _json_array(response.content, "subscription list")

    def list_subscriptions_with_date(self) -> tuple[list[dict[str, Any]], str | None]:
        """The subscription list and the service's ``Date`` header (its clock, for ``check``'s skew test)."""
        response = self._call("GET", f"{self._root}/subscriptions/list", "list subscriptions")
        return _json_array(response.content, "subscription list"), response.headers.get("Date")

    def start_subscription(self, content_type: str, *, webhook: dict[str, str] | None = None) -> dict[str, Any] | None:
        """Start (or re-enable) the subscription; "already enabled" (400 AF20024) counts as success.

        ``webhook`` (``address``, ``authId``, ``expiration``) sets, updates or re-enables its webhook: the
        service validates the address before answering (AF20021 when it does not answer 200). Returns the
        subscription as the service describes it (None when it was already enabled as asked).
        """
        url = f"{self._root}/subscriptions/start?{urlencode({'contentType': content_type})}"
        body = orjson.dumps({"webhook": webhook}) if webhook is not None else b""
        try:
            response = self._call("POST", url, f"start subscription {content_type}", body=body)
        except ApiPermanentError as err:
            if err.code != "AF20024":
                raise
            return None
        try:
            started = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            return None
        return started if isinstance(started, dict) else None

    def stop_subscription(self, content_type: str) -> None:
        url = f"{self._root}/subscriptions/stop?{urlencode({'contentType': content_type})}"
        self._call("POST", url, f"stop subscription {content_type}")

    # -- transport ---------------------------------------------------------------------------
    def _call(
        self, method: str, url: str, what: str, *, url_kind: str = "API URL", body: bytes = b""
    ) -> requests.Response:
        target = self._trusted(url, url_kind)
        policy = RetryPolicy(
            max_attempts=self._policy.max_attempts,
            max_seconds=self._policy.max_retry_seconds,
            backoff_seconds=self._policy.backoff_seconds,
        )
        for attempt in retrying(policy, sleep=self._sleep, on_retry=self._count_retry):
            with attempt:
                return self._send(method, target, what, body=body)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _send(self, method: str, url: str, what: str, *, stream: bool = False, body: bytes = b"") -> requests.Response:
        try:
            token = self._tokens.get_token()
        except AzureError as err:  # network failure talking to the login host
            raise ApiTransientError(f"token request failed: {type(err).__name__}") from err
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if method == "POST":
            headers["Content-Type"] = "application/json; utf-8"
        if self._pacer is not None:
            self._pacer.acquire()  # the fleet's budget first: a wait there must not spend a local token
        self._limiter.acquire()
        self._count("requests")
        try:
            response = self._session.request(
                method,
                url,
                headers=headers,
                timeout=self._policy.timeout_seconds,
                data=body if method == "POST" else None,
                stream=stream,
            )
        except (requests.ConnectionError, requests.Timeout) as err:
            raise ApiTransientError(f"{what}: {type(err).__name__} talking to {self._api_netloc}") from err
        if response.status_code < 300:
            return response
        error = classify_response(response.status_code, response.content, response.headers, self.tenant.tenant_id, what)
        # The hints name the single-tenant settings; a registry tenant's values live in its entry.
        error.args = (self.tenant.in_own_terms(str(error)), *error.args[1:])
        if isinstance(error, ApiTransientError) and error.throttled:
            self._count("throttled")
        raise error

    def _count_retry(self, _error: BaseException) -> None:
        self._count("retries")

    def _trusted(self, url: str, url_kind: str) -> str:
        """The URL with PublisherIdentifier added, if it points at the configured API host; else refuse."""
        parts = urlparse(url)
        if not same_origin(parts, urlparse(self.tenant.api_url)):
            raise UntrustedUrlError(url_kind, shown_host(parts.netloc) or printable(url[:80]), self._api_netloc)
        # Follow the service's URL verbatim; only append the quota key when it is missing.
        if any(k.lower() == "publisheridentifier" for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
            return url
        extra = urlencode({"PublisherIdentifier": self.tenant.publisher_id})
        return urlunparse(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))


def shared_session(pool_size: int) -> requests.Session:
    """A session whose connection pool fits the lister's concurrency (requests' default keeps 10 per host)."""
    session = EnvironmentOnceSession()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def same_origin(url: ParseResult | SplitResult, api: ParseResult | SplitResult) -> bool:
    """True if ``url`` is on the API's scheme, host and port (``:443`` is https's own port), without
    credentials: only such a URL may receive the bearer token."""
    try:
        port, api_port = url.port, api.port
    except ValueError:  # a port that is not a number
        return False
    if url.username is not None or url.password is not None or url.scheme.lower() != api.scheme.lower():
        return False
    default = _DEFAULT_PORTS.get(api.scheme.lower())
    return (url.hostname or "") == (api.hostname or "") and (port or default) == (api_port or default)


def content_uri_problem(content_uri: str, *, api_url: str, tenant_id: str, content_id: str) -> str | None:
    """Why ``content_uri`` is not the content path of ``tenant_id``'s blob ``content_id``; None if it is.

    The API's content URIs are ``{api_url}/api/v1.0/{tenant}/activity/feed/audit/{contentId}``
    (``Audit`` is seen too: ASP.NET routes ignore case; ``v1`` is the API's other version segment).
    The tenant and the percent-decoded last segment must be the message's own, so a message cannot
    have another path on the API host fetched (and its answer shipped as records, or an empty answer
    mark a real blob done). The problem text is printable and names no more than the URI's shape.
    """
    if content_id in ("", ".", "..") or not content_id.isprintable() or any(c in content_id for c in "/\\?#"):
        return "the content id is empty or holds a character content ids never have"
    parts = urlsplit(content_uri)
    api = urlsplit(api_url)
    if not same_origin(parts, api):
        return f"the contentUri points to {shown_host(parts.netloc)!r}, not to the API host {api.netloc!r}"
    if parts.query or parts.fragment:
        return "the contentUri carries a query or a fragment, which the API's content URIs never have"
    prefix = api.path.rstrip("/") + "/"
    if not parts.path.startswith(prefix):
        return "the contentUri is not under the API's root"
    segments = parts.path[len(prefix) :].split("/")
    shape = [s.lower() for s in segments[:6]]
    route = len(segments) == 7 and shape[:2] in (["api", "v1.0"], ["api", "v1"])
    if not route or shape[3:] != ["activity", "feed", "audit"]:
        return "the contentUri is not a content path (/api/v1.0/{tenant}/activity/feed/audit/{contentId})"
    if unquote(segments[2]).lower() != tenant_id.lower():
        return "the contentUri names another tenant than the message's tenantId"
    if unquote(segments[6]) != content_id:
        return "the contentUri names another content id than the message's contentId"
    return None


def _read_capped(response: requests.Response, limit: int, what: str) -> bytes:
    """The body, decompressed, or ``MalformedContentError`` once it exceeds ``limit`` bytes.

    A plain body of known length is read in one piece (one buffer, no joining) after checking the
    length; a compressed or chunked one is read in decompressed pieces, so a small gzip body that
    expands to gigabytes costs at most ``limit`` bytes before it is refused.
    """
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    length = response.headers.get("Content-Length", "")
    if encoding in ("", "identity") and length.isdigit():
        if int(length) > limit:
            raise _too_large(what, limit)
        body: bytes = response.raw.read(decode_content=True)
        return body
    pieces: list[bytes] = []
    size = 0
    while piece := response.raw.read(_READ_CHUNK, decode_content=True):
        size += len(piece)
        if size > limit:
            raise _too_large(what, limit)
        pieces.append(piece)
    return b"".join(pieces)


def _too_large(what: str, limit: int) -> MalformedContentError:
    return MalformedContentError(
        f"{what} is larger than O365_MAX_CONTENT_MB ({limit >> 20} MB) once decompressed: refused "
        "(raise O365_MAX_CONTENT_MB if blobs this large are expected)"
    )


def _json_array(body: bytes, what: str) -> list[Any]:
    """A JSON array, numbers exact; ``ApiPermanentError`` naming ``what`` if the body is not one."""
    return parse_array(body, what)


def _short(uri: str) -> str:
    """The content id part of a content URI, for messages (control characters escaped)."""
    return printable(uri.rsplit("/", 1)[-1][:120])
