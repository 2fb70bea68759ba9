"""The Management Activity API itself: subscriptions, content listing and content retrieval.

Routes live under ``/api/v1.0/{tenant}/activity/feed/`` (also ``/api/v1/``, the version the
documented NextPageUri example uses). Every answer follows [REF] where it is documented; where it
is not, the choice is marked INF and follows the simulator checklist (management-activity-api.md §10).
"""

from __future__ import annotations

import datetime as dt
import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from .data import CONTENT_TYPES, SimBlob, is_well_formed_content_id
from .options import SimulatorConfig, SimulatorOptions
from .push import Pusher, expire_webhooks
from .store import Store, is_guid
from .times import Clock, format_content_time, format_query_time, parse_query_time
from .tokens import IssuedToken, TokenService
from .wire import Request, Response, af_error, aspnet_message, denied, json_response, not_found

MAX_SPAN = dt.timedelta(hours=24)
RETENTION = dt.timedelta(days=7)

# Friendly names for the sensitive types used in samples.json (GET resources/dlpSensitiveTypes).
_DLP_SENSITIVE_TYPES = (
    {"id": "50842eb7-edc8-4019-85dd-5a5c1f2bb085", "name": "Credit Card Number"},
    {"id": "a44669fe-0d48-453d-a9b1-2cc83f2cba77", "name": "U.S. Social Security Number (SSN)"},
)

_NEXT_PAGE = re.compile(r"^(\d{20})R(\d{1,18})$")


@dataclass(frozen=True, slots=True)
class FeedRoute:
    tenant: str
    area: str  # "subscriptions" | "audit" | "resources"
    name: str  # operation ("start", "content", …) or the content id

    @property
    def stats_route(self) -> str:
        """The route name faults and stats use: list, fetch, subscriptions or resources."""
        if self.area == "audit":
            return "fetch"
        if self.area == "subscriptions" and self.name in ("content", "notifications"):
            return "list"
        return self.area


def match(segments: list[str]) -> FeedRoute | None:
    """``api/{v1.0|v1}/{tenant}/activity/feed/{area}/{name}``; path matching is case-insensitive (ASP.NET)."""
    if len(segments) != 7 or segments[0].lower() != "api" or segments[1].lower() not in ("v1.0", "v1"):
        return None
    if segments[3].lower() != "activity" or segments[4].lower() != "feed":
        return None
    area = segments[5].lower()
    if area == "audit":
        return FeedRoute(segments[2], "audit", segments[6])
    if area in ("subscriptions", "resources"):
        return FeedRoute(segments[2], area, segments[6].lower())
    return None


def encode_next_page(blob: SimBlob) -> str:
    """An opaque cursor shaped like the documented ``2015101900R022885001761``: the last blob's
    ``contentCreated`` (to the microsecond), ``R``, its sequence number. Paging resumes after that key."""
    return blob.created.strftime("%Y%m%d%H%M%S%f") + f"R{blob.seq}"


def decode_next_page(token: str) -> tuple[dt.datetime, int] | None:
    found = _NEXT_PAGE.match(token)
    if found is None:
        return None
    try:
        created = dt.datetime.strptime(found.group(1), "%Y%m%d%H%M%S%f").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return created, int(found.group(2))


class ActivityFeed:
    def __init__(
        self,
        store: Store,
        tokens: TokenService,
        config: SimulatorConfig,
        options: SimulatorOptions,
        clock: Clock,
        api_url: Callable[[], str],
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._config = config
        self._options = options
        self._clock = clock
        self._api_url = api_url
        # Set by the Simulator: validates webhooks on /start and learns who registered them (push.py).
        self.pusher: Pusher | None = None
        # (area, operation) -> (verb, handler); the content GET (area "audit") is handled apart.
        self._handlers: dict[tuple[str, str], tuple[str, Callable[[Request, FeedRoute], Response]]] = {
            ("subscriptions", "start"): ("POST", self._start),
            ("subscriptions", "stop"): ("POST", self._stop),
            ("subscriptions", "list"): ("GET", self._list_subscriptions),
            ("subscriptions", "content"): ("GET", self._list_content),
            ("subscriptions", "notifications"): ("GET", self._list_notifications),
            ("resources", "dlpsensitivetypes"): ("GET", self._dlp_sensitive_types),
        }

    def handle(self, request: Request, route: FeedRoute) -> tuple[Response, str | None]:
        """Answer one feed request; the second value is the content id of a successful fetch."""
        token = self._tokens.validate(request.header("authorization"))
        if token is None:
            return denied(), None
        refusal = self._authorize(route.tenant, token)
        if refusal is not None:
            return refusal, None
        if route.area == "audit":
            if request.method != "GET":
                return _wrong_verb(request.method), None
            return self._fetch(route, token, gzip_ok="gzip" in (request.header("accept-encoding") or "").lower())
        found = self._handlers.get((route.area, route.name))
        if found is None:
            return not_found(request.path), None
        verb, handler = found
        if request.method != verb:
            return _wrong_verb(request.method), None
        return handler(request, route), None

    # -- checks shared by every route -------------------------------------------------------------

    def _authorize(self, tenant: str, token: IssuedToken) -> Response | None:
        if not is_guid(tenant):
            return af_error("AF20013", tenant, status=400)
        if tenant.lower() != token.tenant_id.lower():
            return af_error("AF20010", tenant, token.tenant_id)
        if "ActivityFeed.Read" not in token.roles:
            return af_error("AF10001", ", ".join(token.roles))
        state = self._store.tenant(tenant)
        if state is None or not state.spec.audit_enabled:
            # [TRB]: with unified audit logging off, "Tenant <tenantID> does not exist." (AF20011, INF 400).
            return af_error("AF20011", tenant, status=400)
        return None

    def _content_type(self, request: Request) -> tuple[str, Response | None]:
        value = request.query.get("contenttype")
        if value is None or value == "":
            return "", af_error("AF20001", "contentType", status=400)
        if value not in CONTENT_TYPES:
            return value, af_error("AF20020", status=400)
        return value, None

    def _enabled_subscription(self, tenant: str, content_type: str) -> Response | None:
        sub = self._store.subscription(tenant, content_type)
        if sub is None:
            return af_error("AF20022")
        if sub.status != "enabled":
            # [REF]: disabled ⇒ "you'll not be able to list or retrieve content".
            return af_error("AF20023", sub.disabled_by)
        return None

    # -- subscriptions --------------------------------------------------------------------------

    def _start(self, request: Request, route: FeedRoute) -> Response:
        content_type, error = self._content_type(request)
        if error is not None:
            return error
        webhook: dict[str, Any] | None = None
        if request.body.strip():
            try:
                payload = orjson.loads(request.body)
            except orjson.JSONDecodeError:
                return aspnet_message(400, "The request is invalid.")
            hook = payload.get("webhook") if isinstance(payload, dict) else None
            if isinstance(hook, dict):
                address = str(hook.get("address") or "")
                if not address.lower().startswith("https://"):
                    # The doc's template really reads "{{0})": one brace too many, one too few.
                    reason = "The address must begin with HTTPS."
                    message = f"The webhook endpoint {address}) could not be validated. {reason}"
                    return json_response(400, {"error": {"code": "AF20021", "message": message}})
                # A past expiration is refused before the handshake (AF20003, [REF] §6).
                expiration = hook.get("expiration") or None
                if expiration is not None:
                    expires = parse_query_time(str(expiration))
                    if expires is None:
                        return af_error("AF20002", "expiration", "DateTime")
                    if expires <= self._clock():
                        return af_error("AF20003", expiration)
                # [REF] §6: the service POSTs a validation code first; anything but 200 leaves the
                # subscription as it was. The pusher only ever posts to loopback addresses.
                auth_id = hook.get("authId") if isinstance(hook.get("authId"), str) else None
                if self.pusher is not None and not self.pusher.validate(address, auth_id or None):
                    reason = "The endpoint did not return HTTP 200."
                    message = f"The webhook endpoint {address}) could not be validated. {reason}"
                    return json_response(400, {"error": {"code": "AF20021", "message": message}})
                webhook = {
                    "status": "enabled",
                    "address": address,
                    "authId": hook.get("authId"),
                    "expiration": expiration,
                }
        outcome = self._store.start_subscription(route.tenant, content_type, webhook)
        if outcome == "unchanged":
            # Not in the docs; observed as HTTP 400 by Wazuh and other collectors ([REF] §1.3).
            return af_error("AF20024", status=400)
        sub = self._store.subscription(route.tenant, content_type)
        assert sub is not None
        caller = self._tokens.validate(request.header("authorization"))
        if webhook is not None and self.pusher is not None and caller is not None:
            # clientId in notifications: the app that created the subscription ([REF] §6).
            auth = str(webhook["authId"] or "") or None
            self.pusher.registered(route.tenant, content_type, webhook["address"], auth, caller.client_id)
        return json_response(200, sub.as_json())

    def _stop(self, request: Request, route: FeedRoute) -> Response:
        content_type, error = self._content_type(request)
        if error is not None:
            return error
        if not self._store.disable_subscription(route.tenant, content_type):
            return af_error("AF20022")
        return Response(200, b"", content_type=None)

    def _list_subscriptions(self, request: Request, route: FeedRoute) -> Response:
        expire_webhooks(self._store, route.tenant, self._clock())  # the listing shows "expired" once past
        return json_response(200, self._store.list_subscriptions(route.tenant))

    def _dlp_sensitive_types(self, request: Request, route: FeedRoute) -> Response:
        return json_response(200, list(_DLP_SENSITIVE_TYPES))

    # -- listing --------------------------------------------------------------------------------

    def _window(self, request: Request) -> tuple[tuple[dt.datetime, dt.datetime, str, str] | None, Response | None]:
        """The validated ``[start, end)`` window plus the two strings to repeat in NextPageUri."""
        raw_start, raw_end = request.query.get("starttime"), request.query.get("endtime")
        now = self._clock()
        if raw_start is None and raw_end is None:
            # [REF]: omitted ⇒ the last 24 hours (and NextPageUri carries that interval explicitly).
            start, end = now - MAX_SPAN, now
            return (start, end, format_query_time(start), format_query_time(end)), None
        if raw_start is None or raw_end is None:
            return None, af_error("AF20055", status=400)
        first, last = parse_query_time(raw_start), parse_query_time(raw_end)
        if first is None:
            return None, af_error("AF20002", "startTime", "datetime", status=400)
        if last is None:
            return None, af_error("AF20002", "endTime", "datetime", status=400)
        too_old = first < now - RETENTION - self._options.lookback_grace
        if first >= last or last - first > MAX_SPAN or too_old:
            # [REF] allows >24 h "with partial results" in prose but lists AF20055 for it; we refuse.
            return None, af_error("AF20055", status=400)
        return (first, last, raw_start, raw_end), None

    def _list_content(self, request: Request, route: FeedRoute) -> Response:
        content_type, error = self._content_type(request)
        if error is not None:
            return error
        error = self._enabled_subscription(route.tenant, content_type)
        if error is not None:
            return error
        window, error = self._window(request)
        if error is not None or window is None:
            return error or af_error("AF50000")
        start, end, raw_start, raw_end = window
        after = None
        next_page = request.query.get("nextpage")
        if next_page is not None:
            after = decode_next_page(next_page)
            if after is None:
                return af_error("AF20031", next_page, status=400)
        page, more = self._store.list_page(route.tenant, content_type, start, end, after, self._config.page_size)
        base = self._public_base()
        body: list[object] = []
        for blob in page:
            entry = {
                "contentType": blob.content_type,
                "contentId": blob.content_id,
                "contentUri": f"{base}/api/v1.0/{route.tenant}/activity/feed/audit/{blob.content_id}",
                "contentCreated": format_content_time(blob.created),
                "contentExpiration": format_content_time(blob.expiration),
            }
            body.append(blob.listing_entry(entry) if blob.listing_entry is not None else entry)
        headers: list[tuple[str, str]] = []
        if more and page:
            # Absolute URL, same window, plus nextPage; absent on the last page and on an empty one.
            query = urlencode(
                {"contentType": content_type, "startTime": raw_start, "endTime": raw_end,
                 "nextPage": encode_next_page(page[-1])},
                quote_via=quote,
            )  # fmt: skip
            version = self._options.next_page_api_version
            url = f"{base}/api/{version}/{route.tenant}/activity/feed/subscriptions/content?{query}"
            headers.append((self._options.next_page_header, url))
        return json_response(200, body, headers)

    def _list_notifications(self, request: Request, route: FeedRoute) -> Response:
        """Same checks as /content; always empty, since the simulator sends no webhook notifications."""
        content_type, error = self._content_type(request)
        if error is not None:
            return error
        error = self._enabled_subscription(route.tenant, content_type)
        if error is not None:
            return error
        _, error = self._window(request)
        return error or json_response(200, [])

    def _public_base(self) -> str:
        foreign = self._options.foreign_host
        return f"https://{foreign}" if foreign else self._api_url()

    # -- content --------------------------------------------------------------------------------

    def _fetch(self, route: FeedRoute, token: IssuedToken, *, gzip_ok: bool = False) -> tuple[Response, str | None]:
        content_id = route.name
        blob = self._store.find(content_id)
        if blob is None or blob.tenant_id.lower() != route.tenant.lower():
            if not is_well_formed_content_id(content_id):
                return af_error("AF20052", content_id, status=400), None
            # Status undocumented; 404 is an inference ([REF] §4, Beats skips blob 404s).
            return af_error("AF20050", content_id), None
        error = self._enabled_subscription(route.tenant, blob.content_type)
        if error is not None:
            return error, None
        sub = self._store.subscription(route.tenant, blob.content_type)
        if not blob.available or (sub is not None and sub.hides(blob)):
            return af_error("AF20050", content_id), None
        if blob.expired:
            return af_error("AF20051", content_id, status=400), None
        body = blob.body(include_dlp_detail="ActivityFeed.ReadDlp" in token.roles)
        if self._options.gzip_content and gzip_ok:
            return Response(200, gzip.compress(body, 6), headers=[("Content-Encoding", "gzip")]), content_id
        return Response(200, body), content_id


def _wrong_verb(method: str) -> Response:
    return aspnet_message(405, f"The requested resource does not support http method '{method}'.")
