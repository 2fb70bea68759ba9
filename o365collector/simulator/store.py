"""The simulator's state: tenants, their subscriptions and their content blobs.

Thread-safe (one lock); the HTTP handlers read it concurrently while a test adds blobs or flips a
subscription. Blobs are kept per tenant and content type, sorted by ``(contentCreated, seq)`` so a
listing window is two bisections and paging is a third.
"""

from __future__ import annotations

import bisect
import datetime as dt
import random
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .data import CONTENT_TYPES, Record, RecordFactory, SimBlob, make_content_id
from .times import Clock, as_utc


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A tenant and the one app registration that collects from it."""

    tenant_id: str
    client_id: str
    client_secret: str
    # App roles granted to the app (they end up in the token's ``roles`` claim).
    roles: tuple[str, ...] = ("ActivityFeed.Read", "ActivityFeed.ReadDlp")
    # False: unified audit logging is off and the feed answers AF20011 ([TRB]).
    audit_enabled: bool = True
    # Content types whose subscription already exists and is enabled; the others do not exist yet.
    subscribed: tuple[str, ...] = ()
    # True: the client secret is right but past its end date; the token endpoint answers AADSTS7000222.
    secret_expired: bool = False
    # Microsoft Graph application permissions granted to the app (a Graph token's ``roles``, graph.py).
    graph_roles: tuple[str, ...] = ("AuditLog.Read.All", "ExchangeMessageTrace.Read.All")
    # False: no Entra ID P1/P2 licence; sign-ins answer 403 Authentication_RequestFromNonPremiumTenantOrB2CTenant.
    entra_premium: bool = True


@dataclass(slots=True)
class Subscription:
    content_type: str
    status: str = "enabled"
    webhook: dict[str, Any] | None = None
    disabled_by: str = "a tenant admin"
    stopped_at: dt.datetime | None = None
    # [REF]: after a restart "you will not be able to retrieve content that was available between the
    # time the subscription was stopped and restarted": blobs that became available in a gap stay hidden.
    gaps: list[tuple[dt.datetime, dt.datetime]] = field(default_factory=list)

    def hides(self, blob: SimBlob) -> bool:
        return any(start <= blob.available_at < end for start, end in self.gaps)

    def as_json(self) -> dict[str, Any]:
        return {"contentType": self.content_type, "status": self.status, "webhook": self.webhook}


@dataclass(slots=True)
class TenantState:
    spec: TenantSpec
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    blobs: dict[str, list[SimBlob]] = field(default_factory=lambda: {ct: [] for ct in CONTENT_TYPES})
    generate_calls: dict[str, int] = field(default_factory=dict)


def _sort_key(blob: SimBlob) -> tuple[dt.datetime, int]:
    return blob.sort_key


def is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


class Store:
    def __init__(self, seed: int, clock: Clock, api_url: Callable[[], str]) -> None:
        self._seed = seed
        self._clock = clock
        self._api_url = api_url
        self._lock = threading.RLock()
        self._tenants: dict[str, TenantState] = {}
        self._by_id: dict[str, SimBlob] = {}
        self._seq = 0
        self._added = 0

    # -- tenants and subscriptions -------------------------------------------------------------

    def add_tenant(self, spec: TenantSpec) -> None:
        if not is_guid(spec.tenant_id):
            raise ValueError(f"tenant_id must be a GUID, got {spec.tenant_id!r}")
        unknown = set(spec.subscribed) - set(CONTENT_TYPES)
        if unknown:
            raise ValueError(f"unknown content types in subscribed: {sorted(unknown)}")
        with self._lock:
            if spec.tenant_id.lower() in self._tenants:
                raise ValueError(f"tenant {spec.tenant_id} was already added")
            state = TenantState(spec)
            for content_type in spec.subscribed:
                state.subscriptions[content_type] = Subscription(content_type)
            self._tenants[spec.tenant_id.lower()] = state

    def tenant(self, tenant_id: str) -> TenantState | None:
        return self._tenants.get(tenant_id.lower())

    def tenants(self) -> list[TenantSpec]:
        with self._lock:
            return [t.spec for t in self._tenants.values()]

    def _require(self, tenant_id: str) -> TenantState:
        state = self.tenant(tenant_id)
        if state is None:
            raise KeyError(f"unknown tenant {tenant_id}")
        return state

    def subscription(self, tenant_id: str, content_type: str) -> Subscription | None:
        return self._require(tenant_id).subscriptions.get(content_type)

    def start_subscription(self, tenant_id: str, content_type: str, webhook: dict[str, Any] | None) -> str:
        """Create or re-enable; returns ``"created"``, ``"enabled"`` (re-enabled/updated) or ``"unchanged"``."""
        with self._lock:
            state = self._require(tenant_id)
            sub = state.subscriptions.get(content_type)
            if sub is None:
                state.subscriptions[content_type] = Subscription(content_type, webhook=webhook)
                return "created"
            if sub.status == "enabled" and webhook is None:
                return "unchanged"
            if sub.status != "enabled" and sub.stopped_at is not None:
                sub.gaps.append((sub.stopped_at, self._clock()))
            sub.status, sub.stopped_at = "enabled", None
            if webhook is not None:
                sub.webhook = webhook
            return "enabled"

    def disable_subscription(
        self, tenant_id: str, content_type: str, by: str = "a tenant admin", *, create: bool = False
    ) -> bool:
        """Disable a subscription (``create``: even one that does not exist yet); False if there was none."""
        with self._lock:
            subs = self._require(tenant_id).subscriptions
            sub = subs.get(content_type)
            if sub is None:
                if not create:
                    return False
                sub = subs[content_type] = Subscription(content_type, status="disabled", disabled_by=by)
                return True
            if sub.status == "enabled":
                sub.stopped_at = self._clock()
            sub.status, sub.disabled_by = "disabled", by
            return True

    def list_subscriptions(self, tenant_id: str) -> list[dict[str, Any]]:
        with self._lock:
            subs = self._require(tenant_id).subscriptions
            return [subs[ct].as_json() for ct in CONTENT_TYPES if ct in subs]

    def set_webhook_status(self, tenant_id: str, content_type: str, status: str) -> None:
        """Mark a subscription's webhook ``enabled``/``disabled``/``expired`` (the push side's verdict)."""
        with self._lock:
            sub = self._require(tenant_id).subscriptions.get(content_type)
            if sub is not None and sub.webhook is not None:
                sub.webhook = {**sub.webhook, "status": status}

    # -- blobs ----------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _new_blob(
        self,
        state: TenantState,
        content_type: str,
        content_id: str,
        created: dt.datetime,
        records: list[Record],
        available_at: dt.datetime,
        expiration: dt.datetime,
        raw: bytes | None = None,
    ) -> SimBlob:
        return SimBlob(
            tenant_id=state.spec.tenant_id,
            content_type=content_type,
            content_id=content_id,
            created=created,
            available_at=available_at,
            expiration=expiration,
            records=records,
            seq=self._next_seq(),
            _clock=self._clock,
            _api_url=self._api_url,
            _raw=raw,
        )

    def _unique_id(self, content_type: str, tenant_id: str, created: dt.datetime, rng: random.Random) -> str:
        while True:
            content_id = make_content_id(content_type, tenant_id, created, rng)
            if content_id not in self._by_id:
                return content_id

    def _insert(self, state: TenantState, blobs: Iterable[SimBlob]) -> None:
        for blob in blobs:
            if blob.content_id in self._by_id:
                raise ValueError(f"content id {blob.content_id!r} already exists")
            self._by_id[blob.content_id] = blob
            bisect.insort(state.blobs[blob.content_type], blob, key=_sort_key)

    def add_blob(
        self,
        tenant_id: str,
        content_type: str,
        created: dt.datetime,
        records: list[Record] | bytes,
        *,
        available_at: dt.datetime | None = None,
        expiration: dt.datetime | None = None,
        content_id: str | None = None,
        listing_entry: Callable[[dict[str, Any]], object] | None = None,
    ) -> SimBlob:
        if content_type not in CONTENT_TYPES:
            raise ValueError(f"unknown content type {content_type!r}")
        created = as_utc(created)
        raw: bytes | None = None
        if isinstance(records, bytes | bytearray):
            raw = bytes(records)
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = None
            records = parsed if isinstance(parsed, list) else []
        with self._lock:
            state = self._require(tenant_id)
            self._added += 1
            if content_id is None:
                rng = random.Random(f"{self._seed}|add|{state.spec.tenant_id}|{content_type}|{self._added}")
                content_id = self._unique_id(content_type, state.spec.tenant_id, created, rng)
            blob = self._new_blob(
                state,
                content_type,
                content_id,
                created,
                list(records),
                as_utc(available_at) if available_at else created,
                as_utc(expiration) if expiration else created + dt.timedelta(days=7),
                raw,
            )
            blob.listing_entry = listing_entry
            self._insert(state, [blob])
            return blob

    def generate(
        self,
        tenant_id: str,
        content_type: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        blob_every: dt.timedelta,
        records_per_blob: tuple[int, int],
        listing_delay: dt.timedelta,
        expiration: dt.timedelta,
        record_lag: tuple[dt.timedelta, dt.timedelta],
        duplicate_rate: float,
    ) -> list[SimBlob]:
        if content_type not in CONTENT_TYPES:
            raise ValueError(f"unknown content type {content_type!r}")
        if blob_every <= dt.timedelta(0):
            raise ValueError("blob_every must be positive")
        low, high = records_per_blob
        if not 0 <= low <= high:
            raise ValueError(f"records_per_blob must be (low, high) with 0 <= low <= high, got {records_per_blob}")
        start, end = as_utc(start), as_utc(end)
        with self._lock:
            state = self._require(tenant_id)
            call = state.generate_calls.get(content_type, 0)
            state.generate_calls[content_type] = call + 1
            # One RNG per call, seeded by what the call is about: blobs do not depend on the order in
            # which tenants or content types were generated.
            rng = random.Random(
                f"{self._seed}|{state.spec.tenant_id}|{content_type}|{start.isoformat()}|{end.isoformat()}|{call}"
            )
            factory = RecordFactory(state.spec.tenant_id, content_type, rng)
            made: list[SimBlob] = []
            seen: list[Record] = []
            slot = start
            while slot < end:
                # Millisecond jitter stays inside the slot, so windows aligned on slots stay exact.
                created = slot + dt.timedelta(milliseconds=rng.randint(0, 999))
                records: list[Record] = []
                for _ in range(rng.randint(low, high)):
                    if seen and rng.random() < duplicate_rate:
                        # [TRB]: duplicates (same Id) are "expected and designed behavior".
                        records.append(orjson.loads(orjson.dumps(rng.choice(seen))))
                    else:
                        records.append(factory.make(created, record_lag))
                if duplicate_rate:
                    seen.extend(records)
                content_id = self._unique_id(content_type, state.spec.tenant_id, created, rng)
                made.append(
                    self._new_blob(
                        state, content_type, content_id, created, records, created + listing_delay, created + expiration
                    )
                )
                slot += blob_every
            self._insert(state, made)
            return made

    def blobs(self, tenant_id: str, content_type: str | None = None) -> list[SimBlob]:
        with self._lock:
            state = self._require(tenant_id)
            if content_type is not None:
                return list(state.blobs[content_type])
            return sorted((b for ct in CONTENT_TYPES for b in state.blobs[ct]), key=_sort_key)

    def find(self, content_id: str) -> SimBlob | None:
        return self._by_id.get(content_id)

    def expire(self, content_id: str) -> None:
        blob = self._by_id.get(content_id)
        if blob is None:
            raise KeyError(f"unknown content id {content_id!r}")
        blob.mark_expired()

    def list_page(
        self,
        tenant_id: str,
        content_type: str,
        start: dt.datetime,
        end: dt.datetime,
        after: tuple[dt.datetime, int] | None,
        limit: int,
    ) -> tuple[list[SimBlob], bool]:
        """One page of listable blobs with ``start <= created < end``, after the ``after`` cursor.

        Returns the page and whether more follow. Only blobs already available (``available_at <= now``)
        and not hidden by a stop/restart gap are listed.
        """
        now = self._clock()
        with self._lock:
            state = self._require(tenant_id)
            sub = state.subscriptions.get(content_type)
            blobs = state.blobs[content_type]
            lo = bisect.bisect_left(blobs, start, key=lambda b: b.created)
            if after is not None:
                lo = max(lo, bisect.bisect_right(blobs, after, key=_sort_key))
            hi = bisect.bisect_left(blobs, end, key=lambda b: b.created)
            page: list[SimBlob] = []
            for blob in blobs[lo:hi]:
                if blob.available_at > now or (sub is not None and sub.hides(blob)):
                    continue
                if len(page) == limit:
                    return page, True
                page.append(blob)
            return page, False
