"""Backends (sinks): one module per backend behind the small ``Sink`` protocol in ``base``."""

from __future__ import annotations

from .base import Sink, SinkSettings
from .registry import SINK_TYPES, parse_sink_settings

__all__ = ["SINK_TYPES", "Sink", "SinkSettings", "parse_sink_settings"]
