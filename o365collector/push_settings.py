"""Push mode's settings (``O365_WEBHOOK_*``), parsed once into ``Settings.push``.

Push mode is on when ``O365_WEBHOOK_AUTH_ID`` is set: the webhook receiver then takes notifications
whose ``Webhook-AuthID`` header carries that value, and ``subscriptions start --webhook`` sends it as the
webhook's ``authId``. Unset, the receiver refuses every request (503) and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .envparse import Environ, Secret, get_secret, get_str
from .errors import ConfigError

AUTH_ID_SETTING = "O365_WEBHOOK_AUTH_ID"
ARRIVAL_TABLE_SETTING = "O365_ARRIVAL_TABLE"
# The authId is the webhook's only proof of origin (the service sends it back verbatim): as long as an
# HMAC key, so it cannot be guessed. ``openssl rand -hex 24`` gives 48 characters.
MIN_AUTH_ID_CHARS = 32
# The service echoes the authId in a header: printable ASCII only, or the header could not carry it.
MAX_AUTH_ID_CHARS = 256
DEFAULT_ARRIVAL_TABLE = "o365arrivals"


@dataclass(frozen=True, slots=True)
class PushSettings:
    auth_id: Secret | None = None
    """The shared secret the service sends back in ``Webhook-AuthID``; None: push mode off."""
    arrival_table: str = DEFAULT_ARRIVAL_TABLE
    """Which blobs arrived by push, by poll or both (and the receiver's refusal counters)."""

    @property
    def enabled(self) -> bool:
        return self.auth_id is not None

    @classmethod
    def from_env(cls, env: Environ) -> PushSettings:
        auth_id = get_secret(env, AUTH_ID_SETTING)
        if auth_id is not None:
            value = auth_id.reveal()
            if len(value) < MIN_AUTH_ID_CHARS or len(value) > MAX_AUTH_ID_CHARS:
                raise ConfigError(
                    AUTH_ID_SETTING,
                    f"must be {MIN_AUTH_ID_CHARS} to {MAX_AUTH_ID_CHARS} random characters (openssl rand -hex 24)",
                )
            if not (value.isascii() and value.isprintable()) or " " in value:
                raise ConfigError(
                    AUTH_ID_SETTING, "must be printable ASCII without spaces (it travels in an HTTP header)"
                )
        table = get_str(env, ARRIVAL_TABLE_SETTING) or DEFAULT_ARRIVAL_TABLE
        if not (3 <= len(table) <= 63 and table.isascii() and table[0].isalpha() and table.isalnum()):
            raise ConfigError(
                ARRIVAL_TABLE_SETTING,
                f"{table[:40]!r} is not a valid table name (3-63 letters and digits, starting with a letter)",
            )
        return cls(auth_id=auth_id, arrival_table=table)
