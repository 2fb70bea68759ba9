"""Microsoft Graph's HTTP conventions for the Graph sources: root per cloud, tokens, paging, retries, errors.

- Root: the cloud's Graph (``GRAPH_ROOTS``) or ``O365_GRAPH_URL``; the token's audience is always the cloud's
  real Graph (scope ``<root>/.default``), as the audit feed's keeps manage.office.com with O365_API_URL set.
- Paging: a collection is ``{"value": [...], "@odata.nextLink": "<absolute URL>"}``; the nextLink is followed
  as given until absent, only on the configured Graph origin (the bearer token goes nowhere else:
  ``UntrustedUrlError``), never twice, and at most ``MAX_PAGES`` pages.
  (https://learn.microsoft.com/graph/paging)
- Retries, in one place (``o365collector.retry``): 429 honouring ``Retry-After``, 408, 5xx (503/504 above
  all), connection errors. (https://learn.microsoft.com/graph/throttling)
- Errors: ``{"error": {"code", "message", "innerError"}}``. A missing permission is 403
  ``Authorization_RequestDenied``; sign-ins in a tenant without Entra ID P1/P2 are 403
  ``Authentication_RequestFromNonPremiumTenantOrB2CTenant``; a token Graph refuses is 401
  ``InvalidAuthenticationToken``. Each becomes an ``ApiPermanentError`` saying what the admin must do.
  Messages never carry tokens or record bodies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import orjson
import requests
from azure.core.exceptions import AzureError

from ..auth import TokenProvider
from ..config import HttpPolicy
from ..errors import ApiPermanentError, ApiTransientError, CollectorError, UntrustedUrlError
from ..management_api import ApiStats, same_origin
from ..models import Record
from ..ratelimit import RateLimiter
from ..redaction import printable, shown_host
from ..request_counts import RequestCounts
from ..retry import RetryPolicy, parse_retry_after, retrying
from ..tenant_config import TenantConfig

log = logging.getLogger(__name__)

# Microsoft Graph per O365_CLOUD (https://learn.microsoft.com/graph/deployments): GCC uses the global service.
GRAPH_ROOTS: dict[str, str] = {
    "Enterprise": "https://graph.microsoft.com",
    "GCC": "https://graph.microsoft.com",
    "GCCHigh": "https://graph.microsoft.us",
    "DoD": "https://dod-graph.microsoft.us",
}
MAX_PAGES = 10_000  # a window's listing longer than this is a service fault, not data: stop rather than loop
NON_PREMIUM = "Authentication_RequestFromNonPremiumTenantOrB2CTenant"


def graph_root(tenant: TenantConfig, url: str | None = None) -> str:
    """Where Graph requests go: ``url`` (O365_GRAPH_URL) or the tenant's cloud's Graph."""
    return (url or GRAPH_ROOTS[tenant.cloud]).rstrip("/")


def graph_scope(tenant: TenantConfig) -> str:
    """The token scope: the cloud's real Graph, even when O365_GRAPH_URL points at a proxy or the simulator."""
    return GRAPH_ROOTS[tenant.cloud] + "/.default"


def graph_tokens(tenant: TenantConfig, *, session: requests.Session | None = None) -> TokenProvider:
    """One tenant's Graph token provider (share it among that tenant's Graph clients: one token cache)."""
    return TokenProvider(tenant, session=session, scope=graph_scope(tenant))


@dataclass
class GraphStats(ApiStats):
    """``ApiStats`` plus the per-message detail calls of message trace (one per message and recipient)."""

    detail_requests: int = 0


def _graph_error(body: bytes) -> tuple[str | None, str]:
    """(code, message) of Graph's error body; the message is cut and escaped (it is the service's text)."""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None, ""
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return None, ""
    code = err.get("code")
    message = err.get("message")
    return (str(code) if code else None), printable(str(message))[:300] if message else ""


def classify_graph_response(
    status: int,
    body: bytes,
    headers: Any,
    *,
    what: str,
    source: str,
    permission: str,
    graph: str,
) -> CollectorError:
    """The exception a non-2xx Graph answer means, with the admin's action. Pure: tested over a table.

    ``source`` is the catalog name (``signins``), ``permission`` the Graph application permission it needs,
    ``graph`` the cloud's Graph root (the token's audience)."""
    code, message = _graph_error(body)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    where = f"{what}: HTTP {status}" + (f" {code}" if code else "")
    if status in (408, 429) or status >= 500:
        text = f"{where} {message}".strip()
        if status == 429:
            text = f"{where}: Microsoft Graph is throttling this app" + (
                f" (retry after {retry_after:g} s)" if retry_after is not None else ""
            )
        return ApiTransientError(text, status=status, code=code, retry_after=retry_after)
    if status == 403 and code == NON_PREMIUM:
        return ApiPermanentError(
            f"{where}: Entra ID sign-in logs need a Microsoft Entra ID P1 or P2 licence in the tenant (source "
            f"{source}); directory audits still work without one: license the tenant, or remove {source} "
            "from the tenant's sources (O365_SOURCES)",
            status=status,
            code=code,
        )
    if status == 403:
        return ApiPermanentError(
            f"{where}: the app may not read this log (source {source}): grant the Microsoft Graph application "
            f"permission {permission} to the app and give admin consent",
            status=status,
            code=code,
        )
    if status == 401:
        return ApiPermanentError(
            f"{where}: Microsoft Graph refused the access token (source {source}): its audience must be {graph} "
            "(check O365_CLOUD; an O365_GRAPH_URL proxy must forward to that Graph) and the app's credential "
            f"must be valid in this tenant, with {permission} granted and admin consent given",
            status=status,
            code=code,
        )
    detail = message or "the request was refused"
    return ApiPermanentError(f"{where}: {detail} (source {source})", status=status, code=code)


class GraphHttp:
    """One tenant's Graph requests for one source: tokens, retries, paging, counting. Shared by threads."""

    def __init__(
        self,
        tenant: TenantConfig,
        *,
        source: str,
        permission: str,
        root: str,
        tokens: TokenProvider,
        session: requests.Session,
        policy: HttpPolicy,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.tenant = tenant
        self.source = source
        self.root = root.rstrip("/")
        self._permission = permission
        self._origin = urlparse(self.root)
        self._tokens = tokens
        self._session = session
        self._policy = policy
        self._sleep = sleep
        self._counts = RequestCounts(GraphStats)
        self.stats = self._counts.total

    def counting(self) -> AbstractContextManager[GraphStats]:
        """Counts this thread's requests separately (the lister reads ``throttled`` per stream)."""
        return self._counts.counting()

    def count(self, field: str) -> None:
        self._counts.count(field)

    def sign_in(self) -> None:
        self._token()

    def pages(
        self,
        url: str,
        what: str,
        *,
        max_pages: int = MAX_PAGES,
        before_each: Callable[[], object] | None = None,
    ) -> Iterator[list[Record]]:
        """Each page's records (the ``value`` objects), following ``@odata.nextLink`` to the last page.
        ``before_each`` runs before each page's request (pacing, counting)."""
        seen: set[str] = set()
        next_url: str | None = url
        count = 0
        while next_url is not None:
            if before_each is not None:
                before_each()
            body = self.get_json(next_url, what, url_kind="@odata.nextLink" if count else "Graph URL")
            count += 1
            value = body.get("value")
            if not isinstance(value, list):
                raise ApiTransientError(f"{what}: page {count} has no 'value' array (a proxy or service fault)")
            records = [item for item in value if isinstance(item, dict)]
            if len(records) != len(value):
                log.warning(
                    "%s: page %d held %d entries that are not JSON objects: skipped",
                    what,
                    count,
                    len(value) - len(records),
                    extra={"tenant_id": self.tenant.tenant_id},
                )
            yield records
            link = body.get("@odata.nextLink")
            if link is not None and not (isinstance(link, str) and link):
                # As a page without 'value': taking it for the last page would end the window early (a loss).
                raise ApiTransientError(f"{what}: page {count} has an @odata.nextLink that is not a URL")
            next_url = link
            if next_url is not None:
                if next_url in seen or count >= max_pages:
                    raise ApiTransientError(f"{what}: Graph repeated a page or exceeded {max_pages} pages")
                seen.add(next_url)

    def get_json(self, url: str, what: str, *, url_kind: str = "Graph URL") -> dict[str, Any]:
        """One GET, retried; the body as a JSON object."""
        parts = urlparse(url)
        if not same_origin(parts, self._origin):
            host = shown_host(parts.netloc) or printable(url[:80])
            raise UntrustedUrlError(url_kind, host, self._origin.netloc, settings="O365_GRAPH_URL and O365_CLOUD")
        policy = RetryPolicy(
            max_attempts=self._policy.max_attempts,
            max_seconds=self._policy.max_retry_seconds,
            backoff_seconds=self._policy.backoff_seconds,
        )
        for attempt in retrying(policy, sleep=self._sleep, on_retry=lambda _err: self.count("retries")):
            with attempt:
                return self._get(url, what)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _token(self) -> str:
        try:
            return self._tokens.get_token()
        except AzureError as err:  # network failure talking to the login host
            raise ApiTransientError(f"token request failed: {type(err).__name__}") from err

    def _get(self, url: str, what: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}
        self.count("requests")
        try:
            response = self._session.get(url, headers=headers, timeout=self._policy.timeout_seconds)
        except (requests.ConnectionError, requests.Timeout) as err:
            raise ApiTransientError(f"{what}: {type(err).__name__} talking to {self._origin.netloc}") from err
        if response.status_code >= 300:
            graph = GRAPH_ROOTS[self.tenant.cloud]
            error = classify_graph_response(
                response.status_code,
                response.content,
                response.headers,
                what=what,
                source=self.source,
                permission=self._permission,
                graph=graph,
            )
            error.args = (self.tenant.in_own_terms(str(error)), *error.args[1:])
            if isinstance(error, ApiTransientError) and error.throttled:
                self.count("throttled")
            raise error
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as err:
            raise ApiTransientError(f"{what}: the answer is not JSON (a proxy or service fault)") from err
        if not isinstance(body, dict):
            raise ApiTransientError(f"{what}: the answer is not a JSON object (a proxy or service fault)")
        return body


def detail_limiter(sleep: Callable[[float], None]) -> RateLimiter:
    """getDetailsByRecipient allows 100 requests per 5 minutes per tenant: pace below it rather than be
    throttled (https://learn.microsoft.com/graph/api/exchangemessagetrace-getdetailsbyrecipient)."""
    return RateLimiter(100 / 300, burst=100, sleep=sleep)
