"""Fault injection: throttling, server errors, timeouts, bare 404s, slow answers, dropped connections and echoes.

A ``Fault`` matches requests by route (and optionally tenant). ``count`` limits it to the first N
matching requests, ``rate`` makes each matching request fail with that probability (drawn from a
seeded RNG, so a single-threaded client sees the same sequence every run); with neither, every
matching request fails. The first active fault that fires wins.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field
from typing import Literal, get_args

from .wire import Request, Response, af_error, http_sys_error, json_response, not_found

FaultKind = Literal[
    "throttle", "http429", "server_error", "unavailable", "request_timeout", "slow", "drop", "bare_404", "echo"
]
FaultRoute = Literal[
    "list", "fetch", "subscriptions", "token", "any", "graph", "signins", "directoryaudits", "messagetrace",
    "messagetracedetails",
]
# Microsoft Graph's routes (graph.py); the route "graph" matches any of them.
GRAPH_ROUTES = frozenset({"signins", "directoryaudits", "messagetrace", "messagetracedetails"})

ZERO_GUID = "00000000-0000-0000-0000-000000000000"

# The AF429 message names an internal operation; [TRB] shows "GetBlob" for a content GET. The
# names for the other routes are not documented (INF).
_THROTTLED_METHOD = {"fetch": "GetBlob", "list": "ListBlobs", "subscriptions": "Subscriptions"}


@dataclass
class Fault:
    """One fault rule.

    ``route``: ``list`` (subscriptions/content and /notifications), ``fetch`` (audit/{contentId}),
    ``subscriptions`` (start/stop/list), ``token`` (the token POST; OpenID discovery is only hit by
    ``any``), ``any``, or Microsoft Graph's ``signins``, ``directoryaudits``, ``messagetrace``,
    ``messagetracedetails`` and ``graph`` (all four), answered in Graph's shape (graph.py: ``throttle`` and
    ``http429`` are 429, ``server_error`` 500, ``unavailable`` 503, ``request_timeout`` 504).
    ``delay_seconds`` is slept before the fault acts (``slow`` then answers
    normally; ``drop`` after a delay looks like a client timeout). ``retry_after`` adds a
    ``Retry-After`` header (whole seconds, rounded up), which the real service is not documented to send.
    ``tenant_id`` limits the fault to one tenant's requests.

    ``echo`` refuses the request and quotes it back, credentials included (its Authorization header, its
    form with ``client_secret``), as a careless proxy or a misconfigured service does: the token route in
    Entra's OAuth error shape (400), the feed routes as AF50000 (500, so a client retries). Each quote is
    kept in ``echoed``, so a test knows what a leak would look like.
    """

    kind: FaultKind
    route: FaultRoute = "any"
    count: int | None = None
    rate: float | None = None
    retry_after: float | None = None
    delay_seconds: float = 0.0
    tenant_id: str | None = None
    injected: int = field(default=0, init=False)
    echoed: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {self.kind!r} (expected one of {get_args(FaultKind)})")
        if self.route not in get_args(FaultRoute):
            raise ValueError(f"unknown fault route {self.route!r} (expected one of {get_args(FaultRoute)})")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if self.delay_seconds < 0:
            raise ValueError("delay_seconds must be >= 0")

    def matches(self, route: str, tenant_id: str | None) -> bool:
        if self.route == "graph" and route in GRAPH_ROUTES:
            pass
        elif self.route != "any" and self.route != route:
            return False
        return self.tenant_id is None or (tenant_id or "").lower() == self.tenant_id.lower()


class FaultInjector:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"{seed}|faults")
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if f is not fault]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def pick(self, route: str, tenant_id: str | None) -> Fault | None:
        """The fault to inject into this request, if any (counts it as injected)."""
        with self._lock:
            for fault in self._faults:
                if not fault.matches(route, tenant_id):
                    continue
                if fault.count is not None and fault.injected >= fault.count:
                    continue
                if fault.rate is not None and self._rng.random() >= fault.rate:
                    continue
                fault.injected += 1
                return fault
        return None


def fault_response(
    fault: Fault, route: str, publisher_id: str | None, path: str = "/", *, request: Request | None = None
) -> Response | None:
    """What the service answers for this fault; None for ``slow`` (answer normally) and ``drop``."""
    response: Response | None
    if fault.kind in ("slow", "drop"):
        return None
    if fault.kind == "echo":
        return _echo(fault, route, request)
    if route in ("token", "openid"):
        response = _token_fault(fault.kind)
    elif fault.kind == "throttle":
        # [TRB]: "Response Code 403: {'error':{'code':'AF429','message':'Too many requests. Method=GetBlob,
        # PublisherId=00000000-…'}}"; the zero GUID stands for "no PublisherIdentifier sent".
        response = af_error("AF429", _THROTTLED_METHOD.get(route, "Unknown"), publisher_id or ZERO_GUID)
    elif fault.kind == "http429":
        response = af_error("AF429", _THROTTLED_METHOD.get(route, "Unknown"), publisher_id or ZERO_GUID, status=429)
    elif fault.kind == "server_error":
        response = af_error("AF50000")
    elif fault.kind == "unavailable":
        response = http_sys_error(503, "Service Unavailable", "The service is unavailable.")
    elif fault.kind == "bare_404":
        # A 404 without an AF code (ASP.NET's "No HTTP resource was found"), as a front end or a routing
        # hiccup answers: not the content store's AF20050, so it does not mean the blob is gone (INF).
        response = not_found(path)
    else:
        response = http_sys_error(408, "Request Timeout", "The request timed out.")
    if fault.retry_after is not None:
        response.headers.append(("Retry-After", str(math.ceil(fault.retry_after))))
    return response


def _token_fault(kind: str) -> Response:
    """Entra answers its own failures in the OAuth error shape."""
    if kind in ("throttle", "http429"):
        return json_response(
            429,
            {"error": "temporarily_unavailable", "error_description": "AADSTS90055: Too many requests. Retry later."},
        )
    if kind == "server_error":
        return json_response(
            500, {"error": "server_error", "error_description": "AADSTS90033: A transient error has occurred."}
        )
    if kind == "unavailable":
        return http_sys_error(503, "Service Unavailable", "The service is unavailable.")
    return http_sys_error(408, "Request Timeout", "The request timed out.")


# Headers that carry no credential: left out of an echo, so the quote stays short and leads with what matters.
_PLAIN_HEADERS = frozenset(
    {"host", "user-agent", "accept", "accept-encoding", "connection", "content-type", "content-length"}
)


def _echo(fault: Fault, route: str, request: Request | None) -> Response:
    """The request quoted back: its headers but the plain ones (credentials first), then its body (a form)."""
    quoted = "(no request)"
    if request is not None:
        shown = sorted((k, v) for k, v in request.headers.items() if k not in _PLAIN_HEADERS)
        shown.sort(key=lambda item: item[0] != "authorization")
        headers = "; ".join(f"{k}: {v}" for k, v in shown)
        body = request.body.decode("utf-8", "replace")
        quoted = f"{request.method} {request.path} {headers} {body}".strip()
    fault.echoed.append(quoted)
    if route in ("token", "openid"):
        description = f"AADSTS50000: There was an error issuing a token. Request received: {quoted}"
        return json_response(400, {"error": "invalid_request", "error_description": description})
    message = f"An internal error occurred. Retry the request. Request received: {quoted}"
    return json_response(500, {"error": {"code": "AF50000", "message": message}})
