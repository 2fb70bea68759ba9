"""The client secret's expiry: the date the admin wrote down, and the warning ``status`` and health give ahead of it.

Entra does not tell the app when its own secret expires (reading the app registration needs a Graph
permission the collector does not have), so the admin writes the date the portal showed in
``O365_CLIENT_SECRET_EXPIRES``. Ahead of it (``O365_HEALTH_SECRET_EXPIRY_DAYS``) the collector is degraded:
still collecting, but someone must rotate the secret. From that date it is unhealthy: sign-in fails with
AADSTS7000222. Secretless modes (managed identity, federated credential) have nothing to expire.
"""

from __future__ import annotations

import datetime as dt

from .envparse import Environ, get_str
from .errors import ConfigError

EXPIRES_SETTING = "O365_CLIENT_SECRET_EXPIRES"
WARNING_SETTING = "O365_HEALTH_SECRET_EXPIRY_DAYS"
ROTATE = "rotate it (docs/deploy.md, Rotate the client secret), then update O365_CLIENT_SECRET_EXPIRES"


def client_secret_expires_from_env(env: Environ) -> dt.datetime | None:
    """``O365_CLIENT_SECRET_EXPIRES``: a date (``2027-06-30``) or an ISO 8601 instant; a date means its start,
    in UTC, so the warning is never late. Empty: unknown, no warning."""
    value = get_str(env, EXPIRES_SETTING)
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        instant = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as err:
        raise ConfigError(
            EXPIRES_SETTING, f"{value!r} is not a date (YYYY-MM-DD, the expiry the portal showed for the secret)"
        ) from err
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=dt.UTC)


def expiry_verdict(expires: dt.datetime | None, warning: dt.timedelta, now: dt.datetime) -> tuple[bool, str] | None:
    """``(expired, message)``: expired makes the collector unhealthy, otherwise degraded; None when all is well."""
    if expires is None:
        return None
    day = f"{expires.date().isoformat()} ({EXPIRES_SETTING})"
    return ending_verdict("the client secret", day, expires - now, ROTATE, warning)


def ending_verdict(
    which: str, day: str, left: dt.timedelta, advice: str, warning: dt.timedelta
) -> tuple[bool, str] | None:
    """A credential's verdict, ``left`` before its end on ``day``: ``(expired, message)`` or None when all is well.

    Shared by client secrets and certificates, so both warn and fail at the same edges in the same words.
    """
    if left <= dt.timedelta(0):
        return True, f"{which} expired on {day}: sign-in fails until you {advice}"
    if left <= warning:
        days = left.days
        when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
        return False, f"{which} expires {when}, on {day}: {advice}"
    return None
