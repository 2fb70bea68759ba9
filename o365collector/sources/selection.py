"""Which sources a tenant collects: ``O365_SOURCES`` and a registry entry's ``sources``, parsed and checked.

A selection names sources of ``catalog.SOURCES`` (``audit``, ``signins``, ``directoryaudits``,
``messagetrace``), as a comma string or a JSON list. It is refused, naming the setting or entry, when
it is empty, names an unknown source or one source twice, or asks for a source the tenant's cloud does
not serve. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..envparse import Environ, get_str
from ..errors import ConfigError
from ..redaction import printable
from .catalog import DEFAULT_SOURCES, SOURCES

SETTING = "O365_SOURCES"

# Microsoft 365 plans (tenant_config.CLOUDS names) whose Microsoft Graph is the global service.
# GCC tenants "continue using the worldwide endpoints: https://graph.microsoft.com"; GCC High uses
# graph.microsoft.us (US Government L4) and DoD dod-graph.microsoft.us (L5)
# (https://learn.microsoft.com/graph/deployments). Message trace is served by the global service only,
# not US Government L4/L5 nor 21Vianet (https://learn.microsoft.com/graph/api/messagetracingroot-list-messagetraces).
GLOBAL_SERVICE_CLOUDS = ("Enterprise", "GCC")


def choices() -> str:
    return ", ".join(SOURCES)


def parse_sources(value: object, where: str, *, cloud: str | None) -> tuple[str, ...]:
    """``value`` (a comma string or a list of strings) as source names in the order given.

    ``where`` names the setting or entry field in errors; ``cloud`` None: cloud limits are not judged
    (the deployment-wide setting before any tenant's cloud is known).
    """
    if isinstance(value, str):
        items: Sequence[object] = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(where, f"must be a list or a comma-separated string of sources ({choices()})")
    chosen: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(where, f"must list source names ({choices()}), not {type(item).__name__}")
        name = item.strip().lower()
        if not name:
            continue
        if name not in SOURCES:
            raise ConfigError(where, f"unknown source {printable(item.strip()[:40])!r} (expected one of {choices()})")
        if name in chosen:
            raise ConfigError(where, f"lists {name!r} twice: name each source once")
        chosen.append(name)
    if not chosen:
        raise ConfigError(
            where, f"is empty: name at least one source ({choices()}); leave it unset for the default, audit"
        )
    if cloud is not None:
        check_cloud(tuple(chosen), where, cloud)
    return tuple(chosen)


def check_cloud(sources: tuple[str, ...], where: str, cloud: str) -> None:
    """Refuse a source that the tenant's cloud does not serve (Graph message trace: global service only)."""
    for name in sources:
        if SOURCES[name].global_cloud_only and cloud not in GLOBAL_SERVICE_CLOUDS:
            raise ConfigError(
                where,
                f"{name!r} is not served in the {cloud} cloud: {SOURCES[name].title} is on Microsoft Graph's "
                f"global service only ({' and '.join(GLOBAL_SERVICE_CLOUDS)} tenants); remove it",
            )


def sources_from_env(env: Environ, *, cloud: str | None) -> tuple[str, ...]:
    """``O365_SOURCES``; unset or blank: the audit feed only (what every deployment collected before)."""
    text = get_str(env, SETTING)
    return DEFAULT_SOURCES if text is None else parse_sources(text, SETTING, cloud=cloud)


def entry_sources(value: object, env: Environ, where: str, *, cloud: str) -> tuple[str, ...]:
    """A registry entry's ``sources``, else ``O365_SOURCES`` checked against the entry's own cloud."""
    if value is not None and not (isinstance(value, str) and not value.strip()):
        return parse_sources(value, f"{where}.sources", cloud=cloud)
    default = sources_from_env(env, cloud=None)
    check_cloud(default, f"{SETTING} (the default for {where}, which has no sources of its own)", cloud)
    return default
