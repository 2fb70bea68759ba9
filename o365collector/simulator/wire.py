"""What goes over the wire: the parsed request, the response to write, and the service's error bodies.

Two error shapes exist and the simulator reproduces both ([REF] §Errors, [ISS powerapps-tools #300]):
the activity feed answers ``{"error": {"code": "AF…", "message": …}}``, except for a refused bearer
token, which the ASP.NET host answers with ``{"Message": "Authorization has been denied for this request."}``.
The token endpoint uses Entra's OAuth shape ``{"error": "invalid_client", "error_description": "AADSTS…"}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

# Headers the real service sends on every feed response ([TRB] capture: an ASP.NET Web API host).
FEED_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-cache"),
    ("Pragma", "no-cache"),
    ("Expires", "-1"),
    ("X-AspNet-Version", "4.0.30319"),
    ("X-Powered-By", "ASP.NET"),
)

DENIED_BODY = b'{"Message":"Authorization has been denied for this request."}'

# Error messages exactly as the [REF] error table words them ({0}, {1} filled by the caller).
AF_MESSAGES: dict[str, str] = {
    "AF10001": "The permission set ({0}) sent in the request did not include the expected permission "
    "ActivityFeed.Read.",
    "AF20001": "Missing parameter: {0}.",
    "AF20002": "Invalid parameter type: {0}. Expected type: {1}",
    "AF20003": "Expiration {0} provided is set to past date and time.",
    "AF20010": "The tenant ID passed in the URL ({0}) does not match the tenant ID passed in the access token ({1}).",
    "AF20011": "Microsoft.Office.Compliance.Audit.DataServiceException: Tenant {0} does not exist.",
    "AF20013": "The tenant ID passed in the URL ({0}) is not a valid GUID.",
    "AF20020": "The specified content type is not valid.",
    "AF20022": "No subscription found for the specified content type.",
    "AF20023": "The subscription was disabled by {0}.",
    "AF20024": "The subscription is already enabled. No property change.",
    "AF20031": "Invalid nextPage Input: {0}.",
    "AF20050": "The specified content ({0}) does not exist.",
    "AF20051": "Content requested with the key {0} has already expired. Content older than 7 days cannot be retrieved.",
    "AF20052": "Content ID {0} in the URL is invalid.",
    "AF20055": "Start time and end time must both be specified (or both omitted) and must be less than or equal "
    "to 24 hours apart, with the start time prior to end time and start time no more than 7 days in the past.",
    "AF429": "Too many requests. Method={0}, PublisherId={1}",
    "AF50000": "An internal error occurred. Retry the request.",
}

# HTTP status per code. Observed: AF429 403 (doc), AF20024/AF20055 400, AF50000 500. The rest are
# undocumented [REF §9.1]; the statuses below are inferences (auth problems 401, caller errors 400,
# a missing blob 404 as Beats' "404 ⇒ skip" handling suggests).
AF_STATUS: dict[str, int] = {
    "AF10001": 401,
    "AF20010": 401,
    "AF20022": 400,
    "AF20023": 400,
    "AF20050": 404,
    "AF429": 403,
    "AF50000": 500,
}


@dataclass(slots=True)
class Request:
    """One HTTP request as the dispatcher sees it. ``query`` keys are lower-cased (ASP.NET binding is
    case-insensitive; Beats sends ``publisherIdentifier`` [REF §2])."""

    method: str
    path: str
    segments: list[str]
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = JSON_CONTENT_TYPE
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, orjson.dumps(payload), headers=list(headers or []))


def af_error(code: str, *args: object, status: int | None = None) -> Response:
    """A feed error in the documented ``{"error": {"code", "message"}}`` shape."""
    message = AF_MESSAGES[code].format(*args)
    return json_response(status or AF_STATUS.get(code, 400), {"error": {"code": code, "message": message}})


def denied() -> Response:
    """The ASP.NET host's answer to a missing, unknown or expired bearer token."""
    return Response(401, DENIED_BODY, headers=[("WWW-Authenticate", "Bearer")])


def aspnet_message(status: int, message: str) -> Response:
    """ASP.NET Web API's own errors (no route, wrong verb) use the ``{"Message": …}`` shape."""
    return json_response(status, {"Message": message})


def http_sys_error(status: int, title: str, detail: str) -> Response:
    """The HTML page HTTP.sys serves when the front end answers 503/408 itself, not JSON."""
    html = (
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
        f"<HTML><HEAD><TITLE>{title}</TITLE>\r\n"
        '<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
        f"<BODY><h2>{title}</h2>\r\n<hr><p>HTTP Error {status}. {detail}</p>\r\n</BODY></HTML>\r\n"
    )
    return Response(status, html.encode("ascii"), content_type="text/html; charset=us-ascii")


def not_found(path: str) -> Response:
    return aspnet_message(404, f"No HTTP resource was found that matches the request URI '{path}'.")
