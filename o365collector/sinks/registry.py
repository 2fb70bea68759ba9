"""``SINK_TYPE`` → the parsed settings of each configured backend.

Sink modules are imported only when named in ``SINK_TYPE``, so a deployment that ships to Splunk
never loads the Event Hubs SDK.
"""

from __future__ import annotations

import importlib

from ..envparse import Environ, Gatherer, get_list
from ..errors import ConfigError
from .base import SinkFactory, SinkSettings

# name → "module:SettingsClass"; the class has a ``from_env(env)`` classmethod.
SINK_TYPES: dict[str, str] = {
    "http": "http:HttpSinkSettings",
    "file": "file:FileSinkSettings",
    "splunk": "splunk:SplunkSinkSettings",
    "elasticsearch": "elasticsearch:ElasticsearchSinkSettings",
    "loganalytics": "loganalytics:LogAnalyticsSinkSettings",
    "blob": "blob:BlobSinkSettings",
    "eventhub": "eventhub:EventHubSinkSettings",
    "syslog": "syslog:SyslogSinkSettings",
}


def sink_factory(name: str) -> SinkFactory:
    module_name, class_name = SINK_TYPES[name].split(":")
    module = importlib.import_module(f"{__package__}.{module_name}")
    factory: SinkFactory = getattr(module, class_name).from_env
    return factory


def parse_sink_settings(env: Environ) -> tuple[SinkSettings, ...]:
    """Parse ``SINK_TYPE`` (a comma list, for fan-out) and each named sink's own settings."""
    names = get_list(env, "SINK_TYPE")
    if not names:
        raise ConfigError("SINK_TYPE", f"is required (one of {', '.join(SINK_TYPES)}; a comma list fans out)")
    parsed: list[SinkSettings] = []
    g = Gatherer()  # each sink's settings are read even when another sink's are wrong: all errors at once
    for name in names:
        key = name.lower()
        if key not in SINK_TYPES:
            raise ConfigError("SINK_TYPE", f"unknown sink {name!r} (expected one of {', '.join(SINK_TYPES)})")
        if [n.lower() for n in names].count(key) > 1:
            raise ConfigError("SINK_TYPE", f"sink {name!r} is listed twice")
        try:
            parsed.append(sink_factory(key)(env))
        except ConfigError as err:
            g.errors.append(err)
    g.raise_if_any()
    return tuple(parsed)
