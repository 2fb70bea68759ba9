"""Certificate client assertions at the token endpoint, checked the way Entra checks them.

An app whose credential is a certificate sends ``client_assertion_type=…jwt-bearer`` and a JWT it
signed with the certificate's private key. Entra finds the registered key by the thumbprint in the
JWT header (``x5t``: SHA-1, or ``x5t#S256``), checks the signature with its public key, the key's
validity dates, ``iss`` = ``sub`` = the client id, ``aud`` = the token endpoint, and ``exp``/``nbf``.
The refusals carry Entra's codes: AADSTS700027 (key not found, key expired, bad signature),
AADSTS700024 (assertion outside its time range), AADSTS700023 (wrong audience), AADSTS700021/700022
(issuer/subject). Federated assertions (no certificate thumbprint) are another module's business.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .times import Clock

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Entra accepts assertions signed a few minutes either side of its clock.
_LEEWAY = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the token endpoint refuses an assertion: its HTTP status, OAuth error, AADSTS code and text."""

    status: int
    error: str
    code: int
    message: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprints(certificate: x509.Certificate) -> tuple[str, str]:
    """The certificate's SHA-1 and SHA-256 thumbprints, base64url as in a JWT's ``x5t``/``x5t#S256``."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return _b64url(hashlib.sha1(der).digest()), _b64url(hashlib.sha256(der).digest())  # noqa: S324 - Entra's x5t


def is_certificate_assertion(form: dict[str, str]) -> bool:
    """A jwt-bearer assertion whose header names a certificate thumbprint (not a federated token)."""
    assertion = form.get("client_assertion", "")
    if form.get("client_assertion_type") != JWT_BEARER or not assertion:
        return False
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        return True  # malformed: refused here, as Entra would
    return "x5t" in header or "x5t#S256" in header


class CertificateAssertions:
    """The certificates registered with each tenant's app, and the check of an assertion against them."""

    def __init__(self, clock: Clock, base_url: Callable[[], str]) -> None:
        self._clock = clock
        self._base_url = base_url
        self._lock = threading.Lock()
        self._registered: dict[str, list[x509.Certificate]] = {}
        self.accepted = 0
        self.refused: list[str] = []

    def register(self, tenant_id: str, certificate: x509.Certificate) -> None:
        """Upload ``certificate`` (its public part) to the tenant's app registration."""
        with self._lock:
            self._registered.setdefault(tenant_id.lower(), []).append(certificate)

    def check(self, tenant: str, client_id: str, form: dict[str, str]) -> Refusal | None:
        """None when the assertion proves the app holds a registered, current key; else Entra's refusal."""
        refusal = self._check(tenant, client_id, form)
        with self._lock:
            if refusal is None:
                self.accepted += 1
            else:
                self.refused.append(refusal.message)
        return refusal

    def _check(self, tenant: str, client_id: str, form: dict[str, str]) -> Refusal | None:
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError:
            return Refusal(401, "invalid_client", 50027, "Invalid JWT token. The token is malformed.")
        named = {str(header.get(field, "")).rstrip("=") for field in ("x5t", "x5t#S256")} - {""}
        with self._lock:
            candidates = list(self._registered.get(tenant.lower(), ()))
        certificate = next((c for c in candidates if named & set(thumbprints(c))), None)
        shown = ", ".join(sorted(named))
        if certificate is None:
            return self._invalid_signature(
                f"The key was not found., Thumbprint of key used by client: '{shown}', Please visit the Azure "
                f"Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'"
            )
        now = self._clock()
        found = (
            f"Found key 'Start={certificate.not_valid_before_utc:%m/%d/%Y %H:%M:%S}, "
            f"End={certificate.not_valid_after_utc:%m/%d/%Y %H:%M:%S}'"
        )
        if now >= certificate.not_valid_after_utc:
            return self._invalid_signature(
                f"The key used is expired., Thumbprint of key used by client: '{shown}', {found}"
            )
        token_url = f"{self._base_url()}/{tenant}/oauth2/v2.0/token"
        try:
            claims = jwt.decode(
                assertion,
                certificate.public_key(),  # type: ignore[arg-type]
                algorithms=["PS256", "RS256"],
                options={"require": ["exp", "aud", "iss", "sub"], "verify_aud": False, "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            return self._invalid_signature(
                "The provided signature value did not match the expected signature value., Thumbprint of key used "
                f"by client: '{shown}', {found}"
            )
        if claims.get("aud") != token_url:
            message = f"Client assertion audience claim does not match Realm issuer. Review the documentation at {_DOC}"
            return Refusal(401, "invalid_client", 700023, message)
        if claims.get("iss") != client_id:
            return Refusal(401, "invalid_client", 700021, f"Client assertion application identifier doesn't match "
                           f"'client_id' parameter. Review the documentation at {_DOC}.")  # fmt: skip
        if claims.get("sub") != client_id:
            return Refusal(401, "invalid_client", 700022, "The client assertion subject does not match the client id.")
        expires = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
        not_before = dt.datetime.fromtimestamp(int(claims.get("nbf", 0)), dt.UTC)
        if not now - _LEEWAY <= expires or now + _LEEWAY < not_before:
            message = (
                f"Client assertion is not within its valid time range. Current time: {now:%Y-%m-%dT%H:%M:%SZ}, "
                f"assertion valid from {not_before:%Y-%m-%dT%H:%M:%SZ}, expiry time of assertion "
                f"{expires:%Y-%m-%dT%H:%M:%SZ}. Review the documentation at {_DOC}."
            )
            return Refusal(401, "invalid_client", 700024, message)
        return None

    @staticmethod
    def _invalid_signature(reason: str) -> Refusal:
        message = f"Client assertion contains an invalid signature. [Reason - {reason}]."
        return Refusal(401, "invalid_client", 700027, message)


_DOC = "https://learn.microsoft.com/entra/identity-platform/certificate-credentials"
