"""Azure Storage clients (queues and tables) from the ``AzureWebJobsStorage`` settings.

The same connection the Functions host uses: a connection string locally (Azurite), the app's
managed identity in Azure. Queue messages are base64 text, the encoding the host's queue trigger
expects by default (``messageEncoding`` in host.json).

A queue holds whatever anyone wrote to it. The SDK's base64 decoding fails a whole receive (or peek)
when one message is not base64, so these clients decode each message on its own: a message that
is not base64 UTF-8 text comes back as an ``UnreadableMessage``, its text exactly as stored with
the reason, and its neighbours as usual. Sent on (to the poison queue), an ``UnreadableMessage``
goes as it came, never encoded again.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Self

import requests
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, TableServiceClient
from azure.identity import CredentialUnavailableError, DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import QueueClient, QueueMessage, TextBase64DecodePolicy, TextBase64EncodePolicy
from urllib3.util.retry import Retry

from .config import StorageConfig
from .errors import ConfigError
from .sessions import EnvironmentOnceSession

STORAGE_SETTING = "AzureWebJobsStorage"
# Connections kept per client: the queue runner works on up to host.json batchSize (16) messages at
# once, each with queue and table calls; requests' default of 10 would drop (and log) the others.
POOL_CONNECTIONS = 32
CONNECTION_STRING_FORM = (
    "expected DefaultEndpointsProtocol=https;AccountName=<name>;AccountKey=<key>;EndpointSuffix=core.windows.net, "
    "or UseDevelopmentStorage=true for Azurite"
)
NO_SIGN_IN = (
    "no Azure sign-in is available to reach the storage account (an identity-based connection): locally run "
    "`az login` (or set AzureWebJobsStorage to a connection string, e.g. Azurite's); in Azure, enable the app's "
    "managed identity"
)
# DefaultAzureCredential's text when no source in its chain could even try (no `az login`, no identity).
_CHAIN_UNAVAILABLE = "failed to retrieve a token from the included credentials"


class UnreadableMessage(str):
    """A queue message's text exactly as stored, when it is not base64 UTF-8 text; ``reason`` says why."""

    reason: str

    def __new__(cls, raw: str, reason: str) -> Self:
        text = super().__new__(cls, raw)
        text.reason = reason
        return text


def decode_message(raw: str) -> str:
    """The text of a message stored as base64 (the host's encoding), or an ``UnreadableMessage``; never raises."""
    try:
        # Whitespace is skipped, as the host's decoder (.NET Convert.FromBase64String) skips it.
        data = base64.b64decode("".join(raw.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        return UnreadableMessage(raw, f"not base64 ({err})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        return UnreadableMessage(raw, f"base64 of bytes that are not UTF-8 text ({err.reason} at byte {err.start})")


def lease_lost(err: HttpResponseError) -> bool:
    """Whether a delete or update of a received message failed because the receiver no longer holds it.

    Gone (404: deleted by whoever received it next), or received again since (400 PopReceiptMismatch:
    the pop receipt held is stale).
    """
    # ``error_code`` is set by the storage SDK's error handling, not declared by azure-core.
    return isinstance(err, ResourceNotFoundError) or getattr(err, "error_code", None) == "PopReceiptMismatch"


def unreadable_reason(message: QueueMessage) -> str | None:
    """Why ``message`` could not be decoded, or None when its ``content`` is its text."""
    content = message.content
    return content.reason if isinstance(content, UnreadableMessage) else None


class _PerMessageBase64DecodePolicy(TextBase64DecodePolicy):
    """Base64 decoding that marks a bad message unreadable instead of failing the whole receive or peek."""

    def decode(self, content: str, response: Any) -> str:
        return decode_message(content)


class _Base64EncodePolicy(TextBase64EncodePolicy):
    """Base64 encoding, except for an ``UnreadableMessage``: that is already the stored form and goes as it came."""

    def encode(self, content: str) -> str:
        if isinstance(content, UnreadableMessage):
            return str(content)
        return super().encode(content)


def check_connection_string(text: str, setting: str = STORAGE_SETTING) -> None:
    """Refuse a connection string the SDKs cannot use, naming the setting (never echoing it: it holds a key).

    The SDKs say only "Connection string is either blank or malformed", without saying which setting, and
    an AccountKey that is not base64 fails much later, at the first request, as an unrelated error.
    """
    try:
        QueueClient.from_connection_string(text, "probe")
        TableClient.from_connection_string(text, table_name="probe")
    except ValueError:
        raise ConfigError(setting, f"is not a valid storage connection string ({CONNECTION_STRING_FORM})") from None
    parts = dict(p.split("=", 1) for p in text.split(";") if "=" in p)
    key = next((v for k, v in parts.items() if k.strip().lower() == "accountkey"), None)
    if key is not None:
        try:
            base64.b64decode(key.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(setting, "its AccountKey is not base64: copy the key again from the account") from None


class _SignInExplained:
    """A storage credential whose "nobody is signed in" failure reads as that, in one line.

    Unwrapped, DefaultAzureCredential's failure is a page of per-source attempts, and a later 403 would
    read as missing roles when the real fix is `az login`. Raised from inside the SDK's pipeline as a
    ``ConfigError`` (not an azure-core error), so no retry policy or SDK wrapper turns it into another.
    """

    def __init__(self, inner: TokenCredential, setting: str) -> None:
        self._inner = inner
        self._setting = setting

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        try:
            return self._inner.get_token(*scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs)
        except CredentialUnavailableError:
            raise ConfigError(self._setting, NO_SIGN_IN) from None
        except ClientAuthenticationError as err:
            if _CHAIN_UNAVAILABLE in str(err.message or err):
                raise ConfigError(self._setting, NO_SIGN_IN) from None
            raise


class StorageClients:
    """Makes queue and table clients for one storage account."""

    def __init__(
        self, config: StorageConfig, credential: TokenCredential | None = None, *, setting: str = STORAGE_SETTING
    ) -> None:
        self._config = config
        self._credential = credential
        if config.connection_string is not None:
            check_connection_string(config.connection_string.reveal(), setting)
        elif credential is None:
            self._credential = _SignInExplained(
                ManagedIdentityCredential(client_id=config.managed_identity_client_id)
                if config.managed_identity_client_id
                else DefaultAzureCredential(),
                setting,
            )

    def queue(self, name: str) -> QueueClient:
        encode, decode = _Base64EncodePolicy(), _PerMessageBase64DecodePolicy()
        if self._config.connection_string is not None:
            return QueueClient.from_connection_string(
                self._config.connection_string.reveal(),
                name,
                message_encode_policy=encode,
                message_decode_policy=decode,
                transport=pooled_transport(),
            )
        assert self._config.queue_service_uri is not None
        return QueueClient(
            self._config.queue_service_uri,
            name,
            credential=self._credential,
            message_encode_policy=encode,
            message_decode_policy=decode,
            transport=pooled_transport(),
        )

    def table(self, name: str) -> TableClient:
        if self._config.connection_string is not None:
            return TableClient.from_connection_string(
                self._config.connection_string.reveal(), table_name=name, transport=pooled_transport()
            )
        assert self._config.table_service_uri is not None
        return TableServiceClient(
            self._config.table_service_uri, credential=self._credential, transport=pooled_transport()
        ).get_table_client(name)


# azure-core sends a POST again only when an answer came back (500, 503, 504), not after the connection
# dropped before the answer: the POST may have landed. Pass this as ``retry_on_methods`` for the table POSTs
# that are safe to send again: upserts, and creates or ETag-conditional writes whose caller recognises its
# own landed write in the rows (a pooled connection the server closed just as it was reused).
RETRY_POSTS_TOO = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "POST"})


def pooled_transport() -> RequestsTransport:
    """azure-core's requests transport (retries off: the SDK's policy retries) with ``POOL_CONNECTIONS``."""
    session = EnvironmentOnceSession()
    adapter = requests.adapters.HTTPAdapter(
        max_retries=Retry(total=False, redirect=False, raise_on_status=False), pool_maxsize=POOL_CONNECTIONS
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session)


def ensure_queue(client: QueueClient) -> None:
    try:
        client.create_queue()
    except ResourceExistsError:
        pass


def ensure_table(client: TableClient) -> None:
    try:
        client.create_table()
    except ResourceExistsError:
        pass
