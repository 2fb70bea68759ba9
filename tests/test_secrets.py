"""Secrets are never logged, printed, stored or served, even when a peer echoes them back.

Every secret setting gets a canary value. The peers echo what they receive: a loopback receiver that
answers every request (HTTP sink, Splunk HEC, Elasticsearch ``_bulk``) with 400 and the
credentials it was sent, in the shape each backend uses for errors; and the simulator's token endpoint
refusing every sign-in with the request's form quoted. Then every place a secret could surface is
searched for every canary in every encoding: every logger's records at DEBUG (the SDKs' included),
stdout and stderr of ``run --once``, ``check``, ``status``, ``status --json`` and ``replay-poison``,
the status table's rows and the health endpoint's body.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from azure.data.tables import TableClient

from o365collector import cli, runtime
from o365collector.azurite import Azurite
from o365collector.health import health_response
from o365collector.redaction import printable
from o365collector.simulator import Simulator, TenantSpec
from tests.loopback import LoopbackService, OwnedHandler
from tests.support import TENANT, EnvFactory

SDK_LOGGERS = ("azure", "msal", "urllib3", "o365collector")
# Request headers that carry no credential: not echoed, to keep the echo within the sinks' excerpt length.
PLAIN_HEADERS = frozenset(
    {"host", "user-agent", "accept", "accept-encoding", "connection", "content-type", "content-length",
     "content-encoding", "x-splunk-request-channel"}
)  # fmt: skip


# -- a peer that echoes -------------------------------------------------------------------------------


def echo_text(headers: dict[str, str]) -> str:
    """What the peer says back: the credentials alone first (as a careless error page would), then the headers."""
    shown: list[str] = []
    for name, value in headers.items():
        if name in PLAIN_HEADERS or name.startswith("x-o365-"):
            continue
        shown.append(value)
        scheme, _, credential = value.partition(" ")
        if credential:
            shown.append(credential)
            if scheme.lower() == "basic":
                shown.append(base64.b64decode(credential).decode())
    listed = "; ".join(f"{n}: {v}" for n, v in headers.items() if n not in PLAIN_HEADERS)
    return f"refused {' '.join(shown)} | {listed}"


class _EchoHandler(OwnedHandler):
    def _echo(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        length = int(headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        text = echo_text(headers)
        cast_owner: EchoServer = self.owner  # type: ignore[assignment]
        cast_owner.seen.append(text)
        if "/services/collector" in self.path:  # Splunk HEC's error shape
            body, kind = json.dumps({"text": text, "code": 6}).encode(), "application/json"
        elif self.path == "/" or "_bulk" in self.path or self.path.startswith("/audit"):  # Elasticsearch's
            body = json.dumps({"error": {"type": "security_exception", "reason": text}, "status": 400}).encode()
            kind = "application/json"
        else:  # anything else (the HTTP sink): plain text
            body, kind = text.encode(), "text/plain"
        self.send_response(400)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = _echo


class EchoServer(LoopbackService):
    kind = "echo server"

    def __init__(self) -> None:
        self.seen: list[str] = []
        super().__init__(_EchoHandler, tls=False, timeout=10.0, name="echo")


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


# -- canaries ------------------------------------------------------------------------------------------


@dataclass
class Canaries:
    """One fresh value per secret setting, and the derived credentials the wire carries."""

    client_secret: str
    message_key: str
    http_bearer: str
    http_header_key: str
    http_functions_key: str
    splunk_token: str
    es_password: str
    es_api_key: str  # given as the id:key pair, which the sink encodes
    la_client_secret: str

    @classmethod
    def fresh(cls) -> Canaries:
        def one(label: str) -> str:
            return f"canary-{label}-{uuid.uuid4().hex[:10]}"

        return cls(
            # A line break inside: error texts cut at it must not leave either half behind.
            client_secret=f"{one('cs')}\r\n{one('cs2')}",
            message_key=one("mk") + uuid.uuid4().hex,  # O365_MESSAGE_KEY needs 32+ characters
            http_bearer=one("bearer"),
            http_header_key=one("hdr"),
            http_functions_key=one("fnkey"),
            splunk_token=str(uuid.uuid4()),
            es_password=one("pw"),
            es_api_key=f"{uuid.uuid4().hex[:20]}:{one('eskey')}",
            la_client_secret=one("la"),
        )

    def values(self) -> dict[str, str]:
        derived = {
            "es basic": base64.b64encode(f"collector:{self.es_password}".encode()).decode(),
            "es basic pair": f"collector:{self.es_password}",
            "es api key encoded": base64.b64encode(self.es_api_key.encode()).decode(),
            "es api key alone": self.es_api_key.partition(":")[2],
        }
        lines = {f"client secret line {i}": line for i, line in enumerate(self.client_secret.splitlines())}
        return {**vars(self), **derived, **lines}

    def forms(self) -> dict[str, str]:
        """Every value in every encoding a leak could take."""
        found: dict[str, str] = {}
        for name, value in self.values().items():
            for encoding, form in {
                "raw": value,
                "percent": quote(value, safe=""),
                "form": quote_plus(value, safe=""),
                "json": json.dumps(value)[1:-1],
                "escaped": printable(value),
                "base64": base64.b64encode(value.encode()).decode(),
            }.items():
                found[f"{name} ({encoding})"] = form
        return found

    def env(self, echo: EchoServer, simulator: Simulator, sinks: str) -> dict[str, str]:
        return {
            "O365_CLIENT_SECRET": self.client_secret,
            "O365_MESSAGE_KEY": self.message_key,
            "SINK_TYPE": sinks,
            "SINK_URL": f"{echo.base_url}/ingest",
            "SINK_HTTP_GZIP": "false",
            "SINK_HTTP_MAX_ATTEMPTS": "1",
            "SINK_HTTP_BEARER_TOKEN": self.http_bearer,
            "SINK_HTTP_HEADERS": json.dumps(
                {"X-Api-Key": self.http_header_key, "X-Functions-Key": self.http_functions_key}
            ),
            "SINK_SPLUNK_URL": echo.base_url,
            "SINK_SPLUNK_TOKEN": self.splunk_token,
            "SINK_SPLUNK_MAX_ATTEMPTS": "1",
            "SINK_ELASTICSEARCH_URL": echo.base_url,
            "SINK_ELASTICSEARCH_INDEX": "audit",
            "SINK_ELASTICSEARCH_MAX_ATTEMPTS": "1",
            "SINK_LOGANALYTICS_ENDPOINT": simulator.authority_url,
            "SINK_LOGANALYTICS_DCR_ID": "dcr-" + "0" * 32,
            "SINK_LOGANALYTICS_AUTHORITY_HOST": simulator.authority_url,
            "SINK_LOGANALYTICS_TENANT_ID": str(uuid.uuid4()),
            "SINK_LOGANALYTICS_APP_CLIENT_ID": str(uuid.uuid4()),
            "SINK_LOGANALYTICS_CLIENT_SECRET": self.la_client_secret,
            "SINK_LOGANALYTICS_MAX_RETRIES": "0",
            "O365_MAX_DEQUEUE_COUNT": "1",
            "O365_CONTENT_TYPES": "Audit.Exchange",
        }


def leaks(canaries: Canaries, texts: dict[str, str]) -> list[str]:
    return [f"{form_name} in {where}" for where, text in texts.items() for form_name, form in canaries.forms().items()
            if form in text]  # fmt: skip


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture
def every_logger_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Root, the SDKs' loggers and their children at DEBUG, whatever earlier tests or the CLI set; restored after."""
    # caplog first: it restores the root level it finds at teardown, which must be the original one.
    caplog.set_level(logging.DEBUG)
    manager = logging.root.manager
    named = [n for n in manager.loggerDict if n.split(".")[0] in SDK_LOGGERS]
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in {*SDK_LOGGERS, *named})]
    saved = [(lg, lg.level, lg.propagate, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG if lg.name in (*SDK_LOGGERS, "root") else logging.NOTSET)
        lg.propagate = lg.name != "root"
        lg.disabled = False
    yield caplog
    for lg, level, propagate, disabled in saved:
        lg.setLevel(level)
        lg.propagate = propagate
        lg.disabled = disabled


@pytest.fixture
def canaries(simulator: Simulator) -> Canaries:
    values = Canaries.fresh()
    simulator.add_tenant(
        TenantSpec(
            tenant_id=CANARY_TENANT,
            client_id=TENANT.client_id,
            client_secret=values.client_secret,
            roles=TENANT.roles,
            audit_enabled=True,
            subscribed=TENANT.subscribed,
        )
    )
    now = dt.datetime.now(dt.UTC)
    simulator.generate(CANARY_TENANT, "Audit.Exchange", now - dt.timedelta(hours=3), now - dt.timedelta(hours=1),
                       blob_every=dt.timedelta(hours=1))  # fmt: skip
    return values


CANARY_TENANT = "c0000000-0000-4000-8000-00000000000c"


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """The CLI and the Functions entry points read os.environ."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def cli_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(["--log-level", "DEBUG", *argv])
    out, err = capsys.readouterr()
    return code, f"{out}\n{err}"


def status_rows(azurite: Azurite, table: str) -> str:
    client = TableClient.from_connection_string(azurite.connection_string, table_name=table)
    return "\n".join(json.dumps(dict(e), default=str) for e in client.list_entities())


def health_body() -> str:
    runtime.reset_collector()
    try:
        status, body = runtime.health()
    finally:
        runtime.reset_collector()
    return f"{status} {body.decode()}"


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join([caplog.text, *(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)])


# -- the tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sink", "auth"),
    [("http", {}), ("splunk", {}), ("elasticsearch", {"SINK_ELASTICSEARCH_USERNAME": "collector"}),
     ("elasticsearch", {"SINK_ELASTICSEARCH_API_KEY": ""})],
    ids=["http", "splunk", "elasticsearch-basic", "elasticsearch-api-key"],
)  # fmt: skip
def test_a_sink_peer_echoing_our_credentials_leaks_nothing_anywhere(
    sink: str,
    auth: dict[str, str],
    canaries: Canaries,
    echo: EchoServer,
    simulator: Simulator,
    azurite: Azurite,
    make_env: EnvFactory,
    names: dict[str, str],
    every_logger_at_debug: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = make_env(O365_TENANT_ID=CANARY_TENANT, **canaries.env(echo, simulator, sink))
    if sink == "elasticsearch":
        key = "SINK_ELASTICSEARCH_API_KEY" if "SINK_ELASTICSEARCH_API_KEY" in auth else "SINK_ELASTICSEARCH_PASSWORD"
        env[key] = canaries.es_api_key if key == "SINK_ELASTICSEARCH_API_KEY" else canaries.es_password
        env.update({k: v for k, v in auth.items() if v})
    use_env(monkeypatch, env)

    outputs: dict[str, str] = {}
    code, outputs["run --once"] = cli_run(capsys, "run", "--once")
    assert code == 1, "the blob was refused and poisoned"
    _, outputs["check"] = cli_run(capsys, "check")  # the HTTP sink's probe passes on a 400: others' fail
    _, outputs["status"] = cli_run(capsys, "status")
    _, outputs["status --json"] = cli_run(capsys, "status", "--json")
    outputs["health"] = health_body()
    _, outputs["replay-poison --dry-run"] = cli_run(capsys, "replay-poison", "--dry-run")
    _, outputs["replay-poison"] = cli_run(capsys, "replay-poison")
    outputs["status table"] = status_rows(azurite, names["O365_STATUS_TABLE"])
    outputs["logs"] = log_text(every_logger_at_debug)

    # The peer did echo our credentials, and its answer reached every output: the test can see a leak.
    assert echo.seen
    assert all("refused " in text for text in echo.seen)
    assert leaks(canaries, {"the echo": "\n".join(echo.seen)}), "the echo holds the credentials"
    assert "answered 400" in outputs["status table"] or "400" in outputs["status table"]
    assert "answered 400" in outputs["status --json"] or "400" in outputs["status --json"]
    assert leaks(canaries, outputs) == []


def test_a_token_endpoint_echoing_the_sign_in_form_leaks_no_client_secret(
    canaries: Canaries,
    echo: EchoServer,
    simulator: Simulator,
    azurite: Azurite,
    make_env: EnvFactory,
    names: dict[str, str],
    every_logger_at_debug: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """O365_CLIENT_SECRET (with a line break) and SINK_LOGANALYTICS_CLIENT_SECRET both go to the echoing endpoint."""
    env = make_env(O365_TENANT_ID=CANARY_TENANT, **canaries.env(echo, simulator, "loganalytics"))
    use_env(monkeypatch, env)
    simulator._tokens.echo_requests = True

    outputs: dict[str, str] = {}
    code, outputs["check"] = cli_run(capsys, "check")
    assert code == 1
    code, outputs["run --once"] = cli_run(capsys, "run", "--once")
    assert code == 1
    _, outputs["status"] = cli_run(capsys, "status")
    _, outputs["status --json"] = cli_run(capsys, "status", "--json")
    outputs["health"] = health_body()
    outputs["status table"] = status_rows(azurite, names["O365_STATUS_TABLE"])
    outputs["logs"] = log_text(every_logger_at_debug)

    assert "AADSTS50000" in outputs["check"], "the echo was reported"
    assert "AADSTS50000" in outputs["status table"], "the echo was stored"
    assert "client_secret" in outputs["status table"], "the echoed form (its secret removed) reached the table"
    assert leaks(canaries, outputs) == []


def test_the_health_body_of_a_collector_that_cannot_start_is_a_code_and_a_redacted_summary(
    canaries: Canaries, every_logger_at_debug: pytest.LogCaptureFixture
) -> None:
    from o365collector.envparse import Secret

    Secret(canaries.http_bearer)

    def broken() -> Any:
        bearer = canaries.http_bearer
        raise RuntimeError(f"storage said: Authorization: Bearer {bearer}\r\nx-ms-key: {bearer}")

    status, body = health_response(broken)
    assert status == 503
    problems = json.loads(body)["problems"]
    assert problems[0].startswith("status unavailable: RuntimeError: storage said:")
    assert "\r" not in problems[0]
    assert "\n" not in problems[0]
    assert leaks(canaries, {"health": body.decode(), "logs": log_text(every_logger_at_debug)}) == []
