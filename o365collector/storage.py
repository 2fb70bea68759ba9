"""Azure Storage clients (queues and tables) from the ``AzureWebJobsStorage`` settings.

The same connection the Functions host uses: a connection string locally (Azurite), the app's
managed identity in Azure. Queue messages are base64 text, the encoding the host's queue trigger
expects by default.
"""

from __future__ import annotations

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient, TableServiceClient
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from .config import StorageConfig


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
        encode, decode = TextBase64EncodePolicy(), TextBase64DecodePolicy()
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
