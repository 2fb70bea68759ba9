"""HTTP plumbing shared by the HTTP-based sinks (generic HTTP, Splunk HEC, Elasticsearch ``_bulk``).

What lives here, so each sink only speaks its backend's protocol:

* URL settings: https only (plain http for loopback), a valid port, and messages that show only
  ``scheme://host:port`` (a path or query may hold a key);
* one ``requests`` session per sink, TLS always verified (``REQUESTS_CA_BUNDLE`` honoured),
  redirects never followed, so credentials only ever reach the configured host;
* transport failures turned into the collector's errors::

      TLS certificate not trusted          SinkPermanentError  (trust the CA via REQUESTS_CA_BUNDLE)
      TLS handshake cut                    SinkTransientError
      DNS failure                          SinkTransientError  (names the host and the URL setting)
      connection refused                   SinkTransientError  (names the URL setting)
      timeout                              SinkTransientError  (names the timeout setting)
      connection reset / broken body       SinkTransientError
      request cannot be built              SinkPermanentError

* the status rule every backend shares: 408, 429 and 5xx are transient and carry ``Retry-After``;
  3xx is permanent (redirects are not followed);
* the retry loop: ``o365collector.retry`` per request, bounded by attempts and seconds.

Messages never contain credentials, header values, record bodies, or a URL's path and query. What a
peer said (an error body, a reason) reaches a message only through ``excerpt``: one line, at most
``EXCERPT_CHARS`` characters, control characters escaped, and with the values of the headers we sent
removed, since a proxy or a receiver may echo the request back in its error page.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

import requests

from .. import __version__
from ..envparse import Environ, require_str
from ..errors import CollectorError, ConfigError, SinkPermanentError, SinkTransientError, error_chain, root_reason
from ..redaction import printable, redact
from ..retry import RetryPolicy, parse_retry_after, retrying
from ..sessions import EnvironmentOnceSession

T = TypeVar("T")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Connections kept per host: the queue runner ships up to host.json batchSize (16) blobs at once, one
# request each, and requests' default of 10 would drop (and log) the connections beyond it.
POOL_CONNECTIONS = 32
USER_AGENT = f"o365collector/{__version__}"
# A peer's words in a message: enough to diagnose (HEC's text, an Elasticsearch reason), too short to
# carry a record or a page of HTML into logs and poison messages.
EXCERPT_CHARS = 200
# Request headers whose values say nothing secret and are too common to scrub from a peer's text
# ("gzip", "0"); every other header we sent (Authorization, SINK_HTTP_HEADERS) is scrubbed.
_PLAIN_HEADERS = frozenset(
    {
        "user-agent",
        "accept",
        "accept-encoding",
        "connection",
        "content-type",
        "content-encoding",
        "content-length",
        "transfer-encoding",
        "x-o365-tenant-id",
        "x-o365-content-type",
        "x-o365-content-id",
        "x-o365-batch-index",
    }
)
_SHORTEST_SCRUBBED = 4  # shorter values would garble the text and are no secret
_EXCERPT_SCAN_CHARS = 64 * 1024  # how much of a peer's text is read to find the excerpt (bounds the work)


def parse_url(env: Environ, name: str, hint: str) -> str:
    """``name`` as given: an absolute https URL (http only for loopback) with a valid port.

    Not ``envparse.get_https_url``: that one strips a trailing slash (receivers may care) and echoes
    the whole URL, whose path or query may hold a key. Messages here show scheme://host:port only.
    """
    text = require_str(env, name, hint)
    parsed = urlparse(text)
    try:
        port_ok = parsed.port is None or parsed.port > 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if not port_ok:
        raise ConfigError(name, "has an invalid port (expected https://host[:port]/path)")
    if parsed.scheme not in {"https", "http"} or not parsed.hostname:
        raise ConfigError(name, "is not an absolute URL (expected https://host[:port]/path)")
    if parsed.scheme == "http" and parsed.hostname not in LOOPBACK_HOSTS:
        raise ConfigError(
            name, f"{endpoint(text)!r} must use https (plain http is accepted only for 127.0.0.1, localhost or ::1)"
        )
    return text


def parse_base_url(env: Environ, name: str, hint: str) -> str:
    """A backend's base address (``parse_url`` rules) without trailing slash, query, fragment or credentials.

    The sink appends the API paths (``/services/collector/event``, ``/_bulk``); a path prefix (a
    reverse proxy's) is kept. Credentials belong in their own secret settings, not in the URL.
    """
    text = parse_url(env, name, hint)
    parsed = urlparse(text)
    if parsed.username is not None or parsed.password is not None:
        raise ConfigError(name, "must not hold credentials (user:password@); use the sink's credential settings")
    if parsed.query or parsed.fragment or text.endswith(("?", "#")):
        raise ConfigError(name, "must not have a query string or fragment (expected https://host[:port][/prefix])")
    return text.rstrip("/")


def endpoint(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: safe for logs and messages (no credentials, path or query)."""
    parsed = urlparse(url)
    host = parsed.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parsed.port
    except ValueError:
        port = None
    return f"{parsed.scheme}://{host}" + (f":{port}" if port else "")


def is_transient_status(status: int) -> bool:
    """408, 429 and 5xx: the same request may succeed later."""
    return status in (408, 429) or status >= 500


def excerpt(text: object, response: requests.Response | None = None, limit: int = EXCERPT_CHARS) -> str:
    """A peer's ``text`` fit for a message: one line, at most ``limit`` characters, control characters
    escaped, registered secrets and the values of the headers ``response``'s request carried removed."""
    # Scrubbed before it is cut, so that no prefix of a secret survives at the cut.
    words = " ".join(str(text)[:_EXCERPT_SCAN_CHARS].split())
    for value in _sent_values(response):
        words = words.replace(value, "***")
    return printable(redact(words))[:limit]


def _sent_values(response: requests.Response | None) -> list[str]:
    request = response.request if response is not None else None
    if request is None:
        return []
    values: set[str] = set()
    for name, value in request.headers.items():
        if name.lower() in _PLAIN_HEADERS:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        values.add(text)
        values.add(text.rpartition(" ")[2])  # the credential of "Bearer <token>", "ApiKey <key>", ...
    return sorted((v for v in values if len(v) >= _SHORTEST_SCRUBBED), key=len, reverse=True)


def snippet(response: requests.Response, limit: int = EXCERPT_CHARS) -> str:
    """``excerpt`` of the response body, as ``: text`` (empty when there is no body)."""
    text = excerpt(response.content[:_EXCERPT_SCAN_CHARS].decode("utf-8", "replace"), response, limit)
    return f": {text}" if text else ""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a sink sends, and the words its messages use for it."""

    url: str
    """The configured URL (its host and port appear in messages; its path and query never do)."""
    url_setting: str
    """The setting holding the URL, named when the host cannot be resolved or refuses connections."""
    timeout_seconds: float
    timeout_setting: str
    backend: str = "the receiver"
    """How messages call the backend: 'is {backend} running ...?', 'trust {backend}'s CA'."""


def pooled_session() -> requests.Session:
    """A session that keeps a connection per concurrent send (one session serves every runner thread)."""
    session = EnvironmentOnceSession()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=POOL_CONNECTIONS)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class HttpCore:
    """One session to one backend: requests with classified transport errors, status helpers, retries."""

    def __init__(
        self,
        target: Target,
        *,
        policy: RetryPolicy,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self.endpoint = endpoint(target.url)
        self.policy = policy
        self.session = session if session is not None else pooled_session()
        self.sleep = sleep
        self.clock = clock

    def close(self) -> None:
        self.session.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """One request; transport failures raise ``SinkTransientError`` / ``SinkPermanentError``."""
        try:
            # Redirects are not followed: credentials and extra headers must only reach the configured
            # host. TLS verification stays on (requests' default, REQUESTS_CA_BUNDLE honoured).
            return self.session.request(
                method,
                url,
                data=body,
                headers=headers,
                params=params,
                timeout=self.target.timeout_seconds,
                allow_redirects=False,
            )
        except requests.RequestException as err:
            raise self.transport_error(err) from err

    def with_retries(self, attempt: Callable[[], T]) -> tuple[T, list[BaseException]]:
        """Run ``attempt`` under the retry policy; returns its result and the failures retried on the way.

        Only ``RetryableError`` is retried; when attempts or time run out the last error is re-raised.
        """
        failures: list[BaseException] = []
        retryer = retrying(self.policy, sleep=self.sleep, on_retry=failures.append)
        result: T = retryer(attempt)
        return result, failures

    def where(self, response: requests.Response) -> str:
        return f"{self.endpoint} answered {response.status_code}"

    def transient(self, response: requests.Response, detail: str) -> SinkTransientError:
        """A transient error for ``response``, keeping the server's Retry-After wish."""
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self.clock())
        return SinkTransientError(f"{self.where(response)}{detail}", retry_after=retry_after)

    def redirect_error(self, response: requests.Response) -> SinkPermanentError:
        location = response.headers.get("Location")
        target = printable(endpoint(location)) if location else "an unnamed address"
        return SinkPermanentError(
            f"{self.where(response)} redirecting to {target}: redirects are not followed "
            f"(set {self.target.url_setting} to the final address)"
        )

    def _reason(self, causes: list[BaseException]) -> str:
        """``root_reason`` as an ``excerpt``: http.client's BadStatusLine quotes the peer's first line, which a
        peer echoing our request would fill with the request line, that is the URL's path and query."""
        parsed = urlparse(self.target.url)
        private = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        reason = root_reason(causes, limit=_EXCERPT_SCAN_CHARS)  # cut only after the scrub
        if len(private) >= _SHORTEST_SCRUBBED:
            reason = reason.replace(private, "***")
        return excerpt(reason)

    def transport_error(self, err: requests.RequestException) -> CollectorError:
        target = self.target
        causes = list(error_chain(err))
        verify = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
        if verify is not None:
            return SinkPermanentError(
                f"TLS verification of {self.endpoint} failed ({verify.verify_message or verify.reason}): "
                f"trust {target.backend}'s CA with REQUESTS_CA_BUNDLE, or fix its certificate"
            )
        if isinstance(err, requests.exceptions.SSLError):
            return SinkTransientError(f"TLS handshake with {self.endpoint} failed ({self._reason(causes)})")
        if any(isinstance(c, socket.gaierror) for c in causes):
            host = urlparse(target.url).hostname
            return SinkTransientError(
                f"cannot resolve the host {host!r} of {target.url_setting} (check the name and DNS)"
            )
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            return SinkTransientError(
                f"connection to {self.endpoint} refused: is {target.backend} running and listening there? "
                f"({target.url_setting})"
            )
        if isinstance(err, requests.Timeout):
            return SinkTransientError(
                f"{self.endpoint} did not answer within {target.timeout_seconds:g}s ({target.timeout_setting})"
            )
        if isinstance(err, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
            return SinkTransientError(f"connection to {self.endpoint} failed ({self._reason(causes)})")
        # InvalidURL, InvalidHeader, ...: the request cannot be built; sending again will not help.
        return SinkPermanentError(f"request to {self.endpoint} could not be made ({type(err).__name__})")
