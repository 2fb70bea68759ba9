"""Content blobs and the audit records inside them, generated from ``samples.json``.

``samples.json`` holds composed, schema-faithful records per content type. A generated record is one
of those templates with a fresh ``Id`` (drawn from the seeded RNG), a ``CreationTime`` a little before
its blob's ``contentCreated`` ([TRB]: events precede the blob that reports them), the tenant's GUID
wherever the template had its organization, and a varied ``UserId`` and ``ClientIP``. The same seed
and the same calls give the same blobs, Ids and bytes.

Blob bodies are serialized once and cached, so serving a blob costs a dictionary lookup and a write.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import orjson

from .times import Clock, format_record_time

CONTENT_TYPES: tuple[str, ...] = (
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
)

Record = dict[str, Any]

# The organization GUID the composed samples were written with; replaced by each tenant's own.
SAMPLE_TENANT_ID = "7f3c2a51-9d4e-4c8b-a1f6-2e5d8b9c0a34"

# Demo users of the sample tenant; UPN-shaped UserIds in templates are swapped for one of these.
_USERS: tuple[str, ...] = tuple(
    f"{name}@contoso.onmicrosoft.com"
    for name in (
        "megan.bowen", "adele.vance", "alex.wilber", "diego.siciliani", "grady.archie", "isaiah.langer",
        "johanna.lorenz", "lee.gu", "lidia.holloway", "lynne.robbins", "miriam.graham", "nestor.wilke",
        "patti.fernandez", "pradeep.gupta", "admin",
    )
)  # fmt: skip

# Documentation address ranges only (RFC 5737 / RFC 3849): generated data never names a real host.
_V4_PREFIXES = ("203.0.113.", "198.51.100.", "192.0.2.")
_IP_WITH_PORT = re.compile(r"^\d+\.\d+\.\d+\.\d+:\d+$")
_CONTENT_ID_OK = re.compile(r"^[A-Za-z0-9$_.\-]+$")


@cache
def sample_records() -> dict[str, tuple[bytes, ...]]:
    """Templates per content type, each kept serialized so every copy is an independent object."""
    package = __name__.rpartition(".")[0]
    raw = orjson.loads(resources.files(package).joinpath("samples.json").read_bytes())
    return {ct: tuple(orjson.dumps(r) for r in raw[ct]) for ct in CONTENT_TYPES}


def is_well_formed_content_id(content_id: str) -> bool:
    """Real ids are digits, letters, ``_`` and ``$`` separators ([REF] samples); anything else is AF20052."""
    return bool(_CONTENT_ID_OK.match(content_id))


def redact_dlp(records: list[Record]) -> list[Record]:
    """DLP records as served to an app without ``ActivityFeed.ReadDlp``: no detected sensitive values.

    [SCH]/[REF]: sensitive values are only included with the DLP-sensitive permission; the record
    says so in ``SensitiveInfoDetectionIsIncluded``.
    """

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: strip(v) for k, v in value.items() if k != "SensitiveInformationDetections"}
            if "SensitiveInfoDetectionIsIncluded" in out:
                out["SensitiveInfoDetectionIsIncluded"] = False
            return out
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return [strip(r) for r in records]


@dataclass(eq=False)
class SimBlob:
    """One content blob: the ground truth a test compares the collector's output with."""

    tenant_id: str
    content_type: str
    content_id: str
    created: dt.datetime
    available_at: dt.datetime
    expiration: dt.datetime
    records: list[Record]
    seq: int
    _clock: Clock = field(repr=False)
    _api_url: Callable[[], str] = field(repr=False)
    _raw: bytes | None = field(default=None, repr=False)
    # Rewrites this blob's listing entry as served (a malformed or mislabelled entry); None: as is.
    listing_entry: Callable[[dict[str, Any]], object] | None = field(default=None, repr=False)
    _forced_expired: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _body: bytes | None = field(default=None, repr=False)
    _redacted: bytes | None = field(default=None, repr=False)

    @property
    def content_uri(self) -> str:
        return f"{self._api_url()}/api/v1.0/{self.tenant_id}/activity/feed/audit/{self.content_id}"

    @property
    def expired(self) -> bool:
        """True once ``expiration`` has passed on the simulator's clock, or after ``Simulator.expire``."""
        return self._forced_expired or self._clock() >= self.expiration

    @property
    def available(self) -> bool:
        return self.available_at <= self._clock()

    @property
    def sort_key(self) -> tuple[dt.datetime, int]:
        return (self.created, self.seq)

    def mark_expired(self) -> None:
        self._forced_expired = True

    def body(self, *, include_dlp_detail: bool = True) -> bytes:
        """The serialized body, computed on first use and cached (a fetch is then just a write)."""
        if self._raw is not None:
            return self._raw
        if include_dlp_detail or self.content_type != "DLP.All":
            if self._body is None:
                with self._lock:
                    if self._body is None:
                        self._body = orjson.dumps(self.records)
            return self._body
        if self._redacted is None:
            with self._lock:
                if self._redacted is None:
                    self._redacted = orjson.dumps(redact_dlp(self.records))
        return self._redacted


class RecordFactory:
    """Builds records for one tenant and content type from the sample templates, with one RNG."""

    def __init__(self, tenant_id: str, content_type: str, rng: random.Random) -> None:
        templates = sample_records()[content_type]
        tenant = tenant_id.encode()
        self._templates = [t.replace(SAMPLE_TENANT_ID.encode(), tenant) for t in templates]
        self._rng = rng

    def make(self, blob_created: dt.datetime, lag: tuple[dt.timedelta, dt.timedelta]) -> Record:
        rng = self._rng
        record: Record = orjson.loads(rng.choice(self._templates))
        record["Id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        low, high = lag
        seconds = rng.uniform(low.total_seconds(), high.total_seconds())
        record["CreationTime"] = format_record_time(blob_created - dt.timedelta(seconds=seconds))
        user = record.get("UserId")
        if isinstance(user, str) and "@" in user:
            record["UserId"] = rng.choice(_USERS)
        ip = record.get("ClientIP")
        if isinstance(ip, str) and ip:
            address = self._address(":" in ip and "." not in ip)
            record["ClientIP"] = f"{address}:{rng.randint(1024, 65535)}" if _IP_WITH_PORT.match(ip) else address
            for key in ("ActorIpAddress", "ClientIPAddress"):
                if key in record:
                    record[key] = address
        return record

    def _address(self, v6: bool) -> str:
        rng = self._rng
        if v6:
            return f"2001:db8:{rng.randint(0, 0xFFFF):x}:{rng.randint(0, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"
        return f"{rng.choice(_V4_PREFIXES)}{rng.randint(1, 254)}"


def make_content_id(content_type: str, tenant_id: str, created: dt.datetime, rng: random.Random) -> str:
    """An opaque id shaped like the documented ones, ``$``-separated.

    Two shapes appear in the docs: [TRB] ``20171014180051748005825$20171014180051748005825$audit_sharepoint$
    Audit_SharePoint`` and [REF] ``492638008028$492638008028$f28ab…spo2015043022$4a81…833b$04``.
    """
    stamp = created.strftime("%Y%m%d%H%M%S") + f"{created.microsecond // 1000:03d}"
    if rng.random() < 0.5:
        serial = f"{stamp}{rng.randint(0, 999_999):06d}"
        return f"{serial}${serial}${content_type.lower().replace('.', '_')}${content_type.replace('.', '_')}"
    serial = f"{rng.randint(10**11, 10**12 - 1)}"
    workload = {"Audit.SharePoint": "spo", "Audit.Exchange": "exo", "Audit.AzureActiveDirectory": "aad"}
    tag = workload.get(content_type, "gen" if content_type == "Audit.General" else "dlp")
    return (
        f"{serial}${serial}${tenant_id.replace('-', '')}{tag}{created:%Y%m%d%H}"
        f"${rng.getrandbits(128):032x}${rng.randint(0, 99):02d}"
    )
