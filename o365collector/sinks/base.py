"""The contract every backend implements, and the registry that turns ``SINK_TYPE`` into sinks.

A sink returns or raises; it never touches checkpoints or the ledger. It raises
``SinkTransientError`` when sending again later may work (timeouts, 429, 5xx) and
``SinkPermanentError`` when an operator must fix something (credentials, schema, bad URL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..envparse import Environ
from ..models import BlobContext, Record


class Sink(Protocol):
    """A backend that accepts audit records."""

    name: str

    def check(self) -> None:
        """Probe the backend without shipping data; raise a Sink*Error whose message says what to fix."""

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        """Deliver every record of one content blob, or raise. Returning means all were accepted."""

    def close(self) -> None:
        """Release connections and flush files."""


class SinkSettings(Protocol):
    """A sink's own parsed settings (validated at start-up); builds the sink when the app needs it."""

    @property
    def name(self) -> str: ...

    def create(self) -> Sink: ...


class SinkFactory(Protocol):
    def __call__(self, env: Environ) -> SinkSettings: ...
