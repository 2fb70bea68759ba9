"""The collector's HTTP sessions honour the environment's proxy settings, reading them once per origin.

requests walks the whole environment on every request to find proxies; for tiny blobs (five
requests each) that was a measurable share of the per-blob CPU. The sessions of the API client,
the http sinks and the storage clients keep the answer per origin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import requests.sessions

import o365collector.sessions
from o365collector.management_api import shared_session
from o365collector.sinks.httpcore import pooled_session
from o365collector.storage import pooled_transport
from tests.loopback import LoopbackService, OwnedHandler

TARGET = "http://collector-test.invalid/audit"  # never resolved: the proxy answers for it


class ProxyHandler(OwnedHandler):
    """A forward proxy that answers every request itself and records the request line's target."""

    def do_GET(self) -> None:
        self.owner.seen.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Proxy(LoopbackService):
    def __init__(self) -> None:
        super().__init__(ProxyHandler, tls=False, timeout=5.0, name="proxy")
        self.seen: list[str] = []


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with Proxy() as service:
        monkeypatch.setenv("HTTP_PROXY", service.base_url)
        yield service


SESSIONS: dict[str, Callable[[], requests.Session]] = {
    "api": lambda: shared_session(pool_size=8),
    "http sink": pooled_session,
    "storage": lambda: pooled_transport().session,  # type: ignore[no-any-return]
}


@pytest.mark.parametrize("make", SESSIONS.values(), ids=SESSIONS.keys())
def test_environment_proxy_is_used_and_read_once_per_origin(
    make: Callable[[], requests.Session], proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []
    real = requests.sessions.get_environ_proxies

    def counting(url: str, no_proxy: Any = None) -> dict[str, str]:
        lookups.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counting)
    monkeypatch.setattr(o365collector.sessions, "get_environ_proxies", counting)
    session = make()
    try:
        for _ in range(3):
            assert session.get(TARGET, timeout=5).status_code == 200
    finally:
        session.close()
    assert proxy.seen == [TARGET] * 3  # every request went through the environment's proxy
    assert len(lookups) == 1  # and the environment was searched for it once


def test_explicit_proxies_win_and_trust_env_off_ignores_the_environment(proxy: Proxy) -> None:
    session = pooled_session()
    try:
        assert session.merge_environment_settings(TARGET, {"http": "http://other:1"}, None, None, None)[
            "proxies"
        ] == {"http": "http://other:1"}
        session.trust_env = False
        assert session.merge_environment_settings(TARGET, {}, None, None, None)["proxies"] == {}
    finally:
        session.close()


# One environment, one session, calls in turn (so the per-origin memory is in play): each answer must be the
# one a plain requests.Session gives. (url, request proxies, stream, verify, cert)
SAME_AS_REQUESTS: list[tuple[str, dict[str, str] | None, bool | None, bool | str | None, str | None]] = [
    (TARGET, {}, None, None, None),
    ("http://skipped.invalid/x", {}, None, None, None),  # another origin, listed in NO_PROXY
    (TARGET, {"no_proxy": "collector-test.invalid"}, None, None, None),  # the request's own no_proxy
    (TARGET, {}, None, True, None),  # verify=True takes REQUESTS_CA_BUNDLE
    (TARGET, {}, True, False, None),  # verify=False stays off; stream as asked
    (TARGET, {}, None, "/etc/own-ca.pem", "/etc/client.pem"),  # explicit verify and cert win
    (TARGET, None, None, None, None),
]


def test_merged_settings_are_those_requests_would_use(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "http_proxy", "no_proxy", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://env-proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "skipped.invalid")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/env-ca.pem")
    ours, theirs = o365collector.sessions.EnvironmentOnceSession(), requests.Session()
    for session in (ours, theirs):
        session.proxies = {"https": "http://session-proxy.invalid:3128"}
    try:
        for url, proxies, stream, verify, cert in SAME_AS_REQUESTS:
            got = ours.merge_environment_settings(url, dict(proxies or {}) if proxies is not None else None,
                                                  stream, verify, cert)  # fmt: skip
            want = theirs.merge_environment_settings(url, dict(proxies or {}) if proxies is not None else None,
                                                     stream, verify, cert)  # fmt: skip
            assert got == want, (url, proxies, stream, verify, cert)
    finally:
        ours.close()
        theirs.close()
