"""``SINK_TYPE`` → the parsed settings of each configured backend."""

from __future__ import annotations

from ..envparse import Environ, get_list
from ..errors import ConfigError
from .base import SinkFactory, SinkSettings
from .file import FileSinkSettings
from .http import HttpSinkSettings

SINK_TYPES: dict[str, SinkFactory] = {
    "http": HttpSinkSettings.from_env,
    "file": FileSinkSettings.from_env,
}


def parse_sink_settings(env: Environ) -> tuple[SinkSettings, ...]:
    """Parse ``SINK_TYPE`` (a comma list, for fan-out) and each named sink's own settings."""
    names = get_list(env, "SINK_TYPE")
    if not names:
        raise ConfigError("SINK_TYPE", f"is required (one of {', '.join(SINK_TYPES)}; a comma list fans out)")
    parsed: list[SinkSettings] = []
    for name in names:
        factory = SINK_TYPES.get(name.lower())
        if factory is None:
            raise ConfigError("SINK_TYPE", f"unknown sink {name!r} (expected one of {', '.join(SINK_TYPES)})")
        if any(existing.name == name.lower() for existing in parsed):
            raise ConfigError("SINK_TYPE", f"sink {name!r} is listed twice")
        parsed.append(factory(env))
    return tuple(parsed)
