"""Push mode's receiver: the Management Activity API POSTs new content descriptors here.

``WebhookReceiver.handle(headers, body)`` is the whole contract (the ``webhook`` function and the command
line's listener are thin wrappers around it):

1. ``Webhook-AuthID`` must equal ``O365_WEBHOOK_AUTH_ID`` (compared in constant time), else **401**.
   It is checked first, on the validation request too: the service sends it on both.
2. A validation request (header ``Webhook-ValidationCode`` or a body ``{"validationCode": ...}``) gets
   **200**: the service only wants the 200 to attach the webhook.
3. A notification is a JSON array of content descriptors, each with ``tenantId``. Each is validated as
   listed content is (``ContentBlob.from_api``), and more: the tenant must be one this deployment collects,
   its content type one it collects for that tenant (a subscribed stream), and the contentUri the
   canonical content path of that tenant and content id (``content_uri_problem``). Valid entries are
   enqueued one message per blob through the lister's ``enqueue_blob`` (signed with ``O365_MESSAGE_KEY``
   like the lister's); a blob already on record as enqueued (a retried notification, or the lister got
   there first) is not enqueued again; the ledger would skip it anyway.
4. **200** only after every valid entry is on the queue, so the service retries whatever we failed to
   take (**503** when the queue refused). A body that is not such an array, or that holds any refused
   entry, gets **400** (its valid entries are still enqueued: a bad entry never stops its neighbours);
   400 and 401 are counted (``arrivals``), logged at WARNING, and nothing of them is echoed.

Polling stays on (the API promises no delivery); ``PollMarkingQueue`` records what the lister enqueued so
that ``status`` can say how many blobs came by push, by poll only, and both.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .arrivals import ArrivalStore
from .envparse import Secret
from .lister import TaskQueue, enqueue_blob
from .management_api import content_uri_problem
from .models import ContentBlob, ListingEntryError, parse_api_time
from .redaction import printable, summary

log = logging.getLogger(__name__)

AUTH_HEADER = "webhook-authid"
VALIDATION_HEADER = "webhook-validationcode"
# The service limits how many blobs one notification carries; far fewer than this in practice.
MAX_BODY_BYTES = 4 << 20
MAX_ENTRIES = 10_000
PROBLEMS_KEPT = 10  # refused entries described in one answer (all are counted)
TENANT_REFRESH_SECONDS = 60.0  # a registry re-read for an unknown tenant at most this often
ID_CHARS = 128

TenantsFn = Callable[[bool], Sequence[Any]]
"""``tenants(refresh)``: the configured ``TenantConfig``s (``refresh`` re-reads a table registry)."""


@dataclass(frozen=True, slots=True)
class WebhookResponse:
    status: int
    body: dict[str, Any] = field(default_factory=dict)

    def content(self) -> bytes:
        return orjson.dumps(self.body)


class WebhookReceiver:
    def __init__(
        self,
        *,
        auth_id: Secret | None,
        tenants: TenantsFn,
        queue: TaskQueue,
        arrivals: ArrivalStore,
        clock: Callable[[], dt.datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auth_id = auth_id.reveal().encode() if auth_id is not None else None
        self._tenants = tenants
        self._queue = queue
        self._arrivals = arrivals
        self._clock = clock
        self._monotonic = monotonic
        self._refreshed_at: float | None = None

    def handle(self, headers: Mapping[str, str], body: bytes) -> WebhookResponse:
        if self._auth_id is None:
            return WebhookResponse(503, {"error": "push mode is off: set O365_WEBHOOK_AUTH_ID"})
        lowered = {k.lower(): v for k, v in headers.items()}
        given = lowered.get(AUTH_HEADER)
        if given is None or not hmac.compare_digest(given.encode("utf-8", "replace"), self._auth_id):
            reason = "no Webhook-AuthID header" if given is None else "the Webhook-AuthID does not match"
            return self._refuse(401, reason)
        if len(body) > MAX_BODY_BYTES:
            return self._refuse(400, f"the body is larger than {MAX_BODY_BYTES >> 20} MiB")
        try:
            parsed = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError:
            return self._refuse(400, "the body is not JSON")
        if VALIDATION_HEADER in lowered or (isinstance(parsed, dict) and "validationCode" in parsed):
            log.info("webhook validation request answered")
            return WebhookResponse(200, {"validated": True})
        if not isinstance(parsed, list):
            return self._refuse(400, "the body is not a JSON array of content descriptors")
        if len(parsed) > MAX_ENTRIES:
            return self._refuse(400, f"the body holds more than {MAX_ENTRIES} entries")
        return self._notification(parsed)

    def _notification(self, entries: list[Any]) -> WebhookResponse:
        accepted = duplicates = 0
        problems: list[str] = []
        refused = 0
        for index, entry in enumerate(entries):
            checked = self._check(entry)
            if isinstance(checked, str):
                refused += 1
                if len(problems) < PROBLEMS_KEPT:
                    problems.append(f"entry {index}: {checked}")
                log.warning("webhook notification entry %d refused: %s", index, checked)
                continue
            tenant_id, blob = checked
            fields = {"tenant_id": tenant_id, "content_type": blob.content_type}
            try:
                already = self._arrivals.seen(tenant_id, blob.content_type, blob.content_id)
            except Exception as err:  # advisory: enqueue anyway, the ledger skips a duplicate
                log.warning("could not read the arrival table: %s", summary(str(err)), extra=fields)
                already = False
            if already:
                duplicates += 1
            else:
                try:
                    enqueue_blob(self._queue, tenant_id, blob)
                except Exception as err:
                    log.error(
                        "webhook notification: could not enqueue %s; answered 503 so the service retries: %s",
                        blob.content_type,
                        summary(str(err)),
                        extra=fields,
                    )
                    return WebhookResponse(503, {"error": "the content queue refused a message; retry later"})
                accepted += 1
            try:
                self._arrivals.mark(
                    tenant_id, blob.content_type, blob.content_id, blob.content_created, self._clock(), via="push"
                )
            except Exception as err:
                log.warning("could not record a pushed blob's arrival: %s", summary(str(err)), extra=fields)
        answer: dict[str, Any] = {"accepted": accepted, "duplicates": duplicates, "refused": refused}
        log.info("webhook notification: %s", orjson.dumps(answer).decode())
        if refused:
            self._count(400, f"{refused} of {len(entries)} entries refused; first: {problems[0]}")
            return WebhookResponse(400, answer | {"problems": problems})
        return WebhookResponse(200, answer)

    def _check(self, entry: Any) -> tuple[str, ContentBlob] | str:
        """(tenant id, blob) for a usable descriptor, else why it is refused (never echoing its values)."""
        if not isinstance(entry, dict):
            return "the entry is not a JSON object"
        raw_tenant = entry.get("tenantId")
        if not isinstance(raw_tenant, str) or not raw_tenant:
            return "tenantId is missing or not a string"
        tenant = self._tenant(raw_tenant)
        try:
            blob = ContentBlob.from_api(entry)
        except ListingEntryError as err:
            return _named(err.problem, err.content_id)
        if tenant is None:
            return _named("tenantId is not a tenant this deployment collects", blob.content_id)
        if blob.content_type not in tenant.streams:  # the audit feed's content types, if it is one of the sources
            what = f"{blob.content_type} is not collected for this tenant (O365_CONTENT_TYPES, O365_SOURCES)"
            return _named(what, blob.content_id)
        problem = content_uri_problem(
            blob.content_uri, api_url=tenant.api_url, tenant_id=tenant.tenant_id, content_id=blob.content_id
        )
        if problem is not None:
            return _named(problem, blob.content_id)
        return tenant.tenant_id, blob

    def _tenant(self, tenant_id: str) -> Any:
        wanted = tenant_id.lower()
        for refresh in (False, True):
            if refresh:
                now = self._monotonic()
                if self._refreshed_at is not None and now - self._refreshed_at < TENANT_REFRESH_SECONDS:
                    return None
                self._refreshed_at = now
            for tenant in self._tenants(refresh):
                if tenant.tenant_id.lower() == wanted:
                    return tenant
        return None

    def _refuse(self, status: int, reason: str) -> WebhookResponse:
        self._count(status, reason)
        log.warning("webhook request refused with %d: %s", status, reason)
        return WebhookResponse(status, {"error": reason})

    def _count(self, status: int, reason: str) -> None:
        try:
            if not self._arrivals.record_refused(status, reason, self._clock()):
                log.warning("could not count a refused webhook request (contention on the arrival table)")
        except Exception as err:
            log.warning("could not count a refused webhook request: %s", summary(str(err)))


def _named(problem: str, content_id: str | None) -> str:
    return f"contentId {printable(content_id[:ID_CHARS])}: {problem}" if content_id else problem


class PollMarkingQueue:
    """The lister's queue in push mode: after each message is sent, records the blob as polled."""

    def __init__(self, queue: TaskQueue, arrivals: ArrivalStore, clock: Callable[[], dt.datetime]) -> None:
        self._queue = queue
        self._arrivals = arrivals
        self._clock = clock

    def send_message(self, content: str) -> object:
        sent = self._queue.send_message(content)
        try:
            body = orjson.loads(content)
            self._arrivals.mark(
                str(body["tenantId"]),
                str(body["contentType"]),
                str(body["contentId"]),
                parse_api_time(str(body["contentCreated"])),
                self._clock(),
                via="poll",
            )
        except Exception as err:  # advisory: the blob is on the queue, only the push/poll counts miss it
            log.warning("could not record a polled blob's arrival: %s", summary(str(err)))
        return sent
