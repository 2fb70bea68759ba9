"""The app's certificate read from Key Vault through the managed identity, cached and renewed in place.

On Flex Consumption there is no file to mount, so a certificate credential reads its private key and
certificate from the Key Vault certificate's secret (``SecretClient.get_secret``: base64 PKCS#12 or
PEM text, by ``content_type``). The loaded version is cached; every ``refresh`` (O365_CERTIFICATE_
REFRESH_MINUTES) the latest version is looked up again, and when it changed (Key Vault renewed the
certificate, or an admin imported a new one) a new azure-identity ``CertificateCredential`` replaces
the old one: no restart. A failed look-up keeps the version in hand, which still signs.

Errors say what the admin must do: 403 names the role "Key Vault Secrets User"; an unknown name, an
unreadable secret and an expired certificate each say which setting or certificate to fix.
The vault is read as the app's managed identity (``managed_identity``); tests meet the simulator's identity
endpoint and Key Vault stand-in through the same azure-identity path.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import requests
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import CertificateCredential, ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from .errors import ApiPermanentError, ApiTransientError
from .redaction import redact
from .tenant_config import KeyVaultCertificateConfig, TenantConfig

logger = logging.getLogger(__name__)

SECRETS_USER_ROLE = "Key Vault Secrets User"
# After a failed look-up, or while the certificate in hand has expired, look again this soon.
RETRY_AFTER = dt.timedelta(minutes=1)
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def managed_identity(config: KeyVaultCertificateConfig) -> TokenCredential:
    """The app's managed identity: the user-assigned one named by AZURE_CLIENT_ID, else the system one."""
    return ManagedIdentityCredential(client_id=config.identity_client_id)


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """One version of the certificate, turned into the PEM azure-identity signs with."""

    version: str
    pem: bytes
    not_after: dt.datetime
    thumbprint: str  # SHA-1, hex, as the app registration shows it


def load_secret(value: str, content_type: str | None, *, where: str) -> tuple[bytes, x509.Certificate]:
    """PEM (private key, then the certificate matching it, then the chain) from a certificate's secret value."""
    try:
        if content_type == "application/x-pkcs12" or (content_type is None and not value.lstrip().startswith("-")):
            key, leaf, chain = pkcs12.load_key_and_certificates(base64.b64decode(value), None)
            certificates = [c for c in (leaf, *chain) if c is not None]
        else:
            data = value.encode()
            key = serialization.load_pem_private_key(data, None)
            certificates = x509.load_pem_x509_certificates(data)
    except (ValueError, TypeError) as err:
        raise ApiPermanentError(
            f"{where}: its secret is neither PKCS#12 nor PEM with an unencrypted private key ({type(err).__name__}): "
            "create or import it as a Key Vault certificate (content type PKCS#12 or PEM)"
        ) from None
    if key is None:
        raise ApiPermanentError(f"{where}: its secret holds no private key: import the certificate with its key")
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    matching = [
        c
        for c in certificates
        if c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        == public
    ]
    if not matching:
        raise ApiPermanentError(f"{where}: no certificate in its secret matches its private key")
    leaf = matching[0]
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ordered = [leaf, *(c for c in certificates if c is not leaf)]
    return private + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ordered), leaf


class KeyVaultCertificateCredential:
    """A ``TokenCredential`` signing in with the newest version of a Key Vault certificate."""

    def __init__(
        self,
        tenant: TenantConfig,
        config: KeyVaultCertificateConfig,
        *,
        options: dict[str, Any] | None = None,
        vault_credential: TokenCredential | None = None,
        session: requests.Session | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._tenant = tenant
        self._config = config
        self._options = dict(options or {})
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        client_options: dict[str, Any] = {
            # The SDK checks that the challenge's resource is the vault's domain; a loopback stand-in has none.
            "verify_challenge_resource": urlparse(config.vault_uri).hostname not in _LOOPBACK,
        }
        if session is not None:
            client_options["transport"] = RequestsTransport(session=session, session_owner=False)
        self._client = SecretClient(
            config.vault_uri, vault_credential or managed_identity(config), **client_options
        )
        self._lock = threading.Lock()
        self._loaded: LoadedCertificate | None = None
        self._credential: CertificateCredential | None = None
        self._next_check = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.lookups = 0

    @property
    def where(self) -> str:
        return (
            f"{self._config.setting}: certificate {self._config.certificate_name!r} in Key Vault "
            f"{self._config.vault_uri}"
        )

    @property
    def certificate(self) -> LoadedCertificate | None:
        """The version in use (None before the first sign-in); its ``not_after`` feeds expiry warnings."""
        return self._loaded

    def load(self) -> LoadedCertificate:
        """The current version, looked up when due (``check``, status and health read its expiry)."""
        with self._lock:
            now = self._clock()
            if self._credential is None or now >= self._next_check:
                self._refresh(now)
            assert self._loaded is not None  # _refresh raised otherwise
            return self._loaded

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        credential = self._current()
        return credential.get_token(*scopes, **kwargs)

    def close(self) -> None:
        self._client.close()

    # -- the cached version -----------------------------------------------------------------------

    def _current(self) -> CertificateCredential:
        with self._lock:
            now = self._clock()
            if self._credential is None or now >= self._next_check:
                self._refresh(now)
            loaded, credential = self._loaded, self._credential
        assert loaded is not None  # _refresh raised otherwise
        assert credential is not None
        if now >= loaded.not_after:
            raise ApiPermanentError(
                f"{self.where} (version {loaded.version}) expired on {loaded.not_after:%Y-%m-%d %H:%MZ}: renew it in "
                f"Key Vault (or import a new version), upload the new certificate's public part to the app "
                f"registration {self._config.client_id}; the collector picks up the new version within a minute",
                code="CertificateExpired",
            )
        return credential

    def _refresh(self, now: dt.datetime) -> None:
        self.lookups += 1
        try:
            secret = self._client.get_secret(self._config.certificate_name)
            version = secret.properties.version or ""
            if self._loaded is None or version != self._loaded.version:
                pem, leaf = load_secret(secret.value or "", secret.properties.content_type, where=self.where)
                thumbprint = leaf.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - what Entra shows
                self._loaded = LoadedCertificate(version, pem, leaf.not_valid_after_utc, thumbprint)
                self._credential = CertificateCredential(
                    self._tenant.tenant_id, self._config.client_id, certificate_data=pem, **self._options
                )
                logger.info(
                    "loaded certificate %s version %s from Key Vault (thumbprint %s, expires %s)",
                    self._config.certificate_name, version, thumbprint, f"{leaf.not_valid_after_utc:%Y-%m-%d}",
                    extra={"tenant_id": self._tenant.tenant_id},
                )  # fmt: skip
        except Exception as err:
            problem = self._explain(err)
            if self._credential is None:
                raise problem from err
            # The version in hand still signs: keep it and look again soon.
            logger.warning("%s; keeping version %s", problem, self._loaded.version if self._loaded else "?")
            self._next_check = now + RETRY_AFTER
            return
        expired = self._loaded is not None and now >= self._loaded.not_after
        self._next_check = now + (RETRY_AFTER if expired else self._config.refresh)

    def _explain(self, err: Exception) -> ApiPermanentError | ApiTransientError:
        if isinstance(err, ApiPermanentError | ApiTransientError):
            return err
        where = self.where
        if isinstance(err, ResourceNotFoundError):
            return ApiPermanentError(
                f"{where} does not exist: create or import it there, or correct the name", status=404
            )
        if isinstance(err, ClientAuthenticationError):
            # The managed identity could not get a token for the vault (no identity, wrong AZURE_CLIENT_ID).
            first = redact(str(err.message or err)).splitlines()
            return ApiTransientError(
                f"{where}: the managed identity could not sign in to Key Vault "
                f"({first[0][:200] if first else type(err).__name__}): assign the user-assigned identity to the "
                "function app and set AZURE_CLIENT_ID to its client id"
            )
        if isinstance(err, HttpResponseError) and err.status_code == 403:
            return ApiPermanentError(
                f"{where}: the managed identity may not read it (403 Forbidden): assign it the role "
                f"'{SECRETS_USER_ROLE}' on the vault (or on this certificate), then allow a few minutes",
                status=403,
                code="ForbiddenByRbac",
            )
        if isinstance(err, HttpResponseError | ServiceRequestError):
            status = getattr(err, "status_code", None)
            return ApiTransientError(f"{where}: Key Vault did not answer ({status or type(err).__name__})")
        return ApiTransientError(f"{where}: {type(err).__name__}")


def build_keyvault_credential(
    tenant: TenantConfig,
    config: KeyVaultCertificateConfig,
    options: dict[str, Any],
    *,
    session: requests.Session | None = None,
) -> KeyVaultCertificateCredential:
    """The tenant's Key Vault certificate credential (auth.build_credential's branch)."""
    return KeyVaultCertificateCredential(tenant, config, options=options, session=session)


__all__ = [
    "SECRETS_USER_ROLE",
    "KeyVaultCertificateCredential",
    "LoadedCertificate",
    "build_keyvault_credential",
    "load_secret",
]
