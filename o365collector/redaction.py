"""One redaction step for every error text before it is logged, stored or served.

Peers answer with text we do not control: a receiver, a proxy or a token endpoint may echo the
request it got (headers, form fields, URL) in its error, and that text travels on in our exception
messages. Whatever reaches a log, the status table, ``status``/``health`` or the console passes
``redact`` first, which removes:

- every **registered secret value** (``register_secret``; each ``envparse.Secret`` registers itself
  when created, derived credentials are registered where they are derived) in the encodings an
  echo may show it in: as is, percent-encoded, JSON- and repr-escaped, HTML-escaped, base64, each
  line of a multi-line value, and the key parts of a connection string (``AccountKey=``,
  ``SharedAccessKey=``, ...);
- **credentials by their shape**, whatever their value: ``Bearer``/``Basic``/``Splunk``/``ApiKey``/
  ``SharedKey``/``SharedAccessSignature`` credentials, ``Authorization``, ``api-key``,
  ``x-functions-key`` and similar headers, ``client_secret=``, ``client_assertion=``, ``sig=``,
  ``AccountKey=``, ``SharedAccessKey=`` fields, and ``scheme://user:password@`` URL credentials;
- **line breaks and other control characters**, escaped (``\\r``, ``\\n``, ``\\x1b``), so a peer cannot
  forge log lines (tracebacks keep their line breaks: ``keep_newlines``).

``install_log_redaction`` makes every log record's final message (and its traceback) redacted,
whichever logger created it, the Azure SDK's included; the runtime and the command line install it.
Values shorter than ``MIN_SECRET_CHARS`` are not registered: masking every short word would make
messages unreadable, and the shape rules still catch such credentials in headers and fields.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus

from .errors import error_chain

MASK = "***"
MIN_SECRET_CHARS = 6
# The parts of a connection string (storage, Event Hubs, SQL-style) that are credentials on their own.
_KEY_PARTS = frozenset({"accountkey", "sharedaccesskey", "sharedaccesssignature", "password", "pwd", "sig"})

_secrets: set[str] = set()
_lock = threading.Lock()
_compiled: re.Pattern[str] | None = None

# Credentials after an HTTP auth scheme. The credential must be 8+ token characters with one that is
# not a lower-case letter, so prose ("Basic authentication", "the Bearer token") is left alone.
_CREDENTIAL = r"""[^\s'"`<>,;(){}\[\]]"""
_SCHEME = re.compile(
    rf"(?i:\b(Bearer|Basic|Splunk|ApiKey|SharedKey|SharedAccessSignature|Token|Digest))(\s+)"
    rf"(?={_CREDENTIAL}*[^a-z\s'\"`<>,;(){{}}\[\]])({_CREDENTIAL}{{8,}})"
)
# Headers whose whole value is a credential, as "Name: value" (wire, logs) or "Name=value".
_HEADERS = (
    r"authorization|proxy-authorization|x-api-key|api-key|apikey|x-functions-key|ocp-apim-subscription-key"
    r"|x-ms-authorization-auxiliary|cookie|set-cookie"
)
# Fields and parameters that are credentials ("client_secret=...", "AccountKey=...;", "sig=...&").
_FIELDS = (
    _HEADERS + r"|client_secret|client_assertion|accountkey|sharedaccesskey|sharedaccesssignature|sig|password"
    r"|access_token|refresh_token|id_token"
)
_SCHEME_WORD = r"(?:(?:Bearer|Basic|Splunk|ApiKey|SharedKey|SharedAccessSignature|Token|Digest|Negotiate)\s+)?"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host (or scheme://token@host): the whole userinfo goes.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s@'\"<>]+@"), rf"\1{MASK}@"),
    # "name": "value" / 'name': 'value' (JSON, Python reprs of header dicts and forms).
    (
        re.compile(rf"""(?i)(["'])({_FIELDS})\1(\s*[:=]\s*)(["'])(?:\\.|(?!\4)[^\\])*\4"""),
        rf"\1\2\1\3\4{MASK}\4",
    ),
    # name: value (a header line); the value may be "scheme credential".
    (re.compile(rf"(?i)(?<![\w-])({_HEADERS})(\s*:\s*){_SCHEME_WORD}[^\s,;'\"]+"), rf"\1\2{MASK}"),
    # name=value (forms, query strings, connection strings).
    (re.compile(rf"(?i)(?<![\w-])({_FIELDS})={_SCHEME_WORD}[^&;\s'\",]+"), rf"\1={MASK}"),
    (_SCHEME, rf"\1\2{MASK}"),
)


def register_secret(value: str) -> None:
    """Remember a secret value (a setting's, a derived credential's) so ``redact`` removes it in every encoding."""
    if not value:
        return
    forms = _forms(value)
    global _compiled
    with _lock:
        if forms - _secrets:
            _secrets.update(forms)
            _compiled = None


def register_secrets(values: Iterable[str]) -> None:
    for value in values:
        register_secret(value)


def redact(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` without secret values, credentials or URL userinfo, control characters escaped.

    ``keep_newlines`` keeps LF (for tracebacks and other multi-line text whose lines are ours).
    """
    if not text:
        return text
    pattern = _secret_pattern()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for rule, replacement in _PATTERNS:
        text = rule.sub(replacement, text)
    return _escape(text, keep_newlines=keep_newlines)


def shown_host(netloc: str) -> str:
    """A URL's host (and port) to name in a message: printable, and without any ``user:password@``."""
    return printable(netloc.rpartition("@")[2])


def printable(text: str) -> str:
    """``text`` with control characters (CR, LF, ESC, ...) escaped, for ids and URIs in logs."""
    return _escape(text, keep_newlines=False)


def summary(text: str, limit: int = 300) -> str:
    """A short, one-line, redacted form of ``text`` for the status table, health answers and sinks' errors.

    Redacted before it is cut (cutting first could leave the start of a secret that no longer matches), and
    cut between words with an ellipsis: a message that ends mid-word reads as if the service's text were garbled.
    """
    cleaned = " ".join(redact(text).split())
    if len(cleaned) <= limit:
        return cleaned
    cut = cleaned[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:  # one very long token (a URL) is cut inside rather than dropped whole
        cut = cut[:space]
    return cut.rstrip(" ,;:.(") + "…"


def describe(err: BaseException, limit: int = 300) -> str:
    """``code: short redacted message`` of an exception: what health and status serve, never raw text."""
    code = getattr(err, "code", None) or type(err).__name__
    text = summary(str(err), limit)
    return f"{code}: {text}" if text and str(code) not in text else (text or str(code))


def scrub_exception(err: BaseException) -> None:
    """Redact the text an exception chain carries (args, ``message``), before it travels to code we do not own.

    The Functions host and ``traceback`` print an escaping exception with its causes; a cause from an SDK
    may quote a peer's answer that echoed a credential.
    """
    for current in list(error_chain(err)):  # listed first: redacting args changes what the walk would follow
        try:
            current.args = tuple(redact(a, keep_newlines=True) if isinstance(a, str) else a for a in current.args)
            message = getattr(current, "message", None)
            if isinstance(message, str):
                current.message = redact(message, keep_newlines=True)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass  # an exception type with read-only attributes: its text is redacted where it is printed


# -- logging --------------------------------------------------------------------------------------------

_FACTORY_MARK = "_o365collector_redacting"
_traceback_formatter = logging.Formatter()


def install_log_redaction() -> None:
    """Make every log record's message, traceback and stack redacted when it is created (idempotent).

    A record factory rather than a handler filter: it covers every logger and every handler, including
    the Functions host's and pytest's, and the Azure SDK's DEBUG records.
    """
    with _lock:
        current = logging.getLogRecordFactory()
        if getattr(current, _FACTORY_MARK, False):
            return

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = current(*args, **kwargs)
            redact_record(record)
            return record

        setattr(factory, _FACTORY_MARK, True)
        logging.setLogRecordFactory(factory)


def redact_record(record: logging.LogRecord) -> None:
    """Replace the record's message by its redacted final text; the traceback becomes redacted text."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: keep the template, never the raw arguments
        message = f"{record.msg} (unformattable log arguments)"
    record.msg = redact(message)
    record.args = ()
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = _traceback_formatter.formatException(record.exc_info)
        # Handlers that read the exception object itself (telemetry exporters) would see its raw text.
        record.exc_info = None
    if record.exc_text:
        record.exc_text = redact(record.exc_text, keep_newlines=True)
    if record.stack_info:
        record.stack_info = redact(record.stack_info, keep_newlines=True)


# -- internals ------------------------------------------------------------------------------------------


def _secret_pattern() -> re.Pattern[str] | None:
    global _compiled
    with _lock:
        if _compiled is None and _secrets:
            # Longest first: an alternation takes the first alternative that matches.
            ordered = sorted(_secrets, key=len, reverse=True)
            _compiled = re.compile("|".join(re.escape(value) for value in ordered))
        return _compiled


def _forms(value: str) -> set[str]:
    """``value`` and the encodings an echo may show it in, each at least ``MIN_SECRET_CHARS`` long."""
    pieces = {value, value.strip()}
    # A multi-line value (a stray CR/LF, a PEM): error texts are often cut at the first line break.
    pieces.update(line.strip() for line in re.split(r"[\r\n]+", value))
    # Connection strings: the SDKs sign with the key part alone, and messages may quote it alone.
    for part in value.split(";"):
        key, sep, item = part.partition("=")
        if sep and key.strip().lower() in _KEY_PARTS:
            pieces.add(item.strip())
            pieces.update(v for k, v in parse_qsl(item.strip()) if k.lower() == "sig")
    forms: set[str] = set()
    for piece in pieces:
        if len(piece) < MIN_SECRET_CHARS:
            continue
        raw = piece.encode()
        forms.update(
            (
                piece,
                quote(piece, safe=""),
                quote(piece),
                quote_plus(piece, safe=""),
                json.dumps(piece)[1:-1],
                json.dumps(piece, ensure_ascii=False)[1:-1],
                repr(piece)[1:-1],
                _escape(piece, keep_newlines=False),
                html.escape(piece),
                base64.b64encode(raw).decode("ascii"),
                base64.b64encode(raw).decode("ascii").rstrip("="),
                base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="),
            )
        )
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def _escape(text: str, *, keep_newlines: bool) -> str:
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or (keep_newlines and c == "\n") else repr(c)[1:-1] for c in text
    )
