"""The redaction layer on its own: registered secrets in every encoding, credentials by shape, control
characters, the log record factory, and URL settings that hold credentials."""

from __future__ import annotations

import base64
import html
import json
import logging
import uuid
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest

from o365collector import redaction
from o365collector.envparse import Secret, get_https_url
from o365collector.errors import ConfigError
from o365collector.redaction import MASK, describe, redact, register_secret, shown_host, summary


def canary(label: str = "canary") -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


ENCODINGS = {
    "as is": lambda v: v,
    "percent-encoded": lambda v: quote(v, safe=""),
    "form-encoded": lambda v: quote_plus(v, safe=""),
    "JSON-escaped": lambda v: json.dumps(v)[1:-1],
    "repr-escaped": lambda v: repr(v)[1:-1],
    "HTML-escaped": html.escape,
    "base64": lambda v: base64.b64encode(v.encode()).decode(),
    "base64url": lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("="),
}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_registered_secret_is_removed_in_every_encoding(encoding: str) -> None:
    value = canary() + ' "&<>/+ é!'  # characters every encoding changes
    register_secret(value)
    shown = ENCODINGS[encoding](value)
    text = redact(f"the receiver said: invalid key {shown} (try again)")
    assert shown not in text
    assert f"invalid key {MASK}" in text


def test_the_key_parts_of_a_connection_string_are_secrets_on_their_own() -> None:
    account_key = base64.b64encode(uuid.uuid4().bytes * 2).decode()
    access_key = base64.b64encode(uuid.uuid4().bytes).decode()
    Secret(f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={account_key};EndpointSuffix=core.windows.net")
    Secret(f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={access_key}")
    text = redact(f"signing failed with key {account_key}; the hub refused {quote(access_key, safe='')}")
    assert account_key not in text
    assert access_key not in text
    assert quote(access_key, safe="") not in text


def test_each_line_of_a_secret_with_a_line_break_is_removed_and_breaks_are_escaped() -> None:
    first, second = canary("first"), canary("second")
    Secret(f"{first}\r\n{second}")
    # An error text cut at the line break, and one quoting it whole.
    assert redact(f"bad secret {first}") == f"bad secret {MASK}"
    assert redact(f"echo {first}\r\n{second}\r\nforged line") == f"echo {MASK}\\r\\nforged line"
    assert first not in redact(f"echo {first}\\r\\n{second}")  # already escaped by a peer


def test_values_too_short_to_be_secrets_are_not_registered() -> None:
    register_secret("abc")
    assert redact("abc abc") == "abc abc"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer eyJ0eXAi.eyJhdWQi.c2ln and more", f"Authorization: {MASK} and more"),
        ("authorization=Splunk 0f1e2d3c-aaaa-bbbb-cccc-000011112222", f"authorization={MASK}"),
        ("{'Authorization': 'Basic dXNlcjpwYXNz', 'X-Api-Key': 'k-123'}",
         f"{{'Authorization': '{MASK}', 'X-Api-Key': '{MASK}'}}"),
        ('{"client_secret": "a\\"b", "x": 1}', f'{{"client_secret": "{MASK}", "x": 1}}'),
        ("client_id=abc&client_secret=s3cr%21t&scope=x", f"client_id=abc&client_secret={MASK}&scope=x"),
        ("client_assertion=eyJhbGciOi.x.y&client_id=1", f"client_assertion={MASK}&client_id=1"),
        ("x-functions-key: AbC123xyz==", f"x-functions-key: {MASK}"),
        ("api-key: 0123456789abcdef", f"api-key: {MASK}"),
        ("AccountName=a;AccountKey=QUJDREVG==;Endpoint", f"AccountName=a;AccountKey={MASK};Endpoint"),
        ("SharedAccessKeyName=send;SharedAccessKey=abcDEF123=", f"SharedAccessKeyName=send;SharedAccessKey={MASK}"),
        ("https://a.blob.core.windows.net/c?sv=2024&sig=abc%2Bdef&se=1", f"https://a.blob.core.windows.net/c?sv=2024&sig={MASK}&se=1"),
        ("SharedAccessSignature sr=sb%3A%2F%2Fns&sig=x&se=1&skn=send", f"SharedAccessSignature {MASK}"),
        ("ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWky", f"ApiKey {MASK}"),
        ("Authorization: SharedKey devstoreaccount1:c2lnbmF0dXJl", f"Authorization: {MASK}"),
        ("at https://user:p%40ss@proxy.example:8080/x failed", f"at https://{MASK}@proxy.example:8080/x failed"),
        ("https://ghp_token123@github.com/org/repo", f"https://{MASK}@github.com/org/repo"),
        ("a\x1b[2Jb\x00c\u202ed", "a\\x1b[2Jb\\x00c\\u202ed"),
    ],
)  # fmt: skip
def test_credentials_are_removed_by_their_shape_whatever_their_value(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "prose",
    [
        "Basic authentication is not enabled",
        "send the Bearer token in the header",
        "the Splunk HEC refused the token (check SINK_SPLUNK_TOKEN)",
        "SINK_ELASTICSEARCH_USERNAME / SINK_ELASTICSEARCH_PASSWORD: is required",
        "AADSTS7000215: the client secret is wrong: copy the secret's Value into O365_CLIENT_SECRET",
        "http://127.0.0.1:8080 answered 400: no data",
    ],
)
def test_our_own_words_pass_unchanged(prose: str) -> None:
    assert redact(prose) == prose


def test_newlines_are_kept_only_when_asked() -> None:
    assert redact("one\ntwo\rthree", keep_newlines=True) == "one\ntwo\\rthree"
    assert redact("one\ntwo") == "one\\ntwo"


def test_a_summary_is_redacted_before_it_is_cut() -> None:
    value = canary() * 4
    register_secret(value)
    text = summary("x" * 290 + value, limit=300)
    assert value[:5] not in text.removeprefix("x" * 290)
    assert len(text) <= 300


def test_describe_gives_the_code_and_a_short_redacted_text() -> None:
    value = canary()
    register_secret(value)

    class RefusedError(Exception):
        code = "E42"

    assert describe(RefusedError(f"peer said {value}\nsecond line")) == f"E42: peer said {MASK}\\nsecond line"


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    caught: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            self.format(record)
            caught.append(record)

    sdk = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    handler = Keep(logging.DEBUG)
    saved = sdk.level, sdk.propagate
    sdk.setLevel(logging.DEBUG)
    sdk.propagate = False
    sdk.addHandler(handler)
    yield caught
    sdk.removeHandler(handler)
    sdk.setLevel(saved[0])
    sdk.propagate = saved[1]


def test_every_log_record_is_redacted_when_created_whichever_logger_made_it(records: list[logging.LogRecord]) -> None:
    value = canary()
    register_secret(value)
    redaction.install_log_redaction()
    installed = logging.getLogRecordFactory()
    redaction.install_log_redaction()
    assert logging.getLogRecordFactory() is installed, "installing twice must not wrap twice"

    sdk = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    sdk.debug("Request headers: %s", {"Authorization": "Bearer eyJ0eXAi.eyJhdWQi.c2ln", "x-key": value})
    try:
        raise RuntimeError(f"peer echoed {value}\r\nforged: entry")
    except RuntimeError:
        sdk.exception("request failed for %s", value)
    first, second = records
    assert first.getMessage() == f"Request headers: {{'Authorization': '{MASK}', 'x-key': '{MASK}'}}"
    assert value not in second.getMessage()
    assert second.exc_text is not None
    assert value not in second.exc_text
    assert "\\r" in second.exc_text
    assert "RuntimeError" in second.exc_text
    assert second.exc_info is None, "the raw exception must not reach handlers that read it"


@pytest.mark.parametrize("setting", ["O365_API_URL", "O365_AUTHORITY_HOST"])
@pytest.mark.parametrize("url", ["https://admin:{v}@manage.office.com", "https://{v}@login.example", "admin:{v}@host"])
def test_url_settings_with_credentials_are_refused_without_echoing_them(setting: str, url: str) -> None:
    value = canary()
    with pytest.raises(ConfigError) as caught:
        get_https_url({setting: url.format(v=value)}, setting)
    assert setting in str(caught.value)
    assert "credentials" in str(caught.value)
    assert value not in str(caught.value)


def test_a_host_named_in_a_message_keeps_its_port_and_drops_userinfo_and_control_characters() -> None:
    assert shown_host("operator:hunter2@evil.example:8443") == "evil.example:8443"
    assert shown_host("token@a@b.example") == "b.example"
    assert shown_host("manage.office.com") == "manage.office.com"
    assert shown_host("evil\r\n.example") == "evil\\r\\n.example"
