"""Microsoft Graph log records for the simulator: sign-ins, directory audits and message traces.

Each record is shaped like the JSON representation Microsoft documents for its resource (the facts and
their sources are listed in ``graph.py``): ``signIn`` (``createdDateTime``, ``status``, ``deviceDetail``,
``location``…), ``directoryAudit`` (``activityDateTime``, ``initiatedBy``, ``targetResources``…),
``exchangeMessageTrace`` (``receivedDateTime``, ``senderAddress``, ``status``, ``size``…) and, per message,
the ``exchangeMessageTraceDetail`` events ``getDetailsByRecipient`` answers. Values are synthetic
(contoso.com, documentation IP ranges) and deterministic: the same seed and calls give the same ids.

``GraphRecords`` keeps them per (tenant, stream), sorted by time; ``available_at`` (time + a lag) is when
Graph starts serving a record, so a collector meets records that arrive late.
"""

from __future__ import annotations

import bisect
import datetime as dt
import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..sources.catalog import DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM, SIGNINS_STREAM
from .times import as_utc

GRAPH_STREAMS: tuple[str, ...] = (SIGNINS_STREAM, DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM)

# The property each stream's windows filter on (and its records are ordered by).
TIME_FIELD: dict[str, str] = {
    SIGNINS_STREAM: "createdDateTime",
    DIRECTORY_AUDITS_STREAM: "activityDateTime",
    MESSAGE_TRACE_STREAM: "receivedDateTime",
}

# How long Graph keeps each log: Entra's 30 days (P1/P2) and message trace's 90 days.
RETENTION: dict[str, dt.timedelta] = {
    SIGNINS_STREAM: dt.timedelta(days=30),
    DIRECTORY_AUDITS_STREAM: dt.timedelta(days=30),
    MESSAGE_TRACE_STREAM: dt.timedelta(days=90),
}

_USERS = (
    ("Adele Vance", "AdeleV"),
    ("Alex Wilber", "AlexW"),
    ("Megan Bowen", "MeganB"),
    ("Nestor Wilke", "NestorW"),
    ("Isaiah Langer", "IsaiahL"),
    ("Lynne Robbins", "LynneR"),
)
_APPS = (
    ("Office 365 Exchange Online", "00000002-0000-0ff1-ce00-000000000000"),
    ("Microsoft Teams", "1fec8e78-bce4-4aaf-ab1b-5451cc387264"),
    ("Azure Portal", "c44b4083-3bb0-49c1-b47d-974e53cbdf3c"),
    ("Office 365 SharePoint Online", "00000003-0000-0ff1-ce00-000000000000"),
)
_CLIENTS = ("Browser", "Mobile Apps and Desktop clients", "Exchange ActiveSync", "IMAP")
_PLACES = (("Redmond", "Washington", "US", 47.67, -122.12), ("Dublin", "Dublin", "IE", 53.35, -6.26))
_FAILURES = ((50126, "Error validating credentials due to invalid username or password."),)
_AUDITS = (
    ("Add member to group", "GroupManagement", "Add", "Core Directory", "Group"),
    ("Update user", "UserManagement", "Update", "Core Directory", "User"),
    ("Reset password (by admin)", "UserManagement", "Reset", "Self-service Password Management", "User"),
    ("Add service principal", "ApplicationManagement", "Add", "Core Directory", "ServicePrincipal"),
)
_SUBJECTS = ("Quarterly report", "Re: Project Falcon", "Invoice 20412", "Team lunch", "Your order has shipped")
_STATUSES = ("delivered", "delivered", "delivered", "failed", "quarantined", "filteredAsSpam", "pending")


def format_graph_time(value: dt.datetime) -> str:
    """Graph's ``DateTimeOffset`` as its logs write it: ``2024-05-20T11:59:30Z`` (UTC, whole seconds here)."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class GraphRecord:
    """One log record: its ``id``, its time (the stream's ``TIME_FIELD``), when Graph serves it, its JSON."""

    tenant_id: str
    stream: str
    id: str
    time: dt.datetime
    available_at: dt.datetime
    body: dict[str, Any] = field(compare=False, repr=False)
    # getDetailsByRecipient's events (message trace only).
    details: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)

    @property
    def sort_key(self) -> tuple[dt.datetime, str]:
        return self.time, self.id


class _Factory:
    """Draws one stream's records from a seeded RNG."""

    def __init__(self, rng: random.Random, tenant_id: str) -> None:
        self._rng = rng
        self._tenant = tenant_id

    def guid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _user(self) -> tuple[str, str, str]:
        name, alias = self._rng.choice(_USERS)
        return name, f"{alias}@contoso.com", str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self._tenant}/{alias}"))

    def _ip(self) -> str:
        return f"203.0.113.{self._rng.randrange(1, 255)}"  # TEST-NET-3: never a real address

    def sign_in(self, record_id: str, time: dt.datetime) -> dict[str, Any]:
        rng = self._rng
        name, upn, user_id = self._user()
        app, app_id = rng.choice(_APPS)
        city, state, country, lat, lon = rng.choice(_PLACES)
        failed = rng.random() < 0.15
        code, reason = rng.choice(_FAILURES) if failed else (0, None)
        return {
            "id": record_id,
            "createdDateTime": format_graph_time(time),
            "userDisplayName": name,
            "userPrincipalName": upn,
            "userId": user_id,
            "appId": app_id,
            "appDisplayName": app,
            "ipAddress": self._ip(),
            "clientAppUsed": rng.choice(_CLIENTS),
            "correlationId": self.guid(),
            "conditionalAccessStatus": "notApplied" if failed else rng.choice(("success", "notApplied")),
            "isInteractive": rng.random() < 0.7,
            "riskDetail": "none",
            "riskLevelAggregated": "none",
            "riskLevelDuringSignIn": "none",
            "riskState": "none",
            "riskEventTypes": [],
            "riskEventTypes_v2": [],
            "resourceDisplayName": app,
            "resourceId": app_id,
            "status": {"errorCode": code, "failureReason": reason, "additionalDetails": None},
            "deviceDetail": {
                "deviceId": "",
                "displayName": None,
                "operatingSystem": rng.choice(("Windows 10", "MacOs", "Ios", "Android")),
                "browser": rng.choice(("Edge 124.0.0", "Chrome 125.0.0", "Safari 17.4", "Rich Client 5.2.0")),
                "isCompliant": None,
                "isManaged": None,
                "trustType": None,
            },
            "location": {
                "city": city,
                "state": state,
                "countryOrRegion": country,
                "geoCoordinates": {"altitude": None, "latitude": lat, "longitude": lon},
            },
            "appliedConditionalAccessPolicies": [],
        }

    def directory_audit(self, record_id: str, time: dt.datetime) -> dict[str, Any]:
        rng = self._rng
        activity, category, operation, service, target_type = rng.choice(_AUDITS)
        _, actor_upn, actor_id = self._user()
        target, target_upn, target_id = self._user()
        return {
            "id": record_id,
            "category": category,
            "correlationId": self.guid(),
            "result": "success",
            "resultReason": "",
            "activityDisplayName": activity,
            "activityDateTime": format_graph_time(time),
            "loggedByService": service,
            "operationType": operation,
            "initiatedBy": {
                "app": None,
                "user": {
                    "id": actor_id,
                    "displayName": None,
                    "userPrincipalName": actor_upn,
                    "ipAddress": self._ip(),
                    "userType": None,
                    "homeTenantId": None,
                    "homeTenantName": None,
                },
            },
            "targetResources": [
                {
                    "id": target_id if target_type == "User" else self.guid(),
                    "displayName": target if target_type == "User" else f"{target} ({target_type})",
                    "type": target_type,
                    "userPrincipalName": target_upn if target_type == "User" else None,
                    "groupType": "unifiedGroups" if target_type == "Group" else None,
                    "modifiedProperties": [],
                }
            ],
            "additionalDetails": [{"key": "User-Agent", "value": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"}],
        }

    def message_trace(self, record_id: str, time: dt.datetime) -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
        rng = self._rng
        _, sender, _ = self._user()
        _, recipient, _ = self._user()
        status = rng.choice(_STATUSES)
        message_id = f"<{self.guid().replace('-', '')[:24]}@contoso.com>"
        body = {
            "id": record_id,
            "messageId": message_id,
            "receivedDateTime": format_graph_time(time),
            "senderAddress": sender,
            "recipientAddress": recipient,
            "subject": rng.choice(_SUBJECTS),
            "size": rng.randrange(2_000, 400_000),
            "status": status,
            "fromIP": self._ip(),
            "toIP": "" if status != "delivered" else f"198.51.100.{rng.randrange(1, 255)}",
        }
        events = [("Receive", "Message received by: contoso-com.mail.protection.outlook.com")]
        events.append(
            {
                "delivered": ("Deliver", "The message was successfully delivered."),
                "failed": ("Fail", "Reason: [{LED=550 5.1.10 RESOLVER.ADR.RecipientNotFound}]"),
                "quarantined": ("Quarantine", "The message was quarantined."),
                "filteredAsSpam": ("Spam", "The message was marked as spam."),
                "pending": ("Defer", "The message was deferred; delivery will be retried."),
            }[status]
        )
        details = tuple(
            {
                "id": self.guid(),
                "messageId": message_id,
                "dateTime": format_graph_time(time + dt.timedelta(seconds=n)),
                "event": event,
                "action": None,
                "description": description,
                "data": f'<root><MEP Name="Directionality" String="Originating"/><MEP Name="Step" Integer="{n}"/>'
                "</root>",
            }
            for n, (event, description) in enumerate(events)
        )
        return body, details


class GraphRecords:
    """Every generated Graph record, per (tenant, stream), sorted by (time, id). Thread-safe."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], list[GraphRecord]] = {}
        self._by_id: dict[tuple[str, str], GraphRecord] = {}
        self._calls: dict[tuple[str, str], int] = {}

    def generate(
        self,
        tenant_id: str,
        stream: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        every: dt.timedelta,
        lag: tuple[dt.timedelta, dt.timedelta],
    ) -> list[GraphRecord]:
        """Records every ``every`` (± jitter, whole seconds) in ``[start, end)``; each served ``lag`` after."""
        _check_stream(stream)
        if every <= dt.timedelta(0) or lag[0] < dt.timedelta(0) or lag[1] < lag[0]:
            raise ValueError("every must be > 0 and lag a (min, max) range with 0 <= min <= max")
        start, end = as_utc(start).replace(microsecond=0), as_utc(end)
        key = (tenant_id.lower(), stream)
        with self._lock:
            call = self._calls.get(key, 0)
            self._calls[key] = call + 1
        rng = random.Random(f"{self._seed}|graph|{key[0]}|{stream}|{call}")
        factory = _Factory(rng, key[0])
        made: list[GraphRecord] = []
        step = int(every.total_seconds())
        slot = start
        while slot < end:
            time = slot + dt.timedelta(seconds=rng.randrange(0, max(1, step)))
            if time < end:
                lag_s = rng.uniform(lag[0].total_seconds(), lag[1].total_seconds())
                made.append(self._make(factory, tenant_id, stream, time, time + dt.timedelta(seconds=lag_s), None))
            slot += every
        self._insert(made)
        return made

    def add(
        self,
        tenant_id: str,
        stream: str,
        time: dt.datetime,
        *,
        available_at: dt.datetime | None = None,
        record_id: str | None = None,
    ) -> GraphRecord:
        """One hand-made record (a late arrival, a record on a window's edge)."""
        _check_stream(stream)
        key = (tenant_id.lower(), stream)
        with self._lock:
            call = self._calls.get(key, 0)
            self._calls[key] = call + 1
        factory = _Factory(random.Random(f"{self._seed}|graph|{key[0]}|{stream}|{call}"), key[0])
        time = as_utc(time)
        record = self._make(factory, tenant_id, stream, time, as_utc(available_at or time), record_id)
        self._insert([record])
        return record

    def records(self, tenant_id: str, stream: str | None = None) -> list[GraphRecord]:
        with self._lock:
            found = [
                r
                for (tenant, s), rows in self._records.items()
                if tenant == tenant_id.lower() and stream in (None, s)
                for r in rows
            ]
        return sorted(found, key=lambda r: r.sort_key)

    def window(self, tenant_id: str, stream: str, start: dt.datetime, end: dt.datetime) -> list[GraphRecord]:
        """The stream's records with ``start <= time < end``, ascending."""
        with self._lock:
            rows = self._records.get((tenant_id.lower(), stream), [])
            low = bisect.bisect_left(rows, (start, ""), key=lambda r: r.sort_key)
            high = bisect.bisect_left(rows, (end, ""), key=lambda r: r.sort_key)
            return rows[low:high]

    def get(self, tenant_id: str, stream: str, record_id: str) -> GraphRecord | None:
        with self._lock:
            return self._by_id.get((tenant_id.lower(), record_id.lower()))

    def _make(
        self,
        factory: _Factory,
        tenant_id: str,
        stream: str,
        time: dt.datetime,
        available_at: dt.datetime,
        record_id: str | None,
    ) -> GraphRecord:
        details: tuple[dict[str, Any], ...] = ()
        if stream == SIGNINS_STREAM:
            record_id = record_id or factory.guid()
            body = factory.sign_in(record_id, time)
        elif stream == DIRECTORY_AUDITS_STREAM:
            # Entra's audit ids look like "Directory_<guid>_<5 letters>_<number>" (entra-powershell examples).
            suffix = "".join(factory._rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=5))
            record_id = record_id or f"Directory_{factory.guid()}_{suffix}_{factory._rng.randrange(10**8, 10**9)}"
            body = factory.directory_audit(record_id, time)
        else:
            record_id = record_id or factory.guid()
            body, details = factory.message_trace(record_id, time)
        return GraphRecord(tenant_id.lower(), stream, record_id, time, available_at, body, details)

    def _insert(self, made: list[GraphRecord]) -> None:
        with self._lock:
            for record in made:
                rows = self._records.setdefault((record.tenant_id, record.stream), [])
                bisect.insort(rows, record, key=lambda r: r.sort_key)
                self._by_id[(record.tenant_id, record.id.lower())] = record


def _check_stream(stream: str) -> None:
    if stream not in GRAPH_STREAMS:
        raise ValueError(f"unknown Graph stream {stream!r} (expected one of {GRAPH_STREAMS})")
