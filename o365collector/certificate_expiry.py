"""Certificate expiry, ahead of time: ``check``, ``status`` and the health endpoint warn before sign-in stops.

A certificate's end date is in the certificate itself: read from the PEM file, or from the current
version of the Key Vault certificate (one read per distinct certificate). Within the health policy's
warning (``O365_HEALTH_SECRET_EXPIRY_DAYS``, shared with the client secret's expiry) the collector is
degraded; from the end date it is unhealthy. Reading is advisory: a certificate that cannot be read
here is left to the sign-in, whose own error says what to fix.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Protocol

from cryptography import x509

from .auth import build_credential, read_certificate
from .config import HealthPolicy
from .keyvault_certificates import KeyVaultCertificateCredential
from .redaction import summary
from .secret_expiry import ending_verdict
from .tenant_config import CertificateCredentialConfig, KeyVaultCertificateConfig, TenantConfig

log = logging.getLogger(__name__)


class _Report(Protocol):
    checked_at: dt.datetime
    policy: HealthPolicy
    general_problems: list[str]
    general_degraded: list[str]


def renew_advice(tenant: TenantConfig) -> str:
    if isinstance(tenant.credential, KeyVaultCertificateConfig):
        return (
            "renew it in Key Vault (or import a new version; the collector picks it up without a restart) and upload "
            "the new certificate's public part to the app registration"
        )
    return "upload a new certificate to the app registration, then replace the file"


def certificate_expiries(tenants: Sequence[TenantConfig]) -> list[tuple[TenantConfig, str, dt.datetime]]:
    """``(tenant, which certificate, its end)`` for each distinct certificate the tenants sign in with."""
    seen: set[tuple[str, ...]] = set()
    found: list[tuple[TenantConfig, str, dt.datetime]] = []
    for tenant in tenants:
        cred = tenant.credential
        try:
            if isinstance(cred, CertificateCredentialConfig):
                key: tuple[str, ...] = ("file", cred.certificate_path)
                if key in seen:
                    continue
                seen.add(key)
                pem = read_certificate(cred, tenant_id=tenant.tenant_id)
                ends = min(c.not_valid_after_utc for c in x509.load_pem_x509_certificates(pem))
                found.append((tenant, f"certificate {cred.certificate_path!r}", ends))
            elif isinstance(cred, KeyVaultCertificateConfig):
                key = ("vault", cred.vault_uri, cred.certificate_name.lower())
                if key in seen:
                    continue
                seen.add(key)
                credential = KeyVaultCertificateCredential(tenant, cred)
                try:
                    loaded = credential.load()
                finally:
                    credential.close()
                found.append((tenant, f"{credential.where} (version {loaded.version})", loaded.not_after))
        except Exception as err:  # advisory: the sign-in reports what is wrong with it
            log.warning("could not read the certificate's expiry: %s", summary(str(err)))
    return found


def expiry_verdict(
    which: str, ends: dt.datetime, advice: str, warning: dt.timedelta, now: dt.datetime
) -> tuple[bool, str] | None:
    """``(expired, message)``: expired makes the collector unhealthy, otherwise degraded; None when all is well."""
    return ending_verdict(which, f"{ends:%Y-%m-%d %H:%MZ}", ends - now, advice, warning)


def report_certificate_expiry(report: _Report, tenants: Sequence[TenantConfig]) -> None:
    """Add each certificate near or past its end to the report's problems (expired) or degraded list."""
    for tenant, which, ends in certificate_expiries(tenants):
        warning = report.policy.secret_expiry_warning
        verdict = expiry_verdict(which, ends, renew_advice(tenant), warning, report.checked_at)
        if verdict is not None:
            (report.general_problems if verdict[0] else report.general_degraded).append(verdict[1])


def check_keyvault_certificate(
    tenant: TenantConfig, cred: KeyVaultCertificateConfig, now: dt.datetime, warning: dt.timedelta
) -> tuple[str, str, KeyVaultCertificateCredential | None]:
    """``check``'s certificate step for a Key Vault certificate: ``("OK" | "WARN" | "FAIL", detail, credential)``;
    the credential, its version loaded, then signs the step's token request."""
    credential = build_credential(tenant)  # the sign-in's own options (authority, instance discovery)
    assert isinstance(credential, KeyVaultCertificateCredential)
    try:
        loaded = credential.load()
    except Exception as err:
        credential.close()
        return "FAIL", summary(str(err)), None
    which = f"{credential.where} (version {loaded.version})"
    verdict = expiry_verdict(which, loaded.not_after, renew_advice(tenant), warning, now)
    if verdict is not None:
        return ("FAIL" if verdict[0] else "WARN"), verdict[1], credential
    detail = f"{which}: thumbprint {loaded.thumbprint}, expires {loaded.not_after:%Y-%m-%d %H:%MZ}"
    return "OK", detail, credential
