"""The Azure Blob archive sink: one gzip-compressed NDJSON blob per content blob, overwritten on redelivery.

Layout in ``SINK_BLOB_CONTAINER``: ``{tenant_id}/{content_type}/{yyyy}/{mm}/{dd}/{safe content id}.json.gz``,
dated by the content blob's ``contentCreated`` in UTC. Names follow the file sink (``file.safe_name``):
the content id keeps ``[A-Za-z0-9._-]``, every other character becomes ``_``, and 16 hex digits of its
SHA-256 keep two ids that clean up alike apart. The name depends on the content id alone, so a
redelivered blob replaces its archive (``overwrite=True``) instead of adding a second copy.

Each blob holds the records exactly as ``batching.serialize`` writes them, one per line, every line
ending in ``\\n``, gzip-compressed (``Content-Type: application/x-ndjson``, ``Content-Encoding: gzip``),
with metadata ``tenant_id``, ``content_type``, ``content_id`` and ``records`` (the count). With
``SINK_BLOB_SHAPE=flat`` each line is ``shape.flat_record`` of the record instead (``o365.audit.*``
fields and ``@timestamp``).

Authentication: ``SINK_BLOB_CONNECTION_STRING`` (a secret: account key or SAS), or
``SINK_BLOB_ACCOUNT_URL`` with the app's managed identity (user-assigned when ``SINK_BLOB_CLIENT_ID``
is set, otherwise ``DefaultAzureCredential``), which needs *Storage Blob Data Contributor* on the
container. The ``BlobClient`` retries throttling, 5xx and network errors itself (azure-core); this
module does not retry again. What is left is classified:

====================================================  ==========================================
401/403 (bad key or SAS, missing role, firewall),     ``SinkPermanentError``: fix the credential
token not obtainable                                  or grant the role
404 ``ContainerNotFound``                             ``SinkPermanentError`` naming
                                                      SINK_BLOB_CONTAINER (or create it, when
                                                      ``SINK_BLOB_CREATE_CONTAINER`` is true)
network errors, 408, 429, 5xx (``ServerBusy``)        ``SinkTransientError``
any other answer                                      ``SinkPermanentError`` with status and code
====================================================  ==========================================

Messages name the container, the status and the service's error code; never the connection string,
the SDK's own message (it may echo request signatures) or record bodies.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlparse

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob import ContainerClient, ContentSettings

from ..envparse import Environ, Secret, get_bool, get_https_url, get_secret, get_str, parse_guid, require_str
from ..errors import CollectorError, ConfigError, SinkPermanentError, SinkTransientError
from ..models import BlobContext, Record, utc
from ..redaction import summary
from .batching import NDJSON, serialize
from .file import safe_name
from .shape import flat_record, get_shape

log = logging.getLogger(__name__)

# Azure's container naming rule: 3-63 of [a-z0-9-], starting with a letter or digit, no "--", no trailing "-".
_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_PLAIN_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]*$")
# What a 401/403 means with the managed identity (403 AuthorizationPermissionMismatch): the data role is missing.
_ROLE_HINT = "grant the collector's identity 'Storage Blob Data Contributor' on the container"


@dataclass(frozen=True, slots=True)
class BlobSinkSettings:
    """``SINK_BLOB_*``: where the archive goes and how to sign in."""

    name: ClassVar[str] = "blob"

    container: str
    connection_string: Secret | None = None
    account_url: str | None = None
    client_id: str | None = None
    create_container: bool = False
    shape: str = "raw"
    """``raw``: each record as served; ``flat``: ``shape.flat_record`` (``o365.audit.*`` and ``@timestamp``)."""

    @classmethod
    def from_env(cls, env: Environ) -> BlobSinkSettings:
        container = require_str(env, "SINK_BLOB_CONTAINER", "the container the archive blobs are written to")
        if not _CONTAINER_NAME.match(container):
            raise ConfigError(
                "SINK_BLOB_CONTAINER",
                f"{container!r} is not a valid container name (3-63 lower-case letters, digits and single hyphens, "
                "starting with a letter or digit)",
            )
        connection_string = get_secret(env, "SINK_BLOB_CONNECTION_STRING")
        # Azurite's URL is http://127.0.0.1:10000/devstoreaccount1; anything else must be https.
        account_url = get_https_url(env, "SINK_BLOB_ACCOUNT_URL", allow_http_loopback=True)
        client_text = get_str(env, "SINK_BLOB_CLIENT_ID")
        if connection_string is not None and account_url is not None:
            raise ConfigError(
                "SINK_BLOB_CONNECTION_STRING",
                "is set together with SINK_BLOB_ACCOUNT_URL: keep one (the URL signs in with the managed identity)",
            )
        if connection_string is None and account_url is None:
            raise ConfigError(
                "SINK_BLOB_ACCOUNT_URL",
                "is required (https://<account>.blob.core.windows.net, signing in with the managed identity), "
                "unless SINK_BLOB_CONNECTION_STRING is set",
            )
        if client_text is not None and account_url is None:
            raise ConfigError(
                "SINK_BLOB_CLIENT_ID", "only applies with SINK_BLOB_ACCOUNT_URL (the connection string signs in itself)"
            )
        return cls(
            container=container,
            connection_string=connection_string,
            account_url=account_url,
            client_id=parse_guid("SINK_BLOB_CLIENT_ID", client_text) if client_text else None,
            # Off by default: the archive container is the admin's (on their own storage account), and the
            # data role is usually granted on the container alone, which cannot create it.
            create_container=get_bool(env, "SINK_BLOB_CREATE_CONTAINER", False),
            shape=get_shape(env, "SINK_BLOB_SHAPE"),
        )

    def container_client(self, credential: TokenCredential | None = None, **client_options: Any) -> ContainerClient:
        """A client for the container; ``client_options`` go to the SDK (e.g. ``retry_total``). No I/O."""
        if self.connection_string is not None:
            return ContainerClient.from_connection_string(
                self.connection_string.reveal(), self.container, **client_options
            )
        assert self.account_url is not None
        if credential is None:
            credential = (
                ManagedIdentityCredential(client_id=self.client_id) if self.client_id else DefaultAzureCredential()
            )
        return ContainerClient(self.account_url, self.container, credential=credential, **client_options)

    def create(self) -> BlobSink:
        return BlobSink(self)


def blob_name(context: BlobContext) -> str:
    """Where the records of ``context``'s content blob are archived (see the module docstring)."""
    created = utc(context.content_created)
    return "/".join(
        (
            _segment(context.tenant_id),
            _segment(context.content_type),
            f"{created:%Y}",
            f"{created:%m}",
            f"{created:%d}",
            f"{safe_name(context.content_id)}.json.gz",
        )
    )


def _segment(text: str) -> str:
    # Tenant ids (GUIDs) and content types (Audit.Exchange) stay readable; anything else is made safe.
    return text if _PLAIN_SEGMENT.match(text) else safe_name(text)


def _metadata_value(text: str) -> str:
    # Metadata travels in HTTP headers: printable ASCII only. Content ids are ASCII in practice; others
    # are percent-encoded rather than refused.
    return text if _PRINTABLE_ASCII.match(text) else quote(text, safe="")


class BlobSink:
    """Uploads each content blob's records as one gzip NDJSON blob; see the module docstring."""

    name = "blob"

    def __init__(self, settings: BlobSinkSettings, *, client: ContainerClient | None = None) -> None:
        self._settings = settings
        self._client = client if client is not None else settings.container_client()
        self._where = f"container {settings.container!r} in {_account(self._client)}"

    def check(self) -> None:
        """Read the container's properties: proves the account answers, the credential works and the container exists.

        Nothing is written (with ``SINK_BLOB_CREATE_CONTAINER`` a missing container is created). The write
        permission itself shows only on the first upload: a reader role passes this check.
        """
        try:
            self._client.get_container_properties()
        except ResourceNotFoundError as err:
            if not (self._settings.create_container and _container_missing(err)):
                raise self._error(err, "read") from err
            self._create_container()
        except AzureError as err:
            raise self._error(err, "read") from err
        log.debug("blob sink: %s is reachable", self._where)

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        name = blob_name(context)
        flat = self._settings.shape == "flat"
        lines = (serialize(flat_record(record) if flat else record) + b"\n" for record in records)
        body = gzip.compress(b"".join(lines), compresslevel=6, mtime=0)
        metadata = {
            "tenant_id": _metadata_value(context.tenant_id),
            "content_type": _metadata_value(context.content_type),
            "content_id": _metadata_value(context.content_id),
            "records": str(len(records)),
        }
        try:
            try:
                self._upload(name, body, metadata)
            except ResourceNotFoundError as err:
                if not (self._settings.create_container and _container_missing(err)):
                    raise
                self._create_container()
                self._upload(name, body, metadata)
        except AzureError as err:
            raise self._error(err, "write") from err
        log.debug(
            "blob sink: wrote %d records (%d bytes gzip) to %s",
            len(records),
            len(body),
            name,
            extra={
                "tenant_id": context.tenant_id,
                "content_type": context.content_type,
                "content_id": context.content_id,
            },
        )

    def close(self) -> None:
        self._client.close()

    def _upload(self, name: str, body: bytes, metadata: dict[str, str]) -> None:
        self._client.upload_blob(
            name,
            body,
            length=len(body),
            overwrite=True,  # a redelivery replaces the archive: never a second copy
            metadata=metadata,
            content_settings=ContentSettings(content_type=NDJSON.content_type, content_encoding="gzip"),
        )

    def _create_container(self) -> None:
        try:
            self._client.create_container()
        except ResourceExistsError:
            pass  # another worker was first
        except AzureError as err:
            raise self._error(err, "create") from err
        log.info("blob sink: created %s (SINK_BLOB_CREATE_CONTAINER)", self._where)

    def _error(self, err: AzureError, action: str) -> CollectorError:
        return classify_storage_error(
            err,
            where=self._where,
            action=action,
            identity=self._settings.connection_string is None,
        )


def classify_storage_error(err: AzureError, *, where: str, action: str, identity: bool) -> CollectorError:
    """Retryable or permanent, with a message that says what to do (see the table in the module docstring)."""
    credential = "the managed identity" if identity else "SINK_BLOB_CONNECTION_STRING"
    if isinstance(err, ServiceRequestError | ServiceResponseError):
        # Raised after the SDK's own retries: DNS, refused or reset connections, timeouts.
        return SinkTransientError(f"cannot {action} {where}: {type(err).__name__} (network; the blob will be retried)")
    if not isinstance(err, HttpResponseError) or err.status_code is None:
        if isinstance(err, ClientAuthenticationError):  # azure-identity could not get a token
            return SinkPermanentError(
                f"cannot {action} {where}: no token for Azure Storage from {credential} ({_first_line(err)}); "
                "check SINK_BLOB_CLIENT_ID and the identity assigned to the app"
            )
        return SinkPermanentError(f"cannot {action} {where}: {type(err).__name__} ({_first_line(err)})")
    status = err.status_code
    code = _error_code(err) or "no error code"
    answer = f"{where} answered {status} {code}"
    if status == 404 and _container_missing(err):
        return SinkPermanentError(
            f"{answer}: the container does not exist (create it, fix SINK_BLOB_CONTAINER, "
            "or set SINK_BLOB_CREATE_CONTAINER=true)"
        )
    if status in (401, 403):
        if identity:
            fix = _ROLE_HINT
        else:
            fix = "check the account key or SAS in SINK_BLOB_CONNECTION_STRING (a SAS needs write and create rights)"
        firewall = " and the storage account's firewall" if code == "AuthorizationFailure" else ""
        return SinkPermanentError(f"{answer}: access refused; {fix}{firewall}")
    if status in (408, 429) or status >= 500:
        return SinkTransientError(f"{answer} after the SDK's retries (the blob will be retried)")
    return SinkPermanentError(f"{answer}: the request was refused")


def _error_code(err: AzureError) -> str | None:
    # The SDK sets a StorageErrorCode (a str enum) or the raw x-ms-error-code string.
    code = getattr(err, "error_code", None)
    if code is None:
        return None
    return str(getattr(code, "value", code))


def _container_missing(err: AzureError) -> bool:
    return _error_code(err) == "ContainerNotFound"


def _first_line(err: AzureError) -> str:
    text = str(getattr(err, "message", None) or err).strip().splitlines()
    return summary(text[0], 200) if text else type(err).__name__



def _account(client: ContainerClient) -> str:
    # scheme://host[:port] and the account name: no SAS token (it sits in the query) in messages.
    parsed = urlparse(client.url)
    return f"account {client.account_name!r} ({parsed.scheme}://{parsed.netloc.rsplit('@', 1)[-1]})"
