"""The Azure Monitor Logs Ingestion sink: records into a Log Analytics (Microsoft Sentinel) table via a DCR.

A thin wrapper around ``azure-monitor-ingestion``'s ``LogsIngestionClient.upload``, which splits the
records into chunks of at most 1 MiB of JSON, gzips each and POSTs it to
``{SINK_LOGANALYTICS_ENDPOINT}/dataCollectionRules/{SINK_LOGANALYTICS_DCR_ID}/streams/{SINK_LOGANALYTICS_STREAM}``
(api-version 2023-01-01). azure-core's retry policy retries what the service marks retryable
(429 and 5xx with Retry-After, 500/503/504) inside ``upload``; this module does not retry again.

Each record is sent with its fields unchanged plus one column, ``AuditRecord``: the whole record again,
as one object. A DCR stream stores only the columns it declares; ``AuditRecord`` (a ``dynamic`` column
in ``infra/logs-ingestion.json``) keeps every field, including those a later API version adds. The table's
``TimeGenerated``, and the OfficeActivity names and types of its columns, come from the DCR's
transformation, not from the sink.

``SINK_LOGANALYTICS_STREAM`` names the audit feed's stream, as before. Records of the Microsoft Graph streams
go to fixed streams of the same DCR, each with a custom table of its own (the built-in SigninLogs and
AuditLogs tables cannot be written through the Logs Ingestion API): ``Custom-O365SignInLogs``,
``Custom-O365DirectoryAuditLogs`` and ``Custom-O365MessageTrace`` (``sources.catalog.LABELS``; declared,
with their tables and transformations, by ``infra/logs-ingestion.json``). They carry the whole record in
``AuditRecord`` too.

Authentication (one of, checked at start-up):

* ``SINK_LOGANALYTICS_TENANT_ID`` + ``SINK_LOGANALYTICS_APP_CLIENT_ID`` + ``SINK_LOGANALYTICS_CLIENT_SECRET``:
  an app registration's client secret, against ``SINK_LOGANALYTICS_AUTHORITY_HOST`` (instance
  discovery is turned off for a host that is not a Microsoft login host);
* ``SINK_LOGANALYTICS_CLIENT_ID``: a user-assigned managed identity;
* neither: ``DefaultAzureCredential`` (the system-assigned identity in Azure, a developer login locally).

The token is requested for ``{SINK_LOGANALYTICS_AUDIENCE}/.default`` (https://monitor.azure.com by
default; https://monitor.azure.us and https://monitor.azure.cn in the government and China clouds).

How failures are classified (after the SDK's own retries):

========================================  ==========================================================
401                                       ``SinkPermanentError``: the token was refused (audience, tenant)
403                                       ``SinkPermanentError``: the identity lacks *Monitoring Metrics
                                          Publisher* on the DCR
404                                       ``SinkPermanentError``: wrong DCR immutable id or stream name
413                                       ``SinkPermanentError`` naming the record too large for one call
other 4xx (400: records do not match)     ``SinkPermanentError`` with the service's code and message
408, 429, 5xx                             ``SinkTransientError`` (``retry_after`` from Retry-After)
connection refused/reset, DNS, timeout    ``SinkTransientError``
TLS certificate not trusted               ``SinkPermanentError``
sign-in refused (AADSTS...)               ``SinkPermanentError`` naming the setting to fix
no credential available                   ``SinkPermanentError``
other sign-in failures                    ``SinkTransientError``
========================================  ==========================================================

``upload`` stops at the first chunk that fails (its ``on_error`` callback raises), so a failure is never
dropped; chunks already accepted are sent again when the queue redelivers the blob: delivery is at
least once. Client secrets, tokens and record bodies never appear in logs or messages.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlparse

from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineResponse
from azure.core.rest import HttpRequest
from azure.identity import (
    AzureAuthorityHosts,
    ClientSecretCredential,
    CredentialUnavailableError,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)
from azure.monitor.ingestion import LogsIngestionClient, LogsUploadError

from .. import __version__
from ..envparse import Environ, Secret, get_float, get_int, get_secret, get_str, parse_guid, require_str
from ..errors import CollectorError, ConfigError, SinkPermanentError, SinkTransientError, error_chain, root_reason
from ..models import BlobContext, Record
from ..redaction import summary
from .streams import is_graph_stream, labels_for

log = logging.getLogger(__name__)

API_VERSION = "2023-01-01"  # the Logs Ingestion API version the SDK speaks (its default)

# Defaults (one place, with the reason for each).
# The stream infra/logs-ingestion.json declares in its DCR.
DEFAULT_STREAM = "Custom-O365AuditLogs"
# The column that carries the whole record (declared dynamic by infra/logs-ingestion.json's stream).
RECORD_COLUMN = "AuditRecord"
# The token audience of the Logs Ingestion API in the public cloud.
DEFAULT_AUDIENCE = "https://monitor.azure.com"
# azure-core retries 429/5xx inside each upload; 3 retries with its exponential backoff stay well
# inside the 10-minute function timeout (the queue's redelivery is the longer wait).
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BACKOFF_SECONDS = 0.8  # azure-core's own default factor
# Generous for a 1 MiB body over a slow link, yet several attempts fit in the function timeout.
DEFAULT_TIMEOUT_SECONDS = 30.0

# Login hosts azure-identity knows; any other authority (a proxy, a local stand-in) needs instance
# discovery turned off, or MSAL asks login.microsoftonline.com to vouch for it.
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        AzureAuthorityHosts.AZURE_PUBLIC_CLOUD,
        AzureAuthorityHosts.AZURE_GOVERNMENT,
        AzureAuthorityHosts.AZURE_CHINA,
        "login.windows.net",
    }
)

_DCR_ID = re.compile(r"^dcr-[0-9a-f]{32}$", re.IGNORECASE)
_STREAM = re.compile(r"^(Custom|Microsoft)-[A-Za-z0-9_-]{1,200}$")

# What the sign-in error codes mean for the operator of this sink.
_AADSTS_HINTS: dict[str, str] = {
    "AADSTS7000215": "the client secret is wrong: copy the secret's Value (not its ID) into "
    "SINK_LOGANALYTICS_CLIENT_SECRET",
    "AADSTS7000222": "the client secret has expired: create a new one and update SINK_LOGANALYTICS_CLIENT_SECRET",
    "AADSTS700016": "the app SINK_LOGANALYTICS_APP_CLIENT_ID is not found in tenant SINK_LOGANALYTICS_TENANT_ID",
    "AADSTS90002": "the tenant SINK_LOGANALYTICS_TENANT_ID does not exist (or SINK_LOGANALYTICS_AUTHORITY_HOST "
    "is another cloud's)",
    "AADSTS500011": "the audience SINK_LOGANALYTICS_AUDIENCE is not known in this tenant's cloud "
    "(https://monitor.azure.com, .us or .cn)",
    "AADSTS700213": "no federated credential matches: check SINK_LOGANALYTICS_CLIENT_ID",
}

_CREDENTIAL_SETTINGS = (
    "SINK_LOGANALYTICS_TENANT_ID",
    "SINK_LOGANALYTICS_APP_CLIENT_ID",
    "SINK_LOGANALYTICS_CLIENT_SECRET",
)


@dataclass(frozen=True, slots=True)
class ClientSecretAuth:
    """An app registration and its secret (never printed)."""

    tenant_id: str
    client_id: str
    client_secret: Secret = field(repr=False)
    authority_host: str | None = None


@dataclass(frozen=True, slots=True)
class LogAnalyticsSinkSettings:
    """``SINK_LOGANALYTICS_*``: where the records go and as whom."""

    name: ClassVar[str] = "loganalytics"

    endpoint: str
    dcr_id: str
    stream: str = DEFAULT_STREAM
    audience: str = DEFAULT_AUDIENCE
    managed_identity_client_id: str | None = None
    client_secret_auth: ClientSecretAuth | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_backoff_seconds: float = DEFAULT_RETRY_BACKOFF_SECONDS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, env: Environ) -> LogAnalyticsSinkSettings:
        auth = _client_secret_from_env(env)
        mi_client_id = get_str(env, "SINK_LOGANALYTICS_CLIENT_ID")
        if mi_client_id is not None and auth is not None:
            raise ConfigError(
                "SINK_LOGANALYTICS_CLIENT_ID",
                "is a managed identity's client id, but a client secret is configured too "
                "(SINK_LOGANALYTICS_APP_CLIENT_ID / SINK_LOGANALYTICS_CLIENT_SECRET): keep one of them",
            )
        return cls(
            endpoint=_parse_endpoint(env, "SINK_LOGANALYTICS_ENDPOINT"),
            dcr_id=_parse_dcr_id(env, "SINK_LOGANALYTICS_DCR_ID"),
            stream=_parse_stream(env, "SINK_LOGANALYTICS_STREAM"),
            audience=_parse_https(env, "SINK_LOGANALYTICS_AUDIENCE", None) or DEFAULT_AUDIENCE,
            managed_identity_client_id=(
                parse_guid("SINK_LOGANALYTICS_CLIENT_ID", mi_client_id) if mi_client_id is not None else None
            ),
            client_secret_auth=auth,
            max_retries=get_int(env, "SINK_LOGANALYTICS_MAX_RETRIES", DEFAULT_MAX_RETRIES, minimum=0, maximum=10),
            retry_backoff_seconds=get_float(
                env, "SINK_LOGANALYTICS_RETRY_BACKOFF_SECONDS", DEFAULT_RETRY_BACKOFF_SECONDS, maximum=60.0
            ),
            timeout_seconds=get_float(
                env, "SINK_LOGANALYTICS_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, minimum=1.0, maximum=600.0
            ),
        )

    @property
    def scope(self) -> str:
        return f"{self.audience}/.default"

    @property
    def upload_url(self) -> str:
        """The URL every upload goes to (no secrets in it: safe for messages)."""
        return f"{self.endpoint}/dataCollectionRules/{self.dcr_id}/streams/{self.stream}?api-version={API_VERSION}"

    def create(self) -> LogAnalyticsSink:
        return LogAnalyticsSink(self)


def _client_secret_from_env(env: Environ) -> ClientSecretAuth | None:
    tenant = get_str(env, "SINK_LOGANALYTICS_TENANT_ID")
    app = get_str(env, "SINK_LOGANALYTICS_APP_CLIENT_ID")
    secret = get_secret(env, "SINK_LOGANALYTICS_CLIENT_SECRET")
    authority = _parse_https(env, "SINK_LOGANALYTICS_AUTHORITY_HOST", None)
    given = dict(zip(_CREDENTIAL_SETTINGS, (tenant, app, secret), strict=True))
    if all(value is None for value in given.values()):
        if authority is not None:
            raise ConfigError(
                "SINK_LOGANALYTICS_AUTHORITY_HOST",
                "applies to the client-secret sign-in only: set SINK_LOGANALYTICS_TENANT_ID, "
                "SINK_LOGANALYTICS_APP_CLIENT_ID and SINK_LOGANALYTICS_CLIENT_SECRET too, or unset it",
            )
        return None
    if tenant is None or app is None or secret is None:
        missing = next(name for name, value in given.items() if value is None)
        present = ", ".join(name for name, value in given.items() if value is not None)
        raise ConfigError(missing, f"is required with {present}: set all three client-secret settings, or none of them")
    return ClientSecretAuth(
        tenant_id=parse_guid("SINK_LOGANALYTICS_TENANT_ID", tenant),
        client_id=parse_guid("SINK_LOGANALYTICS_APP_CLIENT_ID", app),
        client_secret=secret,
        authority_host=authority,
    )


def _parse_https(env: Environ, name: str, default: str | None) -> str | None:
    text = get_str(env, name)
    if text is None:
        return default
    parsed = urlparse(text)
    if parsed.scheme != "https" or not parsed.hostname:
        raise ConfigError(name, f"{text!r} is not an https URL (expected https://host)")
    return text.rstrip("/")


def _parse_endpoint(env: Environ, name: str) -> str:
    text = require_str(
        env,
        name,
        "the DCR's logs ingestion endpoint or a DCE's, e.g. https://my-dcr-ab12.westeurope-1.ingest.monitor.azure.com",
    )
    parsed = urlparse(text)
    try:
        port_ok = parsed.port is None or parsed.port > 0
    except ValueError:
        port_ok = False
    # Bearer tokens go over TLS only (azure-core refuses otherwise), so plain http is refused here already.
    if parsed.scheme != "https" or not parsed.hostname or not port_ok:
        raise ConfigError(
            name, f"{text!r} is not an https URL (expected https://<name>.<region>.ingest.monitor.azure.com)"
        )
    if "/datacollectionrules" in parsed.path.lower() or parsed.query:
        raise ConfigError(
            name,
            "must be the endpoint alone (https://<name>.<region>.ingest.monitor.azure.com): the DCR id and stream "
            "go in SINK_LOGANALYTICS_DCR_ID and SINK_LOGANALYTICS_STREAM",
        )
    return text.rstrip("/")


def _parse_dcr_id(env: Environ, name: str) -> str:
    text = require_str(env, name, "the DCR's immutable id, dcr-<32 hex digits>")
    if text.lower().startswith("/subscriptions/"):
        raise ConfigError(
            name,
            "is the DCR's resource id; use its immutable id (dcr-<32 hex digits>, on the DCR's Overview page or "
            "the dcrImmutableId output of infra/logs-ingestion.json)",
        )
    if not _DCR_ID.match(text):
        raise ConfigError(name, f"{text!r} is not a DCR immutable id (expected dcr-<32 hex digits>)")
    return text.lower()


def _parse_stream(env: Environ, name: str) -> str:
    text = get_str(env, name, DEFAULT_STREAM) or DEFAULT_STREAM
    if not _STREAM.match(text):
        raise ConfigError(
            name,
            f"{text!r} is not a DCR stream name (expected Custom-<name> or Microsoft-<table>, e.g. {DEFAULT_STREAM})",
        )
    return text


def build_credential(settings: LogAnalyticsSinkSettings) -> TokenCredential:
    """The azure-identity credential the settings describe (see the module docstring)."""
    auth = settings.client_secret_auth
    if auth is not None:
        authority = auth.authority_host or AzureAuthorityHosts.AZURE_PUBLIC_CLOUD
        host = urlparse(authority if "://" in authority else f"https://{authority}").hostname or ""
        return ClientSecretCredential(
            auth.tenant_id,
            auth.client_id,
            auth.client_secret.reveal(),
            authority=authority,
            disable_instance_discovery=host not in MICROSOFT_AUTHORITY_HOSTS,
        )
    if settings.managed_identity_client_id is not None:
        return ManagedIdentityCredential(client_id=settings.managed_identity_client_id)
    return DefaultAzureCredential()


class _SignInError(Exception):
    """The credential could not get a token; raised inside the SDK's pipeline so it is told apart from a 401."""

    def __init__(self, error: ClientAuthenticationError) -> None:
        super().__init__(str(error))
        self.error = error


class _ReportingCredential:
    """Wraps a credential so that sign-in failures reach ``on_error`` as ``_SignInError``."""

    def __init__(self, inner: TokenCredential) -> None:
        self.inner = inner

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        try:
            return self.inner.get_token(*scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs)
        except ClientAuthenticationError as err:
            raise _SignInError(err) from err


class LogAnalyticsSink:
    """Uploads each blob's records through a ``LogsIngestionClient``; see the module docstring."""

    name = "loganalytics"

    def __init__(
        self,
        settings: LogAnalyticsSinkSettings,
        *,
        credential: TokenCredential | None = None,
        client: LogsIngestionClient | None = None,
    ) -> None:
        self._settings = settings
        self._credential = credential if credential is not None else build_credential(settings)
        self._client = (
            client
            if client is not None
            else LogsIngestionClient(
                settings.endpoint,
                _ReportingCredential(self._credential),
                credential_scopes=[settings.scope],
                retry_total=settings.max_retries,
                retry_backoff_factor=settings.retry_backoff_seconds,
                connection_timeout=settings.timeout_seconds,
                read_timeout=settings.timeout_seconds,
                user_agent=f"o365collector/{__version__}",
            )
        )
        self._where = f"Logs Ingestion endpoint {settings.endpoint}"

    def check(self) -> None:
        """Get a token for the audience, then POST an empty JSON array to the upload URL.

        An empty array carries no record, so nothing can be stored. The answer proves DNS, TLS, the
        token, the DCR id and the role: 2xx passes; 401/403/404 fail with what to fix; 408/429/5xx
        report the service unhealthy; another 4xx (the service refusing an empty batch) passes, since
        authentication and the DCR lookup come before the body is read.
        """
        try:
            self._credential.get_token(self._settings.scope)
        except ClientAuthenticationError as err:
            raise self._sign_in_error(err) from err
        request = HttpRequest(
            "POST",
            f"/dataCollectionRules/{self._settings.dcr_id}/streams/{self._settings.stream}",
            params={"api-version": API_VERSION},
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            content=b"[]",
        )
        try:
            response = self._client.send_request(request, retry_total=0)
        except _SignInError as err:
            raise self._sign_in_error(err.error) from err
        except AzureError as err:
            raise self._transport_error(err) from err
        status = response.status_code
        if 200 <= status < 300 or (400 <= status < 500 and status not in (401, 403, 404, 408, 429)):
            log.info(
                "loganalytics sink: %s accepts uploads to %s/%s (probe answered %d)",
                self._where,
                self._settings.dcr_id,
                self._settings.stream,
                status,
            )
            return
        raise self._status_error(status, _ServiceError.of(response), retry_after=_retry_after(response), retried=False)

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        """Upload all records (the SDK chunks and gzips them); no records, no request."""
        if not records:
            return
        extra = {
            "tenant_id": context.tenant_id,
            "content_type": context.content_type,
            "content_id": context.content_id,
        }
        stream = self.stream_for(context.content_type)
        logs = [with_record_column(record) for record in records]
        positions = {id(log): index for index, log in enumerate(logs)}
        failed_attempts: list[int] = []

        def count_failures(response: PipelineResponse[Any, Any]) -> None:
            # Sees every attempt, including those azure-core retries: for the WARNING below.
            if response.http_response.status_code >= 400:
                failed_attempts.append(response.http_response.status_code)

        def on_error(failure: LogsUploadError) -> NoReturn:
            first = positions.get(id(failure.failed_logs[0]), -1) if failure.failed_logs else -1
            raise self._upload_error(failure.error, context, first, len(failure.failed_logs), stream) from failure.error

        # Every failure inside upload() happens in a chunk and reaches on_error, which raises.
        self._client.upload(self._settings.dcr_id, stream, logs, on_error=on_error, raw_response_hook=count_failures)
        if failed_attempts:
            log.warning(
                "loganalytics sink: %d records of content %s accepted after %d retried answers (last %d)",
                len(records),
                context.content_id,
                len(failed_attempts),
                failed_attempts[-1],
                extra=extra,
            )
        log.debug("loganalytics sink: %d records of content %s accepted", len(records), context.content_id, extra=extra)

    def close(self) -> None:
        self._client.close()
        close = getattr(self._credential, "close", None)
        if callable(close):
            close()

    def stream_for(self, content_type: str) -> str:
        """The DCR stream for records of ``content_type``: SINK_LOGANALYTICS_STREAM for the audit feed's."""
        return labels_for(content_type).log_analytics_stream if is_graph_stream(content_type) else self._settings.stream

    # -- classification

    def _upload_error(
        self, err: Exception, context: BlobContext, first: int, count: int, stream: str | None = None
    ) -> CollectorError:
        if isinstance(err, _SignInError):
            return self._sign_in_error(err.error)
        if isinstance(err, HttpResponseError) and err.response is not None and err.status_code is not None:
            status = err.status_code
            if status == 413 and count == 1:
                return SinkPermanentError(
                    f"{self._where} answered 413: record {first} of content {context.content_id} is larger than one "
                    "Logs Ingestion call may carry (1 MiB): the record cannot be ingested as it is"
                )
            if status == 413:
                return SinkPermanentError(
                    f"{self._where} answered 413 to a chunk of {count} records (from record {first}) of content "
                    f"{context.content_id}: larger than one call may carry (1 MiB)"
                )
            detail = _ServiceError.of(err.response)
            return self._status_error(
                status, detail, retry_after=_retry_after(err.response), retried=True, stream=stream
            )
        if isinstance(err, AzureError):
            return self._transport_error(err)
        # Anything else (a record the SDK cannot serialize): sending it again will fail the same way.
        return SinkPermanentError(
            f"records of content {context.content_id} could not be uploaded ({type(err).__name__})"
        )

    def _status_error(
        self, status: int, detail: _ServiceError, *, retry_after: float | None, retried: bool, stream: str | None = None
    ) -> CollectorError:
        where = f"{self._where} answered {status}{detail}"
        s = self._settings
        if status == 404 and stream is not None and stream != s.stream:
            return SinkPermanentError(
                f"{where}: the data collection rule {s.dcr_id} does not declare the stream {stream} "
                "(redeploy infra/logs-ingestion.json, which declares each Microsoft Graph source's stream and table)"
            )
        if status == 401:
            return SinkPermanentError(
                f"{where}: the token was refused (check SINK_LOGANALYTICS_AUDIENCE is this cloud's, "
                f"now {s.audience}, and that the identity belongs to the DCR's tenant)"
            )
        if status == 403:
            return SinkPermanentError(
                f"{where}: the identity lacks the Monitoring Metrics Publisher role on the data collection rule "
                f"{s.dcr_id} (assign it on the DCR; a new assignment can take up to 30 minutes to apply)"
            )
        if status == 404:
            return SinkPermanentError(
                f"{where}: no data collection rule {s.dcr_id} with stream {s.stream} here (check "
                "SINK_LOGANALYTICS_DCR_ID is the immutable id, SINK_LOGANALYTICS_STREAM a stream it declares, and "
                "SINK_LOGANALYTICS_ENDPOINT the DCR's own endpoint or a DCE in its region)"
            )
        if status in (408, 429) or status >= 500:
            retries = f" (after up to {s.max_retries} retries)" if retried else ""
            return SinkTransientError(f"{where}{retries}", retry_after=retry_after)
        return SinkPermanentError(f"{where}: the service refused the records (does the DCR's stream declaration fit?)")

    def _sign_in_error(self, err: ClientAuthenticationError) -> CollectorError:
        text = summary(str(err.message or err), 300)
        for code, hint in _AADSTS_HINTS.items():
            if code in text:
                return SinkPermanentError(f"sign-in for the Logs Ingestion API failed: {code}: {hint}")
        if isinstance(err, CredentialUnavailableError):
            return SinkPermanentError(
                f"no credential for the Logs Ingestion API is available ({text}): in Azure, enable the app's "
                "managed identity (SINK_LOGANALYTICS_CLIENT_ID for a user-assigned one); elsewhere set "
                "SINK_LOGANALYTICS_TENANT_ID, SINK_LOGANALYTICS_APP_CLIENT_ID and SINK_LOGANALYTICS_CLIENT_SECRET"
            )
        # The login service being slow or unreachable passes; the queue redelivers.
        return SinkTransientError(f"sign-in for the Logs Ingestion API failed: {text}")

    def _transport_error(self, err: AzureError) -> CollectorError:
        causes = list(error_chain(err))
        verify = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
        if verify is not None:
            return SinkPermanentError(
                f"TLS verification of {self._where} failed ({verify.verify_message or verify.reason}): trust its CA "
                "with REQUESTS_CA_BUNDLE, or fix SINK_LOGANALYTICS_ENDPOINT"
            )
        if isinstance(err, ServiceRequestError | ServiceResponseError):
            # Refused, reset, DNS, timeouts: azure-core does not retry a POST that may have reached the
            # service, so the queue's redelivery does.
            return SinkTransientError(f"{self._where} could not be reached ({root_reason(causes)})")
        return SinkTransientError(f"{self._where} failed ({type(err).__name__}: {root_reason(causes)})")


@dataclass(frozen=True, slots=True)
class _ServiceError:
    """The service's ``{"error": {"code", "message"}}``, shortened, for messages (it names ids, never secrets)."""

    code: str | None
    message: str | None

    @classmethod
    def of(cls, response: Any) -> _ServiceError:
        try:
            payload = response.json()
        except Exception:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            return cls(None, None)
        code, message = error.get("code"), error.get("message")
        return cls(
            str(code) if code else None,
            " ".join(str(message).split())[:300] if message else None,
        )

    def __str__(self) -> str:
        if self.code and self.message:
            return f" ({self.code}: {self.message})"
        if self.code or self.message:
            return f" ({self.code or self.message})"
        return ""


def with_record_column(record: Record) -> MutableMapping[str, Any]:
    """The record's fields as they are, plus ``AuditRecord``: the whole record (the caller's is not modified).

    A field of the record named ``AuditRecord`` is replaced, yet still kept: inside the whole record.
    """
    return {**record, RECORD_COLUMN: record}



def _retry_after(response: Any) -> float | None:
    text = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(float(text), 0.0) if text else None
    except ValueError:
        return None
