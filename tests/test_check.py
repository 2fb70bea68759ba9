"""``check`` against the simulator and Azurite: each step fails with its documented message when its cause
is injected, and passes otherwise; the exit code is 0 only when every step passed."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from o365collector import cli
from o365collector.config import Settings
from o365collector.diagnose import (
    AUDIT_OFF_HINT,
    CLOCK_HINT,
    MISSING_ROLE_HINT,
    SUBSCRIPTIONS_HINT,
    WRONG_TENANT_HINT,
    Step,
    Verdict,
    diagnose,
    token_claims,
)
from o365collector.models import CONTENT_TYPES
from o365collector.runtime import Collector
from o365collector.simulator import Simulator, TenantSpec
from o365collector.simulator.keyvault import PKCS12
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory
from tests.test_keyvault_certificate import IDENTITY, PRINCIPAL, import_registered

OTHER = "22222222-3333-4444-8555-666666666666"
NOT_A_TENANT = "99999999-2222-4333-8444-555555555555"


def spec(tenant_id: str, **changes: object) -> TenantSpec:
    base = {
        "tenant_id": tenant_id,
        "client_id": TENANT.client_id,
        "client_secret": TENANT.client_secret,
        "roles": TENANT.roles,
        "audit_enabled": True,
        "subscribed": CONTENT_TYPES,
    }
    return TenantSpec(**(base | changes))  # type: ignore[arg-type]


def run(env: dict[str, str], *, start: bool = False) -> dict[str, Step]:
    steps = list(diagnose(env, confirm=lambda _question: start))
    return {s.name: s for s in steps}


def verdicts(steps: dict[str, Step]) -> dict[str, Verdict]:
    return {name: s.verdict for name, s in steps.items()}


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as server:
        yield server


def test_every_step_passes_on_a_healthy_deployment(make_env: EnvFactory) -> None:
    steps = run(make_env())
    assert list(steps) == [
        "settings", "token", "permissions", "subscriptions", "audit logging", "clock", "storage", "first run",
        "sink file",
    ]  # fmt: skip
    assert all(s.verdict is Verdict.OK for s in steps.values()), [s.line() for s in steps.values()]
    assert "ActivityFeed.ReadDlp" in steps["permissions"].detail
    assert "Audit.AzureActiveDirectory" in steps["audit logging"].detail


def test_cli_prints_one_line_per_step_and_exits_0_only_when_all_pass(
    make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in make_env().items():
        monkeypatch.setenv(key, value)
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:-1]] == ["OK"] * 9
    assert out[-1] == "all checks passed"

    monkeypatch.setenv("O365_CLIENT_SECRET", "not-the-secret")
    assert cli.main(["check", "--json"]) == 1
    steps = orjson.loads(capsys.readouterr().out)
    assert [s["result"] for s in steps if s["step"] == "token"] == ["FAIL"]
    assert "not-the-secret" not in orjson.dumps(steps).decode()


def test_invalid_settings_fail_the_first_step_naming_the_setting(make_env: EnvFactory) -> None:
    steps = run(make_env(O365_CONTENT_TYPES="Audit.Exchange,Audit.Foo"))
    assert verdicts(steps) == {"settings": Verdict.FAIL}
    assert steps["settings"].detail.startswith("O365_CONTENT_TYPES: unknown content type 'Audit.Foo'")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong secret", "AADSTS7000215: the client secret is wrong"),
        ("expired secret", "AADSTS7000222: the client secret has expired"),
        ("wrong tenant", WRONG_TENANT_HINT),
        ("app not found", "AADSTS700016: the app (O365_CLIENT_ID) is not found"),
    ],
)
def test_token_failures_are_translated_and_the_steps_that_need_a_token_are_skipped(
    simulator: Simulator, make_env: EnvFactory, case: str, expected: str
) -> None:
    simulator.add_tenant(spec(OTHER, secret_expired=True))
    overrides = {
        "wrong secret": {"O365_CLIENT_SECRET": "copied-the-secret-id"},
        "expired secret": {"O365_TENANT_ID": OTHER},
        "wrong tenant": {"O365_TENANT_ID": NOT_A_TENANT},
        "app not found": {"O365_CLIENT_ID": "77777777-7777-4888-9999-aaaaaaaaaaaa"},
    }[case]
    steps = run(make_env(**overrides))
    assert steps["token"].verdict is Verdict.FAIL
    assert steps["token"].detail.startswith(expected), steps["token"].detail
    for name in ("permissions", "subscriptions", "audit logging", "clock"):
        assert steps[name].verdict is Verdict.SKIP
    assert steps["storage"].verdict is Verdict.OK  # our own side is still checked


def test_a_token_without_the_dlp_role_fails_only_when_dlp_is_collected(
    simulator: Simulator, make_env: EnvFactory
) -> None:
    simulator.add_tenant(spec(OTHER, roles=("ActivityFeed.Read",)))
    steps = run(make_env(O365_TENANT_ID=OTHER))
    assert steps["permissions"].verdict is Verdict.FAIL
    assert steps["permissions"].detail.startswith(MISSING_ROLE_HINT.format(role="ActivityFeed.ReadDlp"))
    assert "grant admin consent" in steps["permissions"].detail

    steps = run(make_env(O365_TENANT_ID=OTHER, O365_CONTENT_TYPES="Audit.Exchange,Audit.General"))
    assert steps["permissions"].verdict is Verdict.OK
    assert all(s.passed for s in steps.values())


def test_a_token_without_activityfeed_read_fails_with_the_permission_to_grant(
    simulator: Simulator, make_env: EnvFactory
) -> None:
    simulator.add_tenant(spec(OTHER, roles=()))
    steps = run(make_env(O365_TENANT_ID=OTHER, O365_CONTENT_TYPES="Audit.Exchange"))
    assert steps["permissions"].verdict is Verdict.FAIL
    assert steps["permissions"].detail == MISSING_ROLE_HINT.format(role="ActivityFeed.Read")
    assert steps["subscriptions"].verdict is Verdict.FAIL  # the API refuses the call too (AF10001)
    assert "AF10001" in steps["subscriptions"].detail


def test_a_disabled_subscription_fails_and_is_started_when_the_admin_agrees(
    simulator: Simulator, make_env: EnvFactory
) -> None:
    simulator.disable_subscription(TENANT.tenant_id, "Audit.Exchange")
    env = make_env()
    steps = run(env)
    assert steps["subscriptions"].verdict is Verdict.FAIL
    assert steps["subscriptions"].detail == f"Audit.Exchange disabled: {SUBSCRIPTIONS_HINT}"
    assert steps["audit logging"].verdict is Verdict.OK  # checked on an enabled content type

    steps = run(env, start=True)
    assert steps["subscriptions"].verdict is Verdict.OK
    assert steps["subscriptions"].detail.startswith("started Audit.Exchange")
    assert {s["contentType"]: s["status"] for s in simulator.subscriptions(TENANT.tenant_id)}["Audit.Exchange"] == (
        "enabled"
    )
    assert all(s.passed for s in run(env).values())


def test_subscriptions_never_started_are_reported_and_audit_needs_one(
    simulator: Simulator, make_env: EnvFactory
) -> None:
    simulator.add_tenant(spec(OTHER, subscribed=()))
    steps = run(make_env(O365_TENANT_ID=OTHER, O365_CONTENT_TYPES="Audit.General,DLP.All"))
    assert steps["subscriptions"].detail == f"Audit.General not started, DLP.All not started: {SUBSCRIPTIONS_HINT}"
    assert steps["audit logging"].verdict is Verdict.SKIP
    assert simulator.subscriptions(OTHER) == [], "nothing was started without consent"


def test_unified_audit_logging_off_is_named(simulator: Simulator, make_env: EnvFactory) -> None:
    simulator.add_tenant(spec(OTHER, audit_enabled=False))
    steps = run(make_env(O365_TENANT_ID=OTHER))
    assert steps["audit logging"].verdict is Verdict.FAIL
    assert steps["audit logging"].detail == AUDIT_OFF_HINT.format(tenant=OTHER)
    assert steps["token"].verdict is Verdict.OK
    assert steps["permissions"].verdict is Verdict.OK


@pytest.mark.parametrize(
    ("skew_minutes", "verdict", "words"),
    [
        (0, Verdict.OK, "within"),
        (3, Verdict.OK, "within"),
        (10, Verdict.FAIL, "behind"),
        (-10, Verdict.FAIL, "ahead of"),
    ],
)
def test_clock_skew_against_the_api_date_header(
    simulator: Simulator, make_env: EnvFactory, skew_minutes: int, verdict: Verdict, words: str
) -> None:
    simulator.options.date_skew = dt.timedelta(minutes=skew_minutes)
    step = run(make_env())["clock"]
    assert step.verdict is verdict, step.line()
    assert words in step.detail
    if verdict is Verdict.FAIL:
        assert step.detail.endswith(CLOCK_HINT)
        assert f"{abs(skew_minutes)}.0 min" in step.detail or f"{abs(skew_minutes) - 0.1:.1f} min" in step.detail


def test_unreachable_storage_fails_the_storage_step(make_env: EnvFactory) -> None:
    closed = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;TableEndpoint=http://127.0.0.1:9/devstoreaccount1"
    )
    steps = run(make_env(AzureWebJobsStorage=closed))
    assert steps["storage"].verdict is Verdict.FAIL
    assert steps["storage"].detail.startswith("cannot reach the account in AzureWebJobsStorage")
    assert steps["token"].verdict is Verdict.OK
    assert steps["first run"].verdict is Verdict.SKIP  # it reads the checkpoints


def test_a_storage_key_that_is_wrong_is_refused(make_env: EnvFactory) -> None:
    env = make_env()
    wrong = env["AzureWebJobsStorage"].replace("AccountKey=", "AccountKey=AAAA")
    steps = run(make_env(AzureWebJobsStorage=wrong))
    assert steps["storage"].verdict is Verdict.FAIL
    assert "was refused" in steps["storage"].detail


def test_the_first_run_step_says_what_the_first_run_backfills_and_which_streams_resume(
    make_env: EnvFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no start time, a stream without a checkpoint starts at the API's 7-day edge (now - 7 days + 15 min):
    `check` prints that span as an OK line; once the lister has run, the streams resume from their checkpoints."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    edge = (now - dt.timedelta(days=7) + dt.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%MZ")
    env = make_env(O365_START_TIME="", O365_CONTENT_TYPES="Audit.Exchange,Audit.General")

    step = {s.name: s for s in diagnose(env, clock=lambda: now)}["first run"]
    assert step.verdict is Verdict.OK
    assert step.subject == TENANT.tenant_id
    assert step.detail == (
        f"backfilling Audit.Exchange, Audit.General from {edge} (7 days back, the API's limit) to now"
    )

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["check"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if " first run " in line]
    assert len(printed) == 1, printed
    assert printed[0].startswith("OK    first run ["), printed
    assert "backfilling Audit.Exchange, Audit.General from " in printed[0]

    settings = Settings.from_env(env)
    collector = Collector(settings, sinks=[], clock=lambda: now)
    try:
        collector.ensure_resources()
        assert collector.lister().run().ok
    finally:
        collector.close()
    later = now + dt.timedelta(minutes=5)
    step = {s.name: s for s in diagnose(env, clock=lambda: later)}["first run"]
    assert step.verdict is Verdict.OK
    cursor = (now - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%MZ")  # windows end 5 min behind now
    assert step.detail == f"Audit.Exchange, Audit.General resume from their checkpoints (the oldest at {cursor})"
    assert "backfilling" not in step.detail


def test_each_sink_is_checked_with_its_own_message(make_env: EnvFactory, receiver: HttpReceiver) -> None:
    receiver.require_bearer("right-token")
    steps = run(make_env(SINK_TYPE="http,file", SINK_URL=receiver.url, SINK_HTTP_BEARER_TOKEN="wrong-token"))
    assert steps["sink http"].verdict is Verdict.FAIL
    assert "401" in steps["sink http"].detail
    assert "wrong-token" not in steps["sink http"].detail
    assert steps["sink file"].verdict is Verdict.OK

    steps = run(make_env(SINK_TYPE="http", SINK_URL=receiver.url, SINK_HTTP_BEARER_TOKEN="right-token"))
    assert steps["sink http"].verdict is Verdict.OK


def _jwt(claims: dict[str, object]) -> str:
    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(doc)).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("token", "roles"),
    [
        (_jwt({"roles": ["ActivityFeed.Read"]}), ["ActivityFeed.Read"]),
        (_jwt({"roles": []}), []),
        (_jwt({"tid": "x"}), None),
        ("opaque-token", "not a jwt"),
        ("a.!!!.c", "not a jwt"),
    ],
)
def test_token_claims_are_read_without_verifying(token: str, roles: object) -> None:
    claims = token_claims(token)
    if roles == "not a jwt":
        assert claims is None
    else:
        assert claims is not None
        assert claims.get("roles") == roles


# -- the certificate step ----------------------------------------------------------------------------------


def write_certificate(
    path: Path, *, valid_days: float, key_only: bool = False, cert_only: bool = False, other_key: bool = False
) -> None:
    """A PEM with an EC key and a self-signed certificate valid ``valid_days`` from now (negative: expired)."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer = ec.generate_private_key(ec.SECP256R1()) if other_key else key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "o365collector check test")])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signer.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=valid_days))
        .sign(signer, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = cert.public_bytes(pem)
    path.write_bytes((b"" if cert_only else private) + (b"" if key_only else public))


@pytest.mark.parametrize(
    ("kind", "verdict", "fragment"),
    [
        ("valid", Verdict.OK, "(in 99 days)"),
        ("expiring", Verdict.WARN, "renew it soon"),
        ("expired", Verdict.FAIL, "expired on"),
        ("key only", Verdict.FAIL, "no certificate in PEM form"),
        ("certificate only", Verdict.FAIL, "no private key in PEM form"),
        ("mismatched", Verdict.FAIL, "no certificate in the file matches its private key"),
        ("garbage", Verdict.FAIL, "no private key in PEM form"),
        ("missing", Verdict.FAIL, "cannot be opened"),
    ],
)
def test_a_single_tenant_certificate_is_checked_before_sign_in(
    make_env: EnvFactory, tmp_path: Path, kind: str, verdict: Verdict, fragment: str
) -> None:
    path = tmp_path / "app.pem"
    if kind == "garbage":
        path.write_bytes(b"not a pem at all")
    elif kind != "missing":
        write_certificate(
            path,
            valid_days={"expiring": 10, "expired": -1}.get(kind, 99.5),
            key_only=kind == "key only",
            cert_only=kind == "certificate only",
            other_key=kind == "mismatched",
        )
    env = make_env(O365_CLIENT_CERTIFICATE_PATH=str(path))
    del env["O365_CLIENT_SECRET"]  # a certificate alone is enough for a single tenant
    steps = run(env)
    step = steps["certificate"]
    assert step.verdict is verdict, step.detail
    assert fragment in step.detail
    assert step.detail.startswith(f"O365_CLIENT_CERTIFICATE_PATH: {str(path)!r}") or kind == "missing"
    if verdict is Verdict.FAIL:
        assert steps["token"].verdict is Verdict.SKIP  # the sign-in would fail for the same reason
    else:
        assert "expires 20" in step.detail  # the expiry date is shown
        assert step.passed
        assert steps["token"].verdict is not Verdict.SKIP


def test_a_key_vault_certificate_past_its_end_fails_its_step_and_no_sign_in_is_tried(
    simulator: Simulator, make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator.identity.add_managed_identity(IDENTITY)
    for name, value in simulator.identity.environment().items():
        monkeypatch.setenv(name, value)
    simulator.key_vault.grant_secrets_user(PRINCIPAL)
    import_registered(simulator, PKCS12, valid_for=-dt.timedelta(minutes=5))
    steps = run(
        make_env(O365_CERTIFICATE_NAME="app-cert", O365_CERTIFICATE_KEY_VAULT_URI=simulator.key_vault_url,
                 O365_CLIENT_SECRET="", AZURE_CLIENT_ID=IDENTITY.client_id)
    )  # fmt: skip
    assert steps["certificate"].verdict is Verdict.FAIL
    assert "expired on" in steps["certificate"].detail
    assert (steps["token"].verdict, steps["token"].detail) == (Verdict.SKIP, "needs a usable certificate")
    assert steps["permissions"].verdict is Verdict.SKIP


def test_push_mode_without_a_webhook_fails_the_webhook_step_with_the_command_that_sets_it(
    make_env: EnvFactory,
) -> None:
    """Subscriptions started without a webhook: polling works, but push mode (O365_WEBHOOK_AUTH_ID) gets nothing."""
    env = make_env(O365_WEBHOOK_AUTH_ID="push-" + "0f1e2d3c" * 5, O365_CONTENT_TYPES="Audit.Exchange")
    steps = [s for s in diagnose(env, confirm=lambda _question: False) if s.name == "webhook"]
    assert [s.verdict for s in steps] == [Verdict.FAIL]
    assert "Audit.Exchange: no push webhook set" in steps[0].detail
    assert "subscriptions start --content-type Audit.Exchange --webhook" in steps[0].detail
    assert not [s for s in diagnose(make_env(), confirm=lambda _question: False) if s.name == "webhook"], (
        "no webhook step when push mode is off and no subscription has a webhook"
    )
