"""The certificate credential end to end: a tenant signs in with a PEM (key + certificate), no secret.

The simulator's token endpoint checks the client assertion the way Entra does for an app with a
registered certificate (simulator/assertions.py: the JWT's signature against the certificate's public
key, the thumbprint in its header, ``iss`` = ``sub`` = the client id, ``aud`` = the token endpoint, an
unexpired key and ``exp``) and only then hands out an access token. The listing and the content come
from the simulator, the records go to a loopback receiver: the whole pipeline runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import jwt
import orjson
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from o365collector.certificate_expiry import certificate_expiries, expiry_verdict, report_certificate_expiry
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.simulator.assertions import JWT_BEARER, thumbprints
from o365collector.tenants import tenants_from_env
from tests.receivers import HttpReceiver
from tests.support import TENANT, now

TID = TENANT.tenant_id


def make_certificate(
    *, valid_for: dt.timedelta = dt.timedelta(days=1)
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA key and a self-signed certificate, as an app registration's certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "o365collector test app")])
    not_after = now() + valid_for
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now(), not_after) - dt.timedelta(days=2))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def write_pem(path: Path, *, valid_for: dt.timedelta = dt.timedelta(days=1)) -> x509.Certificate:
    """The key and its certificate in one PEM file; the certificate is returned for registering."""
    key, cert = make_certificate(valid_for=valid_for)
    pem = serialization.Encoding.PEM
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(private + cert.public_bytes(pem))
    path.chmod(0o600)
    return cert


def certificate_collector(
    make_collector: Callable[..., Collector], receiver: HttpReceiver, pem: Path, *, registry: bool = True
) -> Collector:
    entry = {"tenantId": TID, "clientId": TENANT.client_id, "credential": "shared", "contentTypes": ["Audit.Exchange"]}
    # Either a registry entry using the app's shared certificate, or the single-tenant O365_* settings.
    tenancy = (
        {"O365_TENANT_ID": "", "O365_TENANTS": orjson.dumps([entry]).decode()}
        if registry
        else {"O365_TENANT_ID": TID, "O365_TENANTS": "", "O365_CONTENT_TYPES": "Audit.Exchange"}
    )
    return make_collector(
        **tenancy,
        O365_CLIENT_ID=TENANT.client_id,
        O365_CLIENT_SECRET="",  # the certificate is the only credential
        O365_CLIENT_CERTIFICATE_PATH=str(pem),
        O365_RETRY_MAX_ATTEMPTS="2",
        SINK_TYPE="http",
        SINK_URL=receiver.url,
    )


def _generate(simulator: Simulator) -> list[dict[str, object]]:
    blobs = simulator.generate(
        TID, "Audit.Exchange", now() - dt.timedelta(hours=3), now() - dt.timedelta(minutes=20),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    return [r for b in blobs for r in b.records]


@pytest.mark.parametrize("registry", [True, False], ids=["registry-entry", "single-tenant-settings"])
def test_a_tenant_signs_in_with_its_certificate_and_everything_ships(
    registry: bool,
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: Callable[..., Collector],
    tmp_path: Path,
) -> None:
    records = _generate(simulator)
    pem = tmp_path / "app.pem"
    simulator.certificates.register(TID, write_pem(pem))
    collector = certificate_collector(make_collector, receiver, pem, registry=registry)

    assert run_once(collector) == 0
    assert Counter(r["Id"] for r in receiver.records) == Counter(r["Id"] for r in records)
    assert simulator.certificates.accepted >= 1, "the token came from a verified certificate assertion"
    assert simulator.certificates.refused == []


@pytest.mark.parametrize(
    ("registered", "valid_for", "reason", "advice"),
    [
        (False, dt.timedelta(days=1), "The key was not found", "upload the current certificate's public part"),
        (True, -dt.timedelta(hours=1), "The key used is expired", "or expired"),
    ],
    ids=["not-registered", "expired"],
)
def test_a_certificate_the_app_does_not_accept_is_refused_with_what_to_do(
    registered: bool,
    valid_for: dt.timedelta,
    reason: str,
    advice: str,
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: Callable[..., Collector],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _generate(simulator)
    simulator.certificates.register(TID, write_pem(tmp_path / "registered.pem"))
    pem = tmp_path / "app.pem"
    cert = write_pem(pem, valid_for=valid_for)
    if registered:
        simulator.certificates.register(TID, cert)
    collector = certificate_collector(make_collector, receiver, pem)

    assert run_once(collector) == 1
    assert receiver.records == []
    assert simulator.certificates.accepted == 0
    assert simulator.certificates.refused, "the token endpoint saw the assertion and refused it"
    assert all(reason in why for why in simulator.certificates.refused)
    failed = capsys.readouterr().err
    assert "AADSTS700027" in failed
    assert advice in failed


def _assertion(key: rsa.RSAPrivateKey, cert: x509.Certificate, claims: dict[str, object]) -> str:
    return jwt.encode(claims, key, algorithm="PS256", headers={"x5t#S256": thumbprints(cert)[1]})


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({}, None),
        ({"aud": "https://login.example/other/oauth2/v2.0/token"}, "AADSTS700023"),
        ({"iss": "someone-else"}, "AADSTS700021"),
        ({"sub": "someone-else"}, "AADSTS700022"),
        ({"exp": 1_000_000_000}, "AADSTS700024"),
        ({"signed_by_another_key": True}, "AADSTS700027"),
    ],
    ids=["valid", "audience", "issuer", "subject", "expired-assertion", "signature"],
)
def test_the_token_endpoint_checks_each_part_of_a_certificate_assertion(
    change: dict[str, object], code: str | None, simulator: Simulator
) -> None:
    key, cert = make_certificate()
    simulator.certificates.register(TID, cert)
    token_url = f"{simulator.authority_url}/{TID}/oauth2/v2.0/token"
    claims: dict[str, object] = {"aud": token_url, "iss": TENANT.client_id, "sub": TENANT.client_id,
                                 "exp": int(now().timestamp()) + 600, "jti": "1"}  # fmt: skip
    signer = make_certificate()[0] if change.pop("signed_by_another_key", False) else key
    answer = requests.post(
        token_url,
        data={"grant_type": "client_credentials", "client_id": TENANT.client_id,
              "scope": "https://manage.office.com/.default", "client_assertion_type": JWT_BEARER,
              "client_assertion": _assertion(signer, cert, claims | change)},
        verify=simulator.ca_file,
        timeout=10,
    )  # fmt: skip
    if code is None:
        assert answer.status_code == 200, answer.text
        assert answer.json()["token_type"] == "Bearer"
    else:
        assert answer.status_code == 401
        assert answer.json()["error_description"].startswith(code)


ENDS = dt.datetime(2027, 6, 30, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        (dt.timedelta(0), "expired on 2027-06-30 12:00Z"),  # the end instant itself: sign-in already fails
        (dt.timedelta(days=30), "expires in 30 days, on"),  # exactly the warning: warned
        (dt.timedelta(days=30, seconds=1), None),
        (dt.timedelta(days=1, hours=12), "expires in 1 day, on"),
        (dt.timedelta(hours=12), "expires today, on"),
    ],
)
def test_the_certificate_verdict_at_each_edge(left: dt.timedelta, expected: str | None) -> None:
    verdict = expiry_verdict("certificate 'x.pem'", ENDS, "renew it", dt.timedelta(days=30), ENDS - left)
    if expected is None:
        assert verdict is None
        return
    assert verdict is not None
    assert verdict[0] is (left <= dt.timedelta(0))
    assert verdict[1].startswith(f"certificate 'x.pem' {expected}"), verdict[1]


def test_each_certificate_file_is_read_once_and_ends_with_its_earliest_certificate(tmp_path: Path) -> None:
    key, leaf = make_certificate(valid_for=dt.timedelta(days=100))
    _, chain = make_certificate(valid_for=dt.timedelta(days=5))  # the chain ends first: so does sign-in
    pem = tmp_path / "app.pem"
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    pem.write_bytes(private + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, chain)))
    env = {"O365_TENANT_ID": TID, "O365_CLIENT_ID": TENANT.client_id, "O365_CLIENT_CERTIFICATE_PATH": str(pem)}
    (first,) = tenants_from_env(env, sink_names=None)
    second = dataclasses.replace(first, tenant_id="c2000000-0000-4000-8000-000000000002")  # the same file
    assert [(t.tenant_id, ends) for t, _, ends in certificate_expiries([first, second])] == [
        (TID, chain.not_valid_after_utc)
    ]

    report = SimpleNamespace(checked_at=now(), policy=SimpleNamespace(secret_expiry_warning=dt.timedelta(days=30)),
                             general_problems=[], general_degraded=[])  # fmt: skip
    report_certificate_expiry(cast(Any, report), [first])
    assert report.general_problems == []
    assert len(report.general_degraded) == 1
    report = SimpleNamespace(checked_at=chain.not_valid_after_utc, policy=report.policy, general_problems=[],
                             general_degraded=[])  # fmt: skip
    report_certificate_expiry(cast(Any, report), [first])
    assert report.general_degraded == []
    assert len(report.general_problems) == 1
    assert "expired on" in report.general_problems[0]
