"""Webhook push: the simulator's side of [REF] §6 (validation handshake and notifications).

``Pusher`` owns every webhook's delivery state. ``validate()`` runs the handshake a ``/start`` with a
webhook triggers; ``deliver()`` POSTs every due notification (a blob that has become available on
the simulator's clock since the webhook was registered and has not been acknowledged with a 200) in
batches, with the behaviours a receiver must survive: retries with exponential backoff in simulator
time, duplicates, out-of-order delivery, disabling after repeated failures (``/start`` re-enables), and
expiry: a webhook whose ``expiration`` passes on the simulator's clock turns ``expired`` and goes quiet.

The outbound client trusts the simulator's own CA (and ``PushOptions.extra_ca_file``) and only ever
connects to loopback addresses: a webhook elsewhere fails validation, so tests never leave the machine.
"""

from __future__ import annotations

import datetime as dt
import http.client
import logging
import random
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from .data import SimBlob
from .store import Store
from .times import Clock, format_content_time, parse_query_time

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def is_loopback_https(address: str) -> bool:
    """True for ``https://`` on 127.0.0.1, ::1 or localhost: the only addresses the simulator posts to."""
    try:
        parts = urlsplit(address)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme.lower() == "https" and (parts.hostname or "").lower() in LOOPBACK_HOSTS


def webhook_expired(webhook: dict[str, Any] | None, now: dt.datetime) -> bool:
    """True when an enabled webhook's ``expiration`` (as ``/start`` accepted it) has passed."""
    if webhook is None or webhook.get("status") != "enabled" or not webhook.get("expiration"):
        return False
    expires = parse_query_time(str(webhook["expiration"]))
    return expires is not None and expires <= now


def expire_webhooks(store: Store, tenant_id: str, now: dt.datetime) -> list[str]:
    """Mark the tenant's webhooks past their expiration ``expired`` ([REF] §2 status vocabulary); the
    content types marked. An expired webhook gets no more notifications until a ``/start`` renews it."""
    expired = [
        str(sub["contentType"]) for sub in store.list_subscriptions(tenant_id) if webhook_expired(sub["webhook"], now)
    ]
    for content_type in expired:
        store.set_webhook_status(tenant_id, content_type, "expired")
    return expired


@dataclass
class PushOptions:
    """Mutable push knobs (``sim.options.push``); changes apply to the next delivery."""

    # Descriptors per notification; [REF] only says the number "is limited".
    batch_size: int = 10
    # Share of delivered batches sent a second time, and "every k-th batch is sent twice" (0: never).
    # [REF]: retries mean duplicate notifications.
    duplicate_rate: float = 0.0
    duplicate_every: int = 0
    # Shuffle due notifications within and between batches ([REF]: order is not guaranteed).
    shuffle: bool = False
    # Share of batches lost on the way (counted as a connection failure, so they are retried).
    drop_rate: float = 0.0
    # Backoff after the n-th consecutive failure: initial * 2**(n-1), capped; in simulator time.
    backoff_initial: dt.timedelta = dt.timedelta(seconds=30)
    backoff_max: dt.timedelta = dt.timedelta(hours=1)
    # Consecutive failures after which the webhook is disabled ([REF]: "we reserve the right to disable").
    max_failures: int = 5
    # Per-request socket timeout, real seconds.
    timeout_seconds: float = 5.0
    # Another CA to trust besides the simulator's own (a listener with its own certificate).
    extra_ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """One descriptor sent in one POST: what the bench measures latency from."""

    tenant_id: str
    content_type: str
    content_id: str
    available_at: dt.datetime
    sent_at: dt.datetime  # simulator clock
    sent_wall: float  # time.time() just before the POST
    status: int | None  # None: connection error or dropped
    duplicate: bool


@dataclass
class PushReport:
    """What one ``deliver()`` did."""

    batches: int = 0
    delivered: int = 0  # descriptors acknowledged with 200 (first sends only)
    failed_batches: int = 0
    duplicates: int = 0  # batches sent a second time
    disabled: list[tuple[str, str]] = field(default_factory=list)  # (tenant, content type) disabled now
    notifications: list[Notification] = field(default_factory=list)


@dataclass
class _Hook:
    address: str
    auth_id: str | None
    client_id: str
    since: dt.datetime
    failures: int = 0
    next_attempt: dt.datetime | None = None
    acked: set[str] = field(default_factory=set)


class Pusher:
    def __init__(self, store: Store, clock: Clock, options: PushOptions, ca_file: Callable[[], str], seed: int) -> None:
        self._store = store
        self._clock = clock
        self.options = options
        self._ca_file = ca_file
        self._rng = random.Random(f"{seed}|push")
        self._lock = threading.RLock()
        self._hooks: dict[tuple[str, str], _Hook] = {}
        self._batches = 0
        self.log: list[Notification] = []

    # -- handshake ------------------------------------------------------------------------------

    def validate(self, address: str, auth_id: str | None) -> bool:
        """POST a validation code ([REF] §6); True only on HTTP 200 from a loopback address."""
        code = secrets.token_hex(16)
        headers = {"Content-Type": "application/json; charset=utf-8", "Webhook-ValidationCode": code}
        if auth_id:
            headers["Webhook-AuthID"] = auth_id
        return self._post(address, headers, orjson.dumps({"validationCode": code})) == 200

    def registered(self, tenant_id: str, content_type: str, address: str, auth_id: str | None, client_id: str) -> None:
        """A ``/start`` validated a webhook: (re-)enable delivery, failures forgotten.

        The same address keeps its acknowledged set and start time, so a re-enabled webhook catches up
        on what it missed while disabled; a new address starts from now.
        """
        key = (tenant_id.lower(), content_type)
        with self._lock:
            hook = self._hooks.get(key)
            if hook is None or hook.address != address:
                self._hooks[key] = _Hook(address, auth_id, client_id, self._clock())
            else:
                hook.auth_id, hook.client_id, hook.failures, hook.next_attempt = auth_id, client_id, 0, None

    # -- notifications --------------------------------------------------------------------------

    def deliver(self) -> PushReport:
        """Send every due notification now (synchronously); see the module docstring."""
        report = PushReport()
        with self._lock:
            for (tenant_id, content_type), hook in list(self._hooks.items()):
                self._deliver_one(tenant_id, content_type, hook, report)
            self.log.extend(report.notifications)
        return report

    def _due(self, tenant_id: str, content_type: str, hook: _Hook, now: dt.datetime) -> list[SimBlob] | None:
        sub = self._store.subscription(tenant_id, content_type)
        webhook = sub.webhook if sub is not None else None
        # [REF]: a stopped subscription sends no notifications; a disabled webhook stops.
        if sub is None or sub.status != "enabled" or webhook is None or webhook.get("status") != "enabled":
            return None
        if webhook_expired(webhook, now):
            self._store.set_webhook_status(tenant_id, content_type, "expired")
            return None
        if hook.next_attempt is not None and now < hook.next_attempt:
            return None
        return [
            blob
            for blob in self._store.blobs(tenant_id, content_type)
            if hook.since <= blob.available_at <= now and blob.content_id not in hook.acked and not sub.hides(blob)
        ]

    def _deliver_one(self, tenant_id: str, content_type: str, hook: _Hook, report: PushReport) -> None:
        now = self._clock()
        due = self._due(tenant_id, content_type, hook, now)
        if not due:
            return
        options = self.options
        if options.shuffle:
            self._rng.shuffle(due)
        size = max(1, options.batch_size)
        for start in range(0, len(due), size):
            batch = due[start : start + size]
            status = self._send(hook, batch, report, duplicate=False)
            if status != 200:
                report.failed_batches += 1
                hook.failures += 1
                if hook.failures >= options.max_failures:
                    self._store.set_webhook_status(tenant_id, content_type, "disabled")
                    report.disabled.append((tenant_id, content_type))
                    logger.info("webhook for %s %s disabled after %d failures", tenant_id, content_type, hook.failures)
                else:
                    backoff = options.backoff_initial * (2 ** (hook.failures - 1))
                    hook.next_attempt = now + min(backoff, options.backoff_max)
                return  # the rest waits for the retry, like the failed batch
            hook.failures, hook.next_attempt = 0, None
            hook.acked.update(blob.content_id for blob in batch)
            report.delivered += len(batch)
            self._batches += 1
            every = options.duplicate_every
            if (every and self._batches % every == 0) or self._rng.random() < options.duplicate_rate:
                report.duplicates += 1
                self._send(hook, batch, report, duplicate=True)

    def _send(self, hook: _Hook, batch: list[SimBlob], report: PushReport, *, duplicate: bool) -> int | None:
        body = [
            {
                "tenantId": blob.tenant_id,
                "clientId": hook.client_id,
                "contentType": blob.content_type,
                "contentId": blob.content_id,
                "contentUri": blob.content_uri,
                "contentCreated": format_content_time(blob.created),
                "contentExpiration": format_content_time(blob.expiration),
            }
            for blob in batch
        ]
        headers = {"Content-Type": "application/json; utf-8"}
        if hook.auth_id:
            headers["Webhook-AuthID"] = hook.auth_id
        sent_at, wall = self._clock(), time.time()
        report.batches += 1
        if self._rng.random() < self.options.drop_rate:
            status: int | None = None
        else:
            status = self._post(hook.address, headers, orjson.dumps(body))
        report.notifications.extend(
            Notification(b.tenant_id, b.content_type, b.content_id, b.available_at, sent_at, wall, status, duplicate)
            for b in batch
        )
        return status

    # -- HTTP -----------------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self._ca_file())
        if self.options.extra_ca_file:
            context.load_verify_locations(self.options.extra_ca_file)
        return context

    def _post(self, address: str, headers: dict[str, str], body: bytes) -> int | None:
        """POST and return the status; None on a refused address or a connection/TLS error."""
        parts = urlsplit(address)
        if not is_loopback_https(address) or parts.hostname is None:
            logger.warning("webhook address %s refused: the simulator only posts to loopback HTTPS", address)
            return None
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        connection: http.client.HTTPSConnection | None = None
        try:
            context = self._context()  # per request: the CA files may be replaced between deliveries
            connection = http.client.HTTPSConnection(
                parts.hostname, parts.port or 443, timeout=self.options.timeout_seconds, context=context
            )
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException) as err:
            logger.info("webhook POST to %s failed: %s", address, err)
            return None
        finally:
            if connection is not None:
                connection.close()

    def state(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Per webhook: consecutive failures and the next attempt (for tests and the demo)."""
        with self._lock:
            return {k: {"failures": h.failures, "next_attempt": h.next_attempt} for k, h in self._hooks.items()}
