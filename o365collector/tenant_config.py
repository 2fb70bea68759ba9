"""One tenant to collect from and its credential, as settings describe them: the values and their parsers.

``TenantConfig`` and the credential configs are what ``config.Settings`` holds and what the tenant
registry (``tenants``: ``O365_TENANTS`` entries and the table) produces; both build on this module,
which imports neither. ``tenant_from_env`` reads the single tenant of the ``O365_*`` settings.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
from dataclasses import dataclass, replace
from urllib.parse import urlparse

from .envparse import (
    Environ,
    Gatherer,
    Secret,
    get_choice,
    get_datetime,
    get_https_url,
    get_int,
    get_list,
    get_secret,
    get_str,
    parse_guid,
    require_str,
)
from .errors import ConfigError
from .models import CONTENT_TYPES
from .redaction import printable
from .sources.catalog import AUDIT, DEFAULT_SOURCES, SOURCES
from .sources.selection import sources_from_env


@dataclass(frozen=True, slots=True)
class Cloud:
    name: str
    api_url: str
    authority_host: str


# API host and login host per Microsoft 365 plan; the token scope is the API host + "/.default".
CLOUDS: dict[str, Cloud] = {
    "Enterprise": Cloud("Enterprise", "https://manage.office.com", "https://login.microsoftonline.com"),
    "GCC": Cloud("GCC", "https://manage-gcc.office.com", "https://login.microsoftonline.com"),
    "GCCHigh": Cloud("GCCHigh", "https://manage.office365.us", "https://login.microsoftonline.us"),
    "DoD": Cloud("DoD", "https://manage.protection.apps.mil", "https://login.microsoftonline.us"),
}

# Login hosts azure-identity knows; any other authority (a proxy, our simulator) needs instance
# discovery turned off, or MSAL asks login.microsoftonline.com to validate it.
KNOWN_AUTHORITY_HOSTS = frozenset(
    {"login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn", "login.windows.net"}
)


@dataclass(frozen=True, slots=True)
class ClientSecretCredentialConfig:
    """App registration with a client secret (the secret itself is a ``Secret``: never printed)."""

    client_id: str
    client_secret: Secret
    kind: str = "client_secret"


@dataclass(frozen=True, slots=True)
class CertificateCredentialConfig:
    """App registration with a certificate: a PEM file holding the private key and the certificate."""

    client_id: str
    certificate_path: str
    folder: str | None = None
    """The folder the file must stay inside (a registry's ``certificate:`` reference); None for the
    operator's own ``O365_CLIENT_CERTIFICATE_PATH``. Checked again when the file is read (symlinks)."""
    kind: str = "certificate"


@dataclass(frozen=True, slots=True)
class KeyVaultCertificateConfig:
    """App registration with a certificate kept in Key Vault, read through the managed identity
    (``keyvault_certificates``): no file to ship, and a renewed version is picked up without a restart."""

    client_id: str
    vault_uri: str
    certificate_name: str
    refresh: dt.timedelta
    setting: str = "O365_CERTIFICATE_NAME"
    """Where the name came from (a registry entry's ``credential``), so messages send the admin there."""
    identity_client_id: str | None = None
    """AZURE_CLIENT_ID: the user-assigned managed identity that reads the vault (None: the system one)."""
    kind: str = "keyvault_certificate"


@dataclass(frozen=True, slots=True)
class ManagedIdentityCredentialConfig:
    """The function app's managed identity signs in itself (its own tenant only): no secret anywhere."""

    identity_client_id: str | None
    """``AZURE_CLIENT_ID``: the user-assigned identity's client id; None: the system-assigned identity."""
    kind: str = "managed_identity"

    @property
    def client_id(self) -> str:
        return self.identity_client_id or ""


@dataclass(frozen=True, slots=True)
class FederatedCredentialConfig:
    """A multi-tenant app trusting the managed identity through a federated identity credential: the
    identity's token for ``token_exchange_audience`` is the app's client assertion. No secret anywhere."""

    client_id: str
    identity_client_id: str | None
    token_exchange_audience: str
    kind: str = "federated"


CredentialConfig = (
    ClientSecretCredentialConfig
    | CertificateCredentialConfig
    | KeyVaultCertificateConfig
    | ManagedIdentityCredentialConfig
    | FederatedCredentialConfig
)


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """One Microsoft 365 tenant to collect from."""

    tenant_id: str
    credential: CredentialConfig
    cloud: str
    api_url: str
    authority_host: str
    publisher_id: str
    content_types: tuple[str, ...]
    start_time: dt.datetime | None
    enabled: bool = True
    sinks: tuple[str, ...] | None = None
    """Names of the configured sinks this tenant's records go to (None: all of them)."""
    name: str | None = None
    setting_names: tuple[tuple[str, str], ...] = ()
    """(single-tenant setting, where this tenant's value really lives) for a registry entry, e.g.
    ("O365_TENANT_ID", "O365_TENANTS[2].tenantId"): hints written for the single-tenant settings are
    renamed with it, so an admin is sent to the entry and not to settings that play no part."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    """Which sources of ``sources.catalog`` are collected (O365_SOURCES, an entry's ``sources``)."""

    @property
    def streams(self) -> tuple[str, ...]:
        """Every stream collected: the audit feed's content types (when it is a source), then each Graph log's."""
        streams: list[str] = []
        for name in self.sources:
            spec = SOURCES[name]
            streams.extend(self.content_types if name == AUDIT else spec.streams)
        return tuple(streams)

    def only_streams(self, streams: tuple[str, ...]) -> TenantConfig:
        """This tenant restricted to those of its streams in ``streams`` (a list message's leased share)."""
        kept = set(streams)
        return replace(
            self,
            content_types=tuple(c for c in self.content_types if c in kept),
            sources=tuple(
                name for name in self.sources if name == AUDIT or any(s in kept for s in SOURCES[name].streams)
            ),
        )

    def in_own_terms(self, text: str) -> str:
        """``text`` with the single-tenant setting names it mentions replaced by this tenant's own."""
        for setting, own in self.setting_names:
            text = text.replace(setting, own)
        return text

    @property
    def token_scope(self) -> str:
        # The token audience is the API host of the cloud, not an override pointing at a proxy.
        return CLOUDS[self.cloud].api_url + "/.default"

    @property
    def api_host(self) -> str:
        return urlparse(self.api_url).netloc

    @property
    def authority_is_microsoft(self) -> bool:
        return (urlparse(self.authority_host).hostname or "") in KNOWN_AUTHORITY_HOSTS


# A start time this far ahead of the clock is taken as clock skew between machines, not a mistake.
START_TIME_SKEW = dt.timedelta(minutes=5)
# Per-tenant secrets named by a registry's ``setting:`` reference must be app settings of this form
# (O365_SECRET_<NAME>), so a registry row can never make the collector send another app setting
# (AzureWebJobsStorage, a sink's key) to a login host as a client secret.
SECRET_SETTING_NAME = re.compile(r"O365_SECRET_[A-Za-z0-9_]{1,100}")
SECRET_SETTING_FORM = "O365_SECRET_<NAME>"  # noqa: S105 (how the name is written in messages, not a password)
# Where a registry's ``certificate:`` files must live (O365_CERTIFICATE_DIR); a root-owned folder
# on a VM or container. On Azure, point it at a mounted share.
DEFAULT_CERTIFICATE_DIR = "/etc/o365collector/certificates"
# A PEM with a private key and a certificate chain is a few KiB; a bigger file is not a certificate.
MAX_CERTIFICATE_BYTES = 64 * 1024
# Key Vault object names: 1-127 letters, digits and dashes.
KEY_VAULT_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
# How often a Key Vault certificate is looked up for a renewed version: hourly is far inside any
# renewal window (Key Vault renews days ahead of expiry) and costs one read per hour per certificate.
DEFAULT_CERTIFICATE_REFRESH_MINUTES = 60


def tenant_from_env(env: Environ, *, now: dt.datetime | None = None) -> TenantConfig:
    """The single tenant of the ``O365_*`` settings (every field checked, all errors raised together)."""
    g = Gatherer()
    tenant_id = g.read(
        lambda: parse_guid("O365_TENANT_ID", require_str(env, "O365_TENANT_ID", "the Microsoft 365 tenant GUID")), ""
    )
    mode = g.read(lambda: auth_mode_from_env(env), None)
    client_id = g.read(
        lambda: parse_guid(
            "O365_CLIENT_ID", require_str(env, "O365_CLIENT_ID", "the application (client) id of the app registration")
        ),
        "",
    ) if mode != MANAGED_IDENTITY else ""  # the identity signs in as itself: no app registration
    certificate = get_str(env, "O365_CLIENT_CERTIFICATE_PATH")
    known = len(g.errors)
    secret = g.read(lambda: get_secret(env, "O365_CLIENT_SECRET"), None)  # e.g. an unresolved Key Vault reference
    credential: CredentialConfig
    if mode in SECRETLESS_MODES:
        credential = g.read(
            lambda: secretless_credential_from_env(env, mode or "", client_id), None
        ) or ManagedIdentityCredentialConfig(None)  # the placeholder never escapes: the error is raised below
    elif certificate is not None:
        credential = CertificateCredentialConfig(client_id, certificate)
    elif get_str(env, "O365_CERTIFICATE_NAME") is not None:
        # The placeholder never escapes: a bad Key Vault setting is noted and raised with the others.
        credential = g.read(lambda: keyvault_certificate_from_env(env, client_id), None) or CertificateCredentialConfig(
            client_id, ""
        )
    else:
        if mode == "certificate":  # a secret, even if set, is not what the admin asked for
            g.errors.append(
                ConfigError(
                    "O365_CLIENT_CERTIFICATE_PATH",
                    "is required when O365_AUTH_MODE is certificate (the PEM file with the private key and the "
                    "certificate), or set O365_CERTIFICATE_NAME and O365_CERTIFICATE_KEY_VAULT_URI for a certificate "
                    "in Key Vault",
                )
            )
        elif secret is None and len(g.errors) == known:  # set but unusable is already reported
            g.errors.append(
                ConfigError(
                    "O365_CLIENT_SECRET",
                    "is required but not set (the app registration's client secret, "
                    "or set O365_CLIENT_CERTIFICATE_PATH for a certificate credential)",
                )
            )
        credential = ClientSecretCredentialConfig(client_id=client_id, client_secret=secret or Secret(""))
    cloud = g.read(lambda: get_choice(env, "O365_CLOUD", "Enterprise", tuple(CLOUDS)), "Enterprise")
    publisher = get_str(env, "O365_PUBLISHER_ID")
    tenant = TenantConfig(
        tenant_id=tenant_id,
        credential=credential,
        cloud=cloud,
        api_url=g.read(lambda: api_url_from_env(env, "O365_API_URL"), None) or CLOUDS[cloud].api_url,
        authority_host=g.read(lambda: api_url_from_env(env, "O365_AUTHORITY_HOST"), None)
        or CLOUDS[cloud].authority_host,
        publisher_id=g.read(lambda: parse_guid("O365_PUBLISHER_ID", publisher), "") if publisher else tenant_id,
        content_types=g.read(lambda: content_types_from_env(env), CONTENT_TYPES),
        start_time=g.read(lambda: start_time_from_env(env, "O365_START_TIME", now), None),
        sources=g.read(lambda: sources_from_env(env, cloud=cloud), DEFAULT_SOURCES),
    )
    g.raise_if_any()
    return tenant


def start_time_from_env(env: Environ, name: str, now: dt.datetime | None) -> dt.datetime | None:
    """A start of collection, refused when it lies in the future (``now`` None: not checked).

    A future start lists nothing until then, while every run reports success: a typo (2027 for 2026)
    would go unnoticed for months.
    """
    value = get_datetime(env, name)
    if value is not None and now is not None and value > now + START_TIME_SKEW:
        raise ConfigError(
            name,
            f"{value.isoformat().replace('+00:00', 'Z')} is in the future (now "
            f"{now.astimezone(dt.UTC).isoformat(timespec='seconds').replace('+00:00', 'Z')}): nothing would be "
            "collected until then; give a past time, or leave it unset to start as far back as the API allows",
        )
    return value


def api_url_from_env(env: Environ, name: str) -> str | None:
    """``get_https_url`` plus a port check: ``https://host:99999`` would only fail at the first request."""
    url = get_https_url(env, name)
    if url is not None:
        try:
            port = urlparse(url).port
        except ValueError:  # not a number, or beyond 65535
            port = 0
        if port == 0:
            raise ConfigError(name, "has an invalid port (expected https://host[:port] with a port of 1-65535)")
    return url


MANAGED_IDENTITY, FEDERATED = "managedIdentity", "federated"
AUTH_MODES = ("clientSecret", "certificate", MANAGED_IDENTITY, FEDERATED)
SECRETLESS_MODES = (MANAGED_IDENTITY, FEDERATED)
# The audience of the managed identity's token presented as a federated assertion: Entra's token exchange
# app per cloud (Microsoft 365 GCC signs in to the commercial cloud; GCC High and DoD to Azure Government).
TOKEN_EXCHANGE_AUDIENCES = {
    "Enterprise": "api://AzureADTokenExchange",
    "GCC": "api://AzureADTokenExchange",
    "GCCHigh": "api://AzureADTokenExchangeUSGov",
    "DoD": "api://AzureADTokenExchangeUSGov",
}


def auth_mode_from_env(env: Environ) -> str | None:
    """``O365_AUTH_MODE``; None (unset) keeps the inference: a certificate when one is set, else a secret."""
    text = get_str(env, "O365_AUTH_MODE")
    return get_choice(env, "O365_AUTH_MODE", "", AUTH_MODES) if text is not None else None


def secretless_credential_from_env(
    env: Environ, mode: str, client_id: str, cloud: str | None = None
) -> ManagedIdentityCredentialConfig | FederatedCredentialConfig:
    """The ``managedIdentity`` or ``federated`` credential; ``client_id`` is the multi-tenant app (federated)."""
    identity = get_str(env, "AZURE_CLIENT_ID")
    identity_id = parse_guid("AZURE_CLIENT_ID", identity) if identity else None
    if mode == MANAGED_IDENTITY:
        return ManagedIdentityCredentialConfig(identity_id)
    if cloud is None:
        cloud = next((c for c in CLOUDS if c.lower() == (get_str(env, "O365_CLOUD") or "").lower()), "Enterprise")
    audience = get_str(env, "O365_TOKEN_EXCHANGE_AUDIENCE") or TOKEN_EXCHANGE_AUDIENCES[cloud]
    if not re.fullmatch(r"api://[\w.\-/]{1,200}", audience):
        raise ConfigError(
            "O365_TOKEN_EXCHANGE_AUDIENCE",
            f"{printable(audience[:100])!r} is not a token exchange audience (e.g. api://AzureADTokenExchange): "
            "use the audience of the app's federated identity credential, or leave it empty",
        )
    return FederatedCredentialConfig(client_id, identity_id, audience)


def keyvault_certificate_from_env(
    env: Environ, client_id: str, name: str | None = None, *, setting: str = "O365_CERTIFICATE_NAME"
) -> KeyVaultCertificateConfig:
    """The certificate ``name`` (else ``O365_CERTIFICATE_NAME``) in ``O365_CERTIFICATE_KEY_VAULT_URI``."""
    vault = get_https_url(env, "O365_CERTIFICATE_KEY_VAULT_URI")
    if vault is None:
        raise ConfigError(
            "O365_CERTIFICATE_KEY_VAULT_URI",
            f"is required for the Key Vault certificate of {setting} (the vault's URI, https://<vault>.vault.azure.net/)",
        )
    name = name if name is not None else get_str(env, "O365_CERTIFICATE_NAME", "")
    if not name or not KEY_VAULT_NAME.fullmatch(name):
        raise ConfigError(
            setting, f"{printable((name or '')[:130])!r} is not a Key Vault certificate name (1-127 letters, digits, -)"
        )
    minutes = get_int(
        env, "O365_CERTIFICATE_REFRESH_MINUTES", DEFAULT_CERTIFICATE_REFRESH_MINUTES, minimum=1, maximum=24 * 60
    )
    identity = get_str(env, "AZURE_CLIENT_ID")
    return KeyVaultCertificateConfig(client_id, vault + "/", name, dt.timedelta(minutes=minutes), setting, identity)


def certificate_dir_from_env(env: Environ) -> str:
    """``O365_CERTIFICATE_DIR``: the only folder a registry's ``certificate:`` reference may read from."""
    folder = get_str(env, "O365_CERTIFICATE_DIR", DEFAULT_CERTIFICATE_DIR) or DEFAULT_CERTIFICATE_DIR
    if not posixpath.isabs(folder):
        raise ConfigError("O365_CERTIFICATE_DIR", f"{folder!r} must be an absolute path")
    return posixpath.normpath(folder)


def content_types_from_env(env: Environ, name: str = "O365_CONTENT_TYPES") -> tuple[str, ...]:
    listed = get_list(env, name)
    if not listed:
        return CONTENT_TYPES
    canonical = {ct.lower(): ct for ct in CONTENT_TYPES}
    chosen: list[str] = []
    for item in listed:
        found = canonical.get(item.lower())
        if found is None:
            raise ConfigError(name, f"unknown content type {item!r} (expected one of {', '.join(CONTENT_TYPES)})")
        if found not in chosen:
            chosen.append(found)
    return tuple(chosen)
