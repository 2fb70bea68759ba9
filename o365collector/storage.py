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

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import QueueClient, QueueMessage, TextBase64DecodePolicy, TextBase64EncodePolicy

from .config import StorageConfig


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


class StorageClients:
    """Makes queue and table clients for one storage account."""

    def __init__(self, config: StorageConfig, credential: TokenCredential | None = None) -> None:
        self._config = config
        self._credential = credential
        if config.connection_string is None and credential is None:
            self._credential = (
                ManagedIdentityCredential(client_id=config.managed_identity_client_id)
                if config.managed_identity_client_id
                else DefaultAzureCredential()
            )

    def queue(self, name: str) -> QueueClient:
        encode, decode = _Base64EncodePolicy(), _PerMessageBase64DecodePolicy()
        if self._config.connection_string is not None:
            return QueueClient.from_connection_string(
                self._config.connection_string.reveal(),
                name,
                message_encode_policy=encode,
                message_decode_policy=decode,
            )
        assert self._config.queue_service_uri is not None
        return QueueClient(
            self._config.queue_service_uri,
            name,
            credential=self._credential,
            message_encode_policy=encode,
            message_decode_policy=decode,
        )

    def table(self, name: str) -> TableClient:
        if self._config.connection_string is not None:
            return TableClient.from_connection_string(self._config.connection_string.reveal(), table_name=name)
        assert self._config.table_service_uri is not None
        return TableServiceClient(self._config.table_service_uri, credential=self._credential).get_table_client(name)


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
