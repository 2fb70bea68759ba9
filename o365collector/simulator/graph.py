"""Microsoft Graph's log APIs, as the collector's Graph sources meet them: sign-ins, directory audits, message trace.

Served on the simulator's own origin under Graph's paths (one origin stands for every national Graph root):
``GET /v1.0/auditLogs/signIns``, ``GET /v1.0/auditLogs/directoryAudits``,
``GET /v1.0/admin/exchange/tracing/messageTraces`` and
``GET /v1.0/admin/exchange/tracing/messageTraces/{id}/getDetailsByRecipient(recipientAddress='…')``.
Records come from ``graph_data.GraphRecords``. Facts reproduced, with their sources:

- [SIN] https://learn.microsoft.com/en-us/graph/api/signin-list : "The maximum and default page size is 1,000
  objects and by default, the most recent sign-ins are returned first"; only sign-ins within Entra's retention.
  [SRT] https://learn.Microsoft.com/en-us/graph/api/resources/signin : "You must have a Microsoft Entra ID P1 or
  P2 license to download sign-in logs by using the Microsoft Graph API."
- [LIC] https://github.com/microsoftgraph/microsoft-graph-docs/issues/14118 (and MicrosoftDocs/azure-docs#77948):
  without P1/P2, 403 ``Authentication_RequestFromNonPremiumTenantOrB2CTenant`` "Neither tenant is B2C or tenant
  doesn't have premium license", with ``innerError`` {date, request-id, client-request-id}.
- [DAU] https://learn.microsoft.com/graph/api/resources/directoryaudit : ``activityDateTime`` "Supports $filter
  (eq, ge, le) and $orderby". [DAG] https://learn.microsoft.com/en-za/graph/api/directoryaudit-get : application
  permission "AuditLog.Read.All and Directory.Read.All" (the simulator asks only AuditLog.Read.All; INF).
- [FLT] https://github.com/microsoftgraph/microsoft-graph-docs/issues/5676 : a refused ``$filter`` answers 400
  ``BadRequest`` "Invalid filter clause"; issue 14173's comments: signIns' ``createdDateTime`` takes eq/le/ge,
  not gt/lt (``options.graph_strict_filter_operators`` reproduces that; off by default because the collector's
  windows end with ``lt``, which the service is widely reported to accept).
- [MTL] https://learn.microsoft.com/en-us/graph/api/messagetracingroot-list-messagetraces : permission
  ExchangeMessageTrace.Read.All; global service only; "$filter, $top and $skiptoken"; "The default page size
  for this API is 1000 … within the range of 1 and 5000"; follow "the entire URL returned in @odata.nextLink".
  [MTR] https://learn.microsoft.com/ja-jp/graph/api/resources/exchangemessagetrace : properties fromIP, id,
  messageId, receivedDateTime ("Supports $filter (ge, le)"), recipientAddress, senderAddress, size, status,
  subject, toIP. [MTD] https://learn.microsoft.com/en-us/graph/api/resources/exchangemessagetracedetail :
  action, data, dateTime, description, event, id, messageId; [GDR]
  https://learn.microsoft.com/en-us/graph/api/exchangeMessageTrace-getDetailsByRecipient?view=graph-rest-beta :
  "Get a list of exchangeMessageTraceDetail objects filtered on the recipient", 100 requests per 5 minutes.
  [MT2] https://learn.microsoft.com/en-us/powershell/module/exchange/get-messagetracev2 : 90 days back, "only
  data from the last 48 hours" without dates, "only return 10 days worth of data per query" (applied here: INF
  that Graph shares its back end's limits).
- [THR] https://learn.microsoft.com/graph/throttling : 429 Too Many Requests with a suggested wait in
  ``Retry-After``; body as captured in https://learn.microsoft.com/en-us/answers/questions/1138873 :
  ``{"error": {"code": "TooManyRequests", "message": "Too many requests from Identifier:… under category:….
  Please try again later.", "innerError": {...}}}``.
- [TOK] https://github.com/besscroft/diyfile/issues/1 : 401 ``InvalidAuthenticationToken`` "Access token has
  expired or is not yet valid."; "CompactToken parsing failed with error code: 80049217" for a malformed one
  (merrycodes/Office-E5#6); a token for another resource: "Access token validation failure. Invalid audience."
  (INF wording); a missing one: "Access token is empty." (INF).
- INF (undocumented, chosen here): 403 ``Authorization_RequestDenied`` "Insufficient privileges to complete the
  operation." for auditLogs without AuditLog.Read.All (the directory's code, as the lead's sheet says); 403
  ``ErrorAccessDenied`` "Access is denied. Check credentials and try again." for message trace without its role
  (Exchange Online's code on Graph); ``$top`` and ``$skiptoken`` refusals as 400 ``BadRequest``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import math
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from ..sources.catalog import DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM, SIGNINS_STREAM
from .faults import Fault
from .graph_data import RETENTION, TIME_FIELD, GraphRecord, GraphRecords
from .options import SimulatorOptions
from .quota import QuotaCounts, window_start
from .store import Store
from .times import Clock
from .tokens import IssuedToken, TokenService, is_graph_audience
from .wire import Request, Response, json_response

_BASE = {SIGNINS_STREAM: "auditLogs/signIns", DIRECTORY_AUDITS_STREAM: "auditLogs/directoryAudits"}
_BASE[MESSAGE_TRACE_STREAM] = "admin/exchange/tracing/messageTraces"
_ROLE = {
    SIGNINS_STREAM: "AuditLog.Read.All",
    DIRECTORY_AUDITS_STREAM: "AuditLog.Read.All",
    MESSAGE_TRACE_STREAM: "ExchangeMessageTrace.Read.All",
}
_MAX_TOP = {SIGNINS_STREAM: 1000, DIRECTORY_AUDITS_STREAM: 1000, MESSAGE_TRACE_STREAM: 5000}
_DEFAULT_TOP = 1000
_TRACE_DEFAULT_SPAN = dt.timedelta(hours=48)  # [MT2] no dates: the last 48 hours
_TRACE_MAX_SPAN = dt.timedelta(days=10)  # [MT2] 10 days per query
_DETAILS = re.compile(r"^getDetailsByRecipient\(recipientAddress='((?:[^']|'')*)'\)$", re.IGNORECASE)
_TIME = r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,7})?Z)"
_CLAUSE = re.compile(rf"^(\w+)\s+(eq|ge|gt|le|lt)\s+{_TIME}$")
# Graph's challenge on a 401 (client_id: Microsoft Graph's own application id).
_CHALLENGE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class GraphRoute:
    name: str  # signins | directoryaudits | messagetrace | messagetracedetails (stats and fault routes)
    stream: str
    trace_id: str = ""
    recipient: str = ""


def match(segments: list[str]) -> GraphRoute | None:
    """Graph's log paths under ``/v1.0/`` (Graph matches path segments case-insensitively)."""
    lower = [s.lower() for s in segments]
    if len(lower) < 3 or lower[0] != "v1.0":
        return None
    if lower[1:] == ["auditlogs", "signins"]:
        return GraphRoute("signins", SIGNINS_STREAM)
    if lower[1:] == ["auditlogs", "directoryaudits"]:
        return GraphRoute("directoryaudits", DIRECTORY_AUDITS_STREAM)
    if lower[1:5] != ["admin", "exchange", "tracing", "messagetraces"]:
        return None
    if len(lower) == 5:
        return GraphRoute("messagetrace", MESSAGE_TRACE_STREAM)
    found = _DETAILS.match(segments[6]) if len(segments) == 7 else None
    if found is not None:
        return GraphRoute("messagetracedetails", MESSAGE_TRACE_STREAM, segments[5], found.group(1).replace("''", "'"))
    return None


@dataclass(frozen=True, slots=True)
class _Query:
    start: dt.datetime
    end: dt.datetime  # exclusive
    top: int
    signature: str  # what a skiptoken is bound to: route, filter and $top


class GraphService:
    """Answers Graph requests from ``GraphRecords``, with Graph's tokens, permissions, paging and throttling."""

    def __init__(
        self,
        store: Store,
        tokens: TokenService,
        options: SimulatorOptions,
        clock: Clock,
        base_url: Callable[[], str],
        seed: int,
    ) -> None:
        self.records = GraphRecords(seed)
        self._store = store
        self._tokens = tokens
        self._options = options
        self._clock = clock
        self._base_url = base_url
        self._key = secrets.token_bytes(32)
        self.budget = QuotaCounts()  # Graph requests per tenant per options.graph_window

    def tenant_of(self, request: Request) -> str | None:
        """The tenant a request acts for (its token's), so faults can target one tenant's Graph calls."""
        issued, _ = self._tokens.inspect(request.header("authorization"))
        return issued.tenant_id if issued is not None else None

    def handle(self, request: Request, route: GraphRoute) -> Response:
        client_request_id = request.header("client-request-id")
        issued, why = self._tokens.inspect(request.header("authorization"))
        if issued is None or not is_graph_audience(issued.audience):
            return self._unauthorized("audience" if issued is not None else why, client_request_id)
        if request.method != "GET":
            message = f"No OData route exists that match template ~/{_BASE[route.stream]} with verb {request.method}"
            return self.error(405, "Request_BadRequest", message, client_request_id)
        throttled = self._over_budget(issued, client_request_id)
        if throttled is not None:
            return throttled
        if _ROLE[route.stream] not in issued.roles:
            if route.stream == MESSAGE_TRACE_STREAM:
                message = "Access is denied. Check credentials and try again."
                return self.error(403, "ErrorAccessDenied", message, client_request_id)
            message = "Insufficient privileges to complete the operation."
            return self.error(403, "Authorization_RequestDenied", message, client_request_id)
        state = self._store.tenant(issued.tenant_id)
        if route.stream == SIGNINS_STREAM and (state is None or not state.spec.entra_premium):
            message = "Neither tenant is B2C or tenant doesn't have premium license"
            return self.error(403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant", message, client_request_id)
        if route.name == "messagetracedetails":
            return self._details(issued.tenant_id, route, client_request_id)
        return self._list(request, issued.tenant_id, route, client_request_id)

    # -- listing --------------------------------------------------------------------------------

    def _list(self, request: Request, tenant: str, route: GraphRoute, client_request_id: str | None) -> Response:
        now = self._clock()
        query = self._parse(request, route, now)
        if isinstance(query, Response):
            return query
        after: tuple[dt.datetime, str] | None = None
        token = request.query.get("$skiptoken")
        if token is not None:
            after = self._read_skiptoken(token, query.signature)
            if after is None:
                return self.error(400, "BadRequest", "Invalid $skiptoken.", client_request_id)
        oldest = now - RETENTION[route.stream]
        rows = [
            r
            for r in self.records.window(tenant, route.stream, max(query.start, oldest), query.end)
            if r.available_at <= now and (after is None or r.sort_key < after)
        ]
        rows.reverse()  # newest first ([SIN])
        page, more = rows[: query.top], len(rows) > query.top
        base = self._base_url()
        body: dict[str, Any] = {
            "@odata.context": f"{base}/v1.0/$metadata#{_BASE[route.stream]}",
            "value": [r.body for r in page],
        }
        if more:
            params = [(k, v) for k, v in request.query.items() if k in ("$filter", "$top")]
            params.append(("$skiptoken", self._skiptoken(page[-1], query.signature)))
            encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
            body["@odata.nextLink"] = f"{base}/v1.0/{_BASE[route.stream]}?{encoded}"
        return json_response(200, body, headers=self._headers(client_request_id))

    def _parse(self, request: Request, route: GraphRoute, now: dt.datetime) -> _Query | Response:
        client_request_id = request.header("client-request-id")
        stream = route.stream
        start, end = now - RETENTION[stream], now + dt.timedelta(days=1)
        if stream == MESSAGE_TRACE_STREAM:
            start, end = now - _TRACE_DEFAULT_SPAN, now
        text = request.query.get("$filter")
        if text is not None:
            bounds = self._parse_filter(text, TIME_FIELD[stream])
            if bounds is None:
                return self.error(400, "BadRequest", "Invalid filter clause", client_request_id)
            start, end = bounds[0] or start, bounds[1] or end
        if stream == MESSAGE_TRACE_STREAM and end - start > _TRACE_MAX_SPAN:
            message = "Invalid filter clause: the receivedDateTime range must not exceed 10 days."
            return self.error(400, "BadRequest", message, client_request_id)
        top = _DEFAULT_TOP
        raw_top = request.query.get("$top")
        if raw_top is not None:
            limit = _MAX_TOP[stream]
            if not raw_top.isdigit() or not 1 <= int(raw_top) <= limit:
                message = f"Invalid page size specified: '{raw_top}'. Must be between 1 and {limit} inclusive."
                return self.error(400, "BadRequest", message, client_request_id)
            top = int(raw_top)
        signature = hashlib.sha256(f"{route.name}|{text}|{raw_top}".encode()).hexdigest()[:16]
        return _Query(start, end, top, signature)

    def _parse_filter(self, text: str, field: str) -> tuple[dt.datetime | None, dt.datetime | None] | None:
        """``field ge T [and field lt|le T]`` (either bound alone too); None for anything else."""
        clauses = _AND.split(text.strip())
        if not 1 <= len(clauses) <= 2:
            return None
        allowed = {"ge", "le"} if self._options.graph_strict_filter_operators else {"ge", "gt", "le", "lt"}
        start: dt.datetime | None = None
        end: dt.datetime | None = None
        for clause in clauses:
            found = _CLAUSE.match(clause.strip())
            if found is None or found.group(1).lower() != field.lower() or found.group(2) not in allowed:
                return None
            op, when = found.group(2), _parse_time(found.group(3))
            if when is None:
                return None
            if op in ("ge", "gt"):
                if start is not None:
                    return None
                start = when if op == "ge" else when + dt.timedelta(microseconds=1)
            else:
                if end is not None:
                    return None
                end = when if op == "lt" else when + dt.timedelta(microseconds=1)
        if start is not None and end is not None and end < start:
            return None
        return start, end

    def _skiptoken(self, last: GraphRecord, signature: str) -> str:
        payload = f"{signature}|{last.time.isoformat()}|{last.id}".encode()
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        return f"{_b64(payload)}.{_b64(mac)}"

    def _read_skiptoken(self, token: str, signature: str) -> tuple[dt.datetime, str] | None:
        """The key paging resumes after, if the token is ours, untouched, and of this very query."""
        head, _, tail = token.partition(".")
        try:
            payload, mac = _unb64(head), _unb64(tail)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, hmac.new(self._key, payload, hashlib.sha256).digest()[:16]):
            return None
        bound, _, rest = payload.decode("utf-8", "replace").partition("|")
        when, _, record_id = rest.partition("|")
        if bound != signature:
            return None
        return dt.datetime.fromisoformat(when), record_id

    # -- message trace details -------------------------------------------------------------------

    def _details(self, tenant: str, route: GraphRoute, client_request_id: str | None) -> Response:
        now = self._clock()
        record = self.records.get(tenant, MESSAGE_TRACE_STREAM, route.trace_id)
        if record is None or record.available_at > now or record.time < now - RETENTION[MESSAGE_TRACE_STREAM]:
            message = f"The message trace '{route.trace_id}' was not found."
            return self.error(404, "ResourceNotFound", message, client_request_id)
        mine = record.body["recipientAddress"].lower() == route.recipient.lower()
        context = "$metadata#Collection(microsoft.graph.exchangeMessageTraceDetail)"
        body = {
            "@odata.context": f"{self._base_url()}/v1.0/{context}",
            "value": list(record.details) if mine else [],
        }
        return json_response(200, body, headers=self._headers(client_request_id))

    # -- errors, throttling, faults -------------------------------------------------------------

    def _over_budget(self, issued: IssuedToken, client_request_id: str | None) -> Response | None:
        limit, window = self._options.graph_requests_per_window, self._options.graph_window
        now = self._clock()
        used = self.budget.count(issued.tenant_id, now, window)
        if limit <= 0 or used <= limit:
            return None
        wait = max(1, math.ceil((window_start(now, window) + window - now).total_seconds()))
        return self.throttled(issued.tenant_id, issued.client_id, wait, client_request_id)

    def throttled(self, tenant: str, client: str, retry_after: int | None, client_request_id: str | None) -> Response:
        """[THR]: 429 with Graph's throttling body, and ``Retry-After`` when given."""
        message = (
            f"Too many requests from Identifier:{tenant}+{client} under category:throttle.aad.ags.reports. "
            "Please try again later."
        )
        response = self.error(429, "TooManyRequests", message, client_request_id)
        if retry_after is not None:
            response.headers.append(("Retry-After", str(retry_after)))
        return response

    def fault(self, fault: Fault, request: Request) -> Response | None:
        """The Graph-shaped answer to an injected fault (None: ``slow``/``drop``, handled by the caller)."""
        cid = request.header("client-request-id")
        wait = None if fault.retry_after is None else math.ceil(fault.retry_after)
        if fault.kind in ("throttle", "http429"):
            return self.throttled(self.tenant_of(request) or "", "", wait, cid)
        if fault.kind == "echo":
            quoted = f"{request.method} {request.path} authorization: {request.header('authorization') or ''}"
            fault.echoed.append(quoted)
            return self.error(500, "UnknownError", f"An error occurred. Request received: {quoted}", cid)
        answers = {
            "server_error": (500, "UnknownError", ""),
            "unavailable": (503, "serviceNotAvailable", "The service is temporarily unavailable. Please try again."),
            "request_timeout": (504, "GatewayTimeout", "The request timed out."),
            "bare_404": (404, "ResourceNotFound", f"Resource not found for the segment '{request.segments[-1]}'."),
        }
        if fault.kind not in answers:
            return None
        status, code, message = answers[fault.kind]
        response = self.error(status, code, message, cid)
        if wait is not None:
            response.headers.append(("Retry-After", str(wait)))
        return response

    def error(self, status: int, code: str, message: str, client_request_id: str | None = None) -> Response:
        """Graph's error: ``{"error": {"code", "message", "innerError": {date, request-id, client-request-id}}}``."""
        request_id = str(uuid.uuid4())
        inner = {
            "date": self._clock().strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": request_id,
            "client-request-id": client_request_id or request_id,
        }
        payload = {"error": {"code": code, "message": message, "innerError": inner}}
        return json_response(status, payload, headers=self._headers(client_request_id, request_id))

    def _unauthorized(self, why: str, client_request_id: str | None) -> Response:
        message = {
            "empty": "Access token is empty.",
            "malformed": "CompactToken parsing failed with error code: 80049217",
            "expired": "Access token has expired or is not yet valid.",
            "audience": "Access token validation failure. Invalid audience.",
        }.get(why, "Access token validation failure.")
        response = self.error(401, "InvalidAuthenticationToken", message, client_request_id)
        response.headers.append(("WWW-Authenticate", _CHALLENGE))
        return response

    @staticmethod
    def _headers(client_request_id: str | None, request_id: str | None = None) -> list[tuple[str, str]]:
        request_id = request_id or str(uuid.uuid4())
        return [
            ("request-id", request_id),
            ("client-request-id", client_request_id or request_id),
            ("x-ms-ags-diagnostic", orjson.dumps({"ServerInfo": {"DataCenter": "Simulator", "Slice": "E"}}).decode()),
            ("Strict-Transport-Security", "max-age=31536000"),
        ]


def _parse_time(text: str) -> dt.datetime | None:
    whole, _, fraction = text.rstrip("Z").partition(".")
    try:
        value = dt.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return value + dt.timedelta(microseconds=int((fraction or "0").ljust(6, "0")[:6]))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
