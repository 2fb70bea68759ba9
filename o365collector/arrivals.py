"""How each content blob reached the queue in push mode: by push, by poll, or both (``O365_ARRIVAL_TABLE``).

- an **arrival row** per blob (PartitionKey = tenant id, RowKey = ``<content type>|<sha256 of the content
  id>``) with ``PushedAt`` (the webhook receiver enqueued it or saw it already queued) and ``PolledAt``
  (the lister enqueued it). Both are merges: each side writes only its own property, so neither race
  loses the other. ``status`` counts the rows per stream: pushed only, polled only (push missed them),
  both;
- a **receiver row** (PartitionKey ``_webhook``, RowKey ``refused``): requests refused with 400 (bad body)
  and 401 (wrong or missing ``Webhook-AuthID``), with the last one's time and reason. Read-modify-write
  under the ETag (Table Storage has no atomic counter), a few attempts, then given up: counts are advisory;
- a **webhook row** per stream (PartitionKey ``_webhook``, RowKey ``state|<tenant>|<content type>``): the
  webhook's state (enabled/disabled/expired/none) as ``subscriptions list|start`` last read it from the
  service, so ``status`` shows it without calling the API (``check`` reads the service itself and records
  nothing).

Only push mode writes here; everything is advisory and never gates the work. Rows are not pruned yet:
``status`` counts the blobs created within the API's 7-day retention.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from .models import utc
from .redaction import summary
from .storage import ensure_table

RECEIVER_PARTITION = "_webhook"  # never a tenant id: those are GUIDs
REFUSED_ROW = "refused"
STATE_PREFIX = "state|"
RETENTION = dt.timedelta(days=7)
_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class ArrivalCounts:
    pushed_only: int = 0
    polled_only: int = 0
    both: int = 0
    last_push_at: dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pushed_only": self.pushed_only,
            "polled_only": self.polled_only,
            "both": self.both,
            "last_push_at": self.last_push_at.isoformat() if self.last_push_at else None,
        }


@dataclass(frozen=True, slots=True)
class RefusedCounts:
    bad_body: int = 0
    """Answered 400."""
    bad_auth: int = 0
    """Answered 401."""
    last_at: dt.datetime | None = None
    last_status: int | None = None
    last_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bad_body": self.bad_body,
            "bad_auth": self.bad_auth,
            "last_at": self.last_at.isoformat() if self.last_at else None,
            "last_status": self.last_status,
            "last_reason": self.last_reason,
        }


@dataclass(frozen=True, slots=True)
class WebhookState:
    tenant_id: str
    content_type: str
    state: str
    """enabled, disabled, expired (as the service says) or none (no webhook set)."""
    address: str | None
    seen_at: dt.datetime | None


def webhook_state(subscription: Mapping[str, Any]) -> tuple[str, str | None]:
    """(state, address) of a /subscriptions/list entry's webhook; ("none", None) when it has none."""
    hook = subscription.get("webhook")
    if not isinstance(hook, dict):
        return "none", None
    address = hook.get("address")
    state = str(hook.get("status") or "unknown").lower()
    return summary(state, 20), shown_address(address) if isinstance(address, str) else None


def shown_address(address: str) -> str:
    """The webhook address without its query: a Functions URL carries the function key in ``?code=``."""
    return summary(address.split("?", 1)[0].split("#", 1)[0], 300)


def _row_key(content_type: str, content_id: str) -> str:
    return f"{content_type}|{hashlib.sha256(content_id.encode()).hexdigest()}"


class ArrivalStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def ensure_table(self) -> None:
        ensure_table(self._table)

    # -- per blob -------------------------------------------------------------------------------

    def seen(self, tenant_id: str, content_type: str, content_id: str) -> bool:
        """True when this blob is on record as enqueued already (by a push or by the lister)."""
        try:
            row = self._table.get_entity(tenant_id, _row_key(content_type, content_id))
        except ResourceNotFoundError:
            return False
        return row.get("PushedAt") is not None or row.get("PolledAt") is not None

    def mark(
        self, tenant_id: str, content_type: str, content_id: str, created: dt.datetime, now: dt.datetime, *, via: str
    ) -> None:
        """Record that ``via`` ("push" or "poll") enqueued (or met) this blob; a merge of that side's property."""
        field = "PushedAt" if via == "push" else "PolledAt"
        self._table.upsert_entity(
            {
                "PartitionKey": tenant_id,
                "RowKey": _row_key(content_type, content_id),
                "ContentType": content_type,
                "ContentCreated": utc(created),
                field: now,
            },
            mode=UpdateMode.MERGE,
        )

    def counts(self, now: dt.datetime) -> dict[tuple[str, str], ArrivalCounts]:
        """Per (tenant, content type): the blobs created within the retention, by how they arrived."""
        since = now - RETENTION
        tallies: dict[tuple[str, str], list[Any]] = {}
        try:
            rows = self._table.query_entities(
                "PartitionKey ne @receiver and ContentCreated ge @since",
                parameters={"receiver": RECEIVER_PARTITION, "since": since},
                select=["PartitionKey", "ContentType", "PushedAt", "PolledAt"],
            )
            for row in rows:
                key = (str(row["PartitionKey"]), str(row.get("ContentType") or ""))
                tally = tallies.setdefault(key, [0, 0, 0, None])
                pushed, polled = row.get("PushedAt"), row.get("PolledAt")
                index = 2 if pushed is not None and polled is not None else 0 if pushed is not None else 1
                tally[index] += 1
                if isinstance(pushed, dt.datetime) and (tally[3] is None or utc(pushed) > tally[3]):
                    tally[3] = utc(pushed)
        except ResourceNotFoundError:
            return {}
        return {key: ArrivalCounts(t[0], t[1], t[2], t[3]) for key, t in tallies.items()}

    # -- the receiver's refusals ----------------------------------------------------------------

    def record_refused(self, status: int, reason: str, now: dt.datetime) -> bool:
        """Add one refused request; False when the count could not be written (contention or storage)."""
        field = "BadAuth" if status == 401 else "BadBody"
        for _ in range(_ATTEMPTS):  # bounded: each lost race re-reads
            try:
                row = self._table.get_entity(RECEIVER_PARTITION, REFUSED_ROW)
            except ResourceNotFoundError:
                row = None
            before = int(row.get(field) or 0) if row is not None else 0
            entity: dict[str, Any] = {
                "PartitionKey": RECEIVER_PARTITION,
                "RowKey": REFUSED_ROW,
                field: before + 1,
                "LastRefusedAt": now,
                "LastRefusedStatus": status,
                "LastRefusedReason": summary(reason, 300),
            }
            try:
                if row is None:
                    self._table.create_entity(entity)
                else:
                    self._table.update_entity(
                        entity,
                        mode=UpdateMode.MERGE,
                        etag=row.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                return True
            except (ResourceExistsError, ResourceModifiedError):
                continue
        return False

    def refused(self) -> RefusedCounts:
        try:
            row = self._table.get_entity(RECEIVER_PARTITION, REFUSED_ROW)
        except ResourceNotFoundError:
            return RefusedCounts()
        at = row.get("LastRefusedAt")
        reason = row.get("LastRefusedReason")
        return RefusedCounts(
            bad_body=int(row.get("BadBody") or 0),
            bad_auth=int(row.get("BadAuth") or 0),
            last_at=utc(at) if isinstance(at, dt.datetime) else None,
            last_status=int(row["LastRefusedStatus"]) if row.get("LastRefusedStatus") is not None else None,
            last_reason=summary(str(reason), 300) if reason else None,
        )

    # -- webhook states -------------------------------------------------------------------------

    def record_webhook(self, tenant_id: str, subscription: Mapping[str, Any], now: dt.datetime) -> None:
        content_type = str(subscription.get("contentType") or "")
        state, address = webhook_state(subscription)
        entity: dict[str, Any] = {
            "PartitionKey": RECEIVER_PARTITION,
            "RowKey": f"{STATE_PREFIX}{tenant_id}|{content_type}",
            "State": state,
            "Address": address or "",
            "SeenAt": now,
        }
        self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def webhooks(self) -> dict[tuple[str, str], WebhookState]:
        found: dict[tuple[str, str], WebhookState] = {}
        try:
            rows = self._table.query_entities(
                "PartitionKey eq @receiver and RowKey ge @low and RowKey lt @high",
                parameters={"receiver": RECEIVER_PARTITION, "low": STATE_PREFIX, "high": "state}"},
            )
            for row in rows:
                tenant_id, _, content_type = str(row["RowKey"])[len(STATE_PREFIX) :].partition("|")
                seen = row.get("SeenAt")
                found[(tenant_id, content_type)] = WebhookState(
                    tenant_id,
                    content_type,
                    str(row.get("State") or "unknown"),
                    str(row.get("Address") or "") or None,
                    utc(seen) if isinstance(seen, dt.datetime) else None,
                )
        except ResourceNotFoundError:
            return {}
        return found


REENABLE = "python -m o365collector subscriptions start --content-type {content_type} --webhook <URL>"


def webhook_verdicts(
    content_types: tuple[str, ...], listed: list[dict[str, Any]], *, push: bool
) -> list[tuple[bool, str]]:
    """``check``'s webhook lines for one tenant: (passed, detail). Nothing when push mode is off and no
    subscription has a webhook; a webhook the service disabled (or that expired) fails with the fix."""
    states = {str(s.get("contentType")): webhook_state(s) for s in listed}
    if not push and all(state == "none" for state, _ in states.values()):
        return []
    verdicts: list[tuple[bool, str]] = []
    for content_type in content_types:
        state, address = states.get(content_type, ("none", None))
        command = REENABLE.format(content_type=content_type)
        if state == "enabled":
            verdicts.append((True, f"{content_type}: push webhook enabled ({address})"))
        elif state in ("disabled", "expired"):
            why = "the service disabled it after failed deliveries" if state == "disabled" else "it expired"
            verdicts.append(
                (
                    False,
                    f"{content_type}: push webhook {state} ({why}; polling still collects): re-enable it "
                    f"with `{command}`",
                )
            )
        elif push:
            verdicts.append((False, f"{content_type}: no push webhook set (O365_WEBHOOK_AUTH_ID is set): `{command}`"))
    return verdicts
