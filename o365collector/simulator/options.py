"""The simulator's fixed configuration and the flags tests may flip while it runs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from .push import PushOptions
from .times import Clock


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    # Seeds record generation, content ids and fault rates: same seed and calls, same data.
    seed: int = 0
    # Content descriptors per listing page; the real page size is undocumented ([REF] §9.3).
    page_size: int = 50
    # Added to every activity-feed call, to model a distant service in multi-tenant benchmarks.
    latency_seconds: float = 0.0
    # The simulator's clock (aware UTC); None means the real clock. Tokens, listing windows,
    # availability and expiry all read it, so tests move time instead of sleeping.
    now: Clock | None = None
    # 0 picks a free port. The server only ever binds 127.0.0.1.
    port: int = 0
    # Entra's default app-token lifetime as seen in expires_in ([GS]: "3599").
    token_lifetime: dt.timedelta = dt.timedelta(seconds=3599)
    # Where to write the CA and server certificate; None means a temporary folder removed on stop.
    cert_dir: Path | None = None
    # Real seconds between background webhook deliveries (``Simulator.deliver_notifications``); 0: only
    # when called (tests drive it by hand, the demo and the bench let it run).
    push_interval_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ValueError("page_size must be >= 1")
        if self.latency_seconds < 0:
            raise ValueError("latency_seconds must be >= 0")
        if self.push_interval_seconds < 0:
            raise ValueError("push_interval_seconds must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be within 0..65535")


@dataclass
class SimulatorOptions:
    """Mutable behaviour switches; changes apply to the next request."""

    # The pagination header's name. The service sends NextPageUri ([REF], fixed in doc commit f06e906);
    # "NextPageUrl" reproduces the stale name in [TRB] for clients that must accept both.
    next_page_header: str = "NextPageUri"
    # The API version segment in NextPageUri: the documented example uses /api/v1/ although the
    # request went to /api/v1.0/ ([REF]); clients must follow the header verbatim.
    next_page_api_version: str = "v1"
    # If set (e.g. "evil.example"), contentUri and NextPageUri point to this host instead of ours,
    # to prove a client refuses to send its bearer token elsewhere.
    foreign_host: str | None = None
    # Added to the Date response header (Beats compares it with its own clock to detect skew).
    date_skew: dt.timedelta = dt.timedelta(0)
    # Extra age a startTime may have beyond 7 days. [REF] says 7 days; Beats observed the service
    # accept up to 7 days + 1 h. Zero is the strict, documented rule.
    lookback_grace: dt.timedelta = dt.timedelta(0)
    # Content bodies sent gzip-compressed (Content-Encoding: gzip) to clients that accept it. The real
    # service's use of compression is undocumented; this lets a test serve a small body that expands
    # to far more (a gzip bomb) and check that compressed blobs still ship.
    gzip_content: bool = False
    # Feed requests allowed per PublisherIdentifier per quota window; beyond it, 403 AF429 ([REF] §2:
    # a 2,000/min baseline). 0 = off, so tests that make many calls within a frozen clock minute are
    # unaffected; `simulate --quota-per-minute` defaults to the real 2,000. Counts are kept either way.
    quota_per_minute: int = 0
    # The quota window: a minute of the simulator clock. Tests shorten it so that minutes pass quickly.
    quota_window: dt.timedelta = dt.timedelta(minutes=1)
    # Webhook push behaviour: batch size, duplicates, shuffling, backoff, disabling (push.py).
    push: PushOptions = field(default_factory=PushOptions)
    # Microsoft Graph requests allowed per tenant per ``graph_window`` (simulator clock); beyond, 429 with
    # Retry-After (graph.py). 0 = off. Graph publishes no figure for these APIs; tests pick their own.
    graph_requests_per_window: int = 0
    graph_window: dt.timedelta = dt.timedelta(seconds=10)
    # The documented $filter operators on the time fields are ge/le (eq); the collector's windows use
    # ``lt`` for their end. True refuses lt/gt with 400 "Invalid filter clause", as the documentation reads.
    graph_strict_filter_operators: bool = False
