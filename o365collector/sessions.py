"""A ``requests.Session`` that reads the proxy settings from the environment once per origin.

requests looks for proxies on every request (``merge_environment_settings``): it walks the whole of
``os.environ`` twice (``*_proxy`` and ``no_proxy``), which costs more than the rest of the request's
preparation on a Functions host with a hundred app settings, five times per tiny blob (ledger
claim, content GET, sink POST, ledger done, queue delete). The answer depends only on the
environment and the URL's origin, so it is kept per origin for the session's life: proxy variables
are read when a host is first called, as a process reads them at start. Everything else behaves as
requests does: ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` are read on every request, explicit
``proxies`` win over the environment's, and ``trust_env = False`` turns the environment off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import requests
import requests.sessions
from requests.utils import get_environ_proxies

if TYPE_CHECKING:
    from requests.sessions import _Settings

# requests' own merge of a request's setting with the session's (untyped in its stubs).
_merge_setting = cast(Callable[[Any, Any], Any], requests.sessions.merge_setting)


class EnvironmentOnceSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        # (scheme://netloc, no_proxy) -> the environment's proxies for it. Threads may fill an entry
        # twice at first; both compute the same value.
        self._environ_proxies: dict[tuple[str, str | None], dict[str, str]] = {}

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> _Settings:
        if not self.trust_env:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        no_proxy = proxies.get("no_proxy") if proxies is not None else None
        parts = urlsplit(url)
        key = (f"{parts.scheme}://{parts.netloc}", no_proxy)
        env_proxies = self._environ_proxies.get(key)
        if env_proxies is None:
            env_proxies = self._environ_proxies[key] = dict(get_environ_proxies(url, no_proxy=no_proxy))
        if proxies is not None:
            for name, value in env_proxies.items():
                proxies.setdefault(name, value)
        if verify is True or verify is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or verify
        # The same merge with the session's own settings as requests' (its environment part is done above).
        return {
            "proxies": _merge_setting(proxies, self.proxies),
            "stream": _merge_setting(stream, self.stream),
            "verify": _merge_setting(verify, self.verify),
            "cert": _merge_setting(cert, self.cert),
        }
