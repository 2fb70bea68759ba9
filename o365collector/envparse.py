"""Small readers for app settings: each returns a typed value or raises ``ConfigError`` naming the setting.

Used by ``config`` and by every sink for its own ``SINK_*`` settings, so all settings fail the same way.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar
from urllib.parse import urlparse

from .errors import ConfigError
from .redaction import register_secret

Environ = Mapping[str, str]
T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Secret:
    """A setting value that must never be printed: ``repr``/``str`` show only that it is set.

    Creating one registers the value with ``redaction``, so no error text a peer echoes it in is logged,
    stored or served.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def get_str(env: Environ, name: str, default: str | None = None) -> str | None:
    """The setting stripped of whitespace; empty counts as unset."""
    value = env.get(name)
    if value is None or not value.strip():
        return default
    return value.strip()


def require_str(env: Environ, name: str, hint: str = "") -> str:
    value = get_str(env, name)
    if value is None:
        raise ConfigError(name, "is required but not set" + (f" ({hint})" if hint else ""))
    return value


# What App Service leaves in a setting whose Key Vault reference it could not resolve: the reference itself.
KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("
KEY_VAULT_UNRESOLVED = (
    "Key Vault reference not resolved: check the app's identity has Key Vault Secrets User "
    "and the secret exists"
)


def get_secret(env: Environ, name: str) -> Secret | None:
    """The secret, or None when unset. An unresolved Key Vault reference is refused here, naming the
    setting: sent to a login host as a secret, it would be reported as a wrong secret."""
    value = env.get(name)
    if value is None or not value.strip():
        return None
    if value.strip().startswith(KEY_VAULT_REFERENCE):
        raise ConfigError(name, KEY_VAULT_UNRESOLVED)
    return Secret(value.strip())


def get_int(env: Environ, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number within ``minimum``..``maximum``; give both, so a huge value is refused here and
    not met later as an ``OverflowError`` (``timedelta``) or a service refusal (queue limits)."""
    text = get_str(env, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:  # also a number of more than 4,300 digits (Python's conversion limit)
        raise ConfigError(name, f"{_short(text)!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ConfigError(name, f"{_short(str(value))} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"{_short(str(value))} is above the maximum {maximum}")
    return value


def get_float(
    env: Environ, name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None
) -> float:
    """A finite number within ``minimum``..``maximum``. NaN and infinity are refused: NaN compares
    false with every bound (``nan`` requests per minute would turn pacing off) and infinity overflows."""
    text = get_str(env, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(name, f"{_short(text)!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(name, f"{_short(text)!r} is not a finite number")
    if value < minimum:
        raise ConfigError(name, f"{value:g} is below the minimum {minimum:g}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"{value:g} is above the maximum {maximum:g}")
    return value


def _short(text: str, limit: int = 40) -> str:
    """A value as echoed in an error: a 5,000-digit number need not be printed whole."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def get_bool(env: Environ, name: str, default: bool) -> bool:
    text = get_str(env, name)
    if text is None:
        return default
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigError(name, f"{text!r} is not a boolean (use true or false)")


def get_choice(env: Environ, name: str, default: str, choices: tuple[str, ...]) -> str:
    """A value from ``choices``, matched case-insensitively and returned in its canonical spelling."""
    text = get_str(env, name)
    if text is None:
        return default
    for choice in choices:
        if choice.lower() == text.lower():
            return choice
    raise ConfigError(name, f"unknown value {text!r} (expected one of {', '.join(choices)})")


def get_list(env: Environ, name: str) -> list[str] | None:
    """A comma-separated list with blanks removed, or None when unset."""
    text = get_str(env, name)
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_guid(name: str, text: str) -> str:
    """A tenant or client id in canonical lower-case form."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ConfigError(
            name, f"{text!r} is not a GUID (expected the form 00000000-0000-0000-0000-000000000000)"
        ) from None


def get_https_url(env: Environ, name: str, *, allow_http_loopback: bool = False) -> str | None:
    """An absolute URL without trailing slash; https only (http only for loopback when allowed)."""
    text = get_str(env, name)
    if text is None:
        return None
    parsed = urlparse(text)
    if "@" in parsed.netloc or (not parsed.netloc and "@" in text):
        # Checked first and never echoed: userinfo is a credential (ours have settings of their own).
        raise ConfigError(name, "must not hold credentials (user:password@ before the host): expected https://host[:port]")
    loopback = parsed.hostname in {"127.0.0.1", "::1", "localhost"}
    if parsed.scheme not in {"https", "http"} or not parsed.hostname:
        raise ConfigError(name, f"{text!r} is not an absolute URL (expected https://host[:port])")
    if parsed.scheme == "http" and not (allow_http_loopback and loopback):
        raise ConfigError(name, f"{text!r} must use https")
    return text.rstrip("/")


def get_datetime(env: Environ, name: str) -> dt.datetime | None:
    """An ISO-8601 instant; without an offset it is taken as UTC (as the API's own timestamps are)."""
    text = get_str(env, name)
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(name, f"{text!r} is not an ISO-8601 date or time (e.g. 2026-11-01T00:00:00Z)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


class InvalidSettingsError(ConfigError):
    """Every setting error found in one pass, so an operator fixes them all at once instead of one per deploy.

    ``errors`` holds each ``ConfigError``; the message has one ``NAME: problem`` line per error. With a
    single error, ``setting``, ``problem`` and the message are that error's own.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        flat: list[ConfigError] = []
        for err in errors:
            for one in err.errors if isinstance(err, InvalidSettingsError) else [err]:
                if str(one) not in {str(e) for e in flat}:  # a setting read by two parsers is reported once
                    flat.append(one)
        if not flat:
            raise ValueError("InvalidSettingsError needs at least one error")
        self.errors: tuple[ConfigError, ...] = tuple(flat)
        if len(flat) == 1:
            super().__init__(flat[0].setting, flat[0].problem)
            return
        super().__init__(", ".join(dict.fromkeys(e.setting for e in flat)), f"{len(flat)} settings are invalid")
        self.args = ("\n".join(str(e) for e in flat),)

    def __str__(self) -> str:
        return str(self.args[0])


class Gatherer:
    """Reads settings one at a time and keeps every ``ConfigError`` instead of stopping at the first.

    ``gather.read(lambda: get_int(...), fallback)`` returns the value, or ``fallback`` after noting the
    error; ``raise_if_any()`` then raises one ``InvalidSettingsError`` listing them all.
    """

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def read(self, parse: Callable[[], T], fallback: T) -> T:
        try:
            return parse()
        except ConfigError as err:
            self.errors.append(err)
            return fallback

    def get_int(
        self, env: Environ, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        """``get_int``, noting an error and answering ``default`` instead of raising."""
        return self.read(lambda: get_int(env, name, default, minimum=minimum, maximum=maximum), default)

    def get_float(
        self, env: Environ, name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        """``get_float``, noting an error and answering ``default`` instead of raising."""
        return self.read(lambda: get_float(env, name, default, minimum=minimum, maximum=maximum), default)

    def raise_if_any(self) -> None:
        if self.errors:
            raise InvalidSettingsError(self.errors)
