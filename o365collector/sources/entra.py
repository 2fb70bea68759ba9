"""Entra ID sign-ins and directory audits through Microsoft Graph: how each log is read.

- Sign-ins: ``GET /v1.0/auditLogs/signIns``, ``$filter`` on ``createdDateTime`` (eq/ge/le), pages of 1,000 (the
  default and the maximum, newest first), 30 days kept; application permission ``AuditLog.Read.All`` and
  an Entra ID P1/P2 licence (else 403 ``Authentication_RequestFromNonPremiumTenantOrB2CTenant``).
  (https://learn.microsoft.com/graph/api/signin-list)
- Directory audits: ``GET /v1.0/auditLogs/directoryAudits``, ``$filter`` on ``activityDateTime`` (eq/ge/le), 30 days,
  ``AuditLog.Read.All``, no premium licence needed. (https://learn.microsoft.com/graph/api/directoryaudit-list)

A record's ``id`` is its stable identity (the overlap's dedupe key). Reading, paging and the overlap
are ``sources.graph_source``'s, shared with message trace.
"""

from __future__ import annotations

from .catalog import DIRECTORY_AUDITS, DIRECTORY_AUDITS_STREAM, SIGNINS, SIGNINS_STREAM
from .graph_units import GraphStream

SIGN_INS = GraphStream(SIGNINS_STREAM, SIGNINS, "auditLogs/signIns", "createdDateTime")
DIRECTORY_AUDIT_LOG = GraphStream(
    DIRECTORY_AUDITS_STREAM, DIRECTORY_AUDITS, "auditLogs/directoryAudits", "activityDateTime"
)
