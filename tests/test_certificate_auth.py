"""The certificate credential end to end: a registry tenant signs in with a PEM (key + certificate), no secret.

Entra's side is a loopback HTTPS token endpoint in the test (``CertificateLogin``): it checks the
client assertion the way Entra does for an app with a registered certificate (the JWT's signature
against the certificate's public key, the thumbprint in its header, ``iss`` = ``sub`` = the client id,
``aud`` = this token endpoint, an unexpired ``exp``) and only then hands out an access token, which it
gets from the simulator's own token endpoint so that the simulator's API accepts it. The listing and the
content come from the simulator, the records go to a loopback receiver: the whole pipeline runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import jwt
import orjson
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from tests.loopback import LoopbackService, OwnedHandler
from tests.receivers import HttpReceiver
from tests.support import TENANT, now

TID = TENANT.tenant_id
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"



def write_pem(path: Path) -> x509.Certificate:
    """An RSA key and a self-signed certificate in one PEM file, as an app registration's certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "o365collector test app")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - dt.timedelta(minutes=5))
        .not_valid_after(now() + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(private + cert.public_bytes(pem))
    path.chmod(0o600)
    return cert


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CertificateLogin(LoopbackService):
    """Entra for one app whose only credential is ``certificate``; see the module docstring."""

    def __init__(self, simulator: Simulator, certificate: x509.Certificate) -> None:
        self.simulator = simulator
        self.app_certificate = certificate
        der = certificate.public_bytes(serialization.Encoding.DER)
        self.thumbprints = {_b64url(hashlib.sha1(der).digest()), _b64url(hashlib.sha256(der).digest())}  # noqa: S324
        self.accepted = 0
        self.refused: list[str] = []
        self.secrets_sent = 0
        self._lock = threading.Lock()
        super().__init__(_LoginHandler, tls=True, timeout=10.0, name="certificate-login")

    def token_url(self, tenant: str) -> str:
        return f"{self.base_url}/{tenant}/oauth2/v2.0/token"

    def check_assertion(self, form: dict[str, str], tenant: str) -> str | None:
        """None when the assertion proves the app holds the registered key; else why not."""
        if form.get("client_secret"):
            with self._lock:
                self.secrets_sent += 1
        if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
            return "no client assertion"
        assertion = form["client_assertion"]
        header = jwt.get_unverified_header(assertion)
        named = {str(header.get(field, "")).rstrip("=") for field in ("x5t", "x5t#S256")}  # padded or not
        if not named & self.thumbprints:
            return "the assertion names a certificate the app does not have"
        try:
            claims = jwt.decode(
                assertion,
                self.app_certificate.public_key(),  # type: ignore[arg-type]
                algorithms=["PS256", "RS256"],
                audience=self.token_url(tenant),
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.InvalidTokenError as err:
            return f"invalid assertion: {err}"
        if not claims["iss"] == claims["sub"] == form.get("client_id"):
            return "the assertion was issued for another client"
        return None


class _LoginHandler(OwnedHandler):
    @property
    def login(self) -> CertificateLogin:
        return self.owner  # type: ignore[return-value]

    def do_GET(self) -> None:
        # OpenID discovery: the simulator's document, with this endpoint in place of the simulator.
        simulator = self.login.simulator
        answer = requests.get(f"{simulator.authority_url}{self.path}", verify=simulator.ca_file, timeout=10)
        document = answer.content.replace(simulator.authority_url.encode(), self.login.base_url.encode())
        self._send(answer.status_code, document)

    def do_POST(self) -> None:
        tenant = self.path.strip("/").split("/")[0]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        problem = self.login.check_assertion(form, tenant)
        if problem is not None:
            with self.login._lock:
                self.login.refused.append(problem)
            error = {
                "error": "invalid_client",
                "error_description": f"AADSTS700027: Client assertion failed signature validation ({problem}).",
                "error_codes": [700027],
            }
            self._send(401, orjson.dumps(error))
            return
        with self.login._lock:
            self.login.accepted += 1
        # The app proved it holds the key: issue the token the simulator's API will accept.
        issued = requests.post(
            f"{self.login.simulator.authority_url}/{tenant}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": form["client_id"],
                  "client_secret": TENANT.client_secret, "scope": form.get("scope", "")},
            verify=self.login.simulator.ca_file,
            timeout=10,
        )  # fmt: skip
        self._send(issued.status_code, issued.content)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)



@pytest.fixture
def login_for(simulator: Simulator) -> Iterator[Callable[[x509.Certificate], CertificateLogin]]:
    started: list[CertificateLogin] = []

    def start(certificate: x509.Certificate) -> CertificateLogin:
        login = CertificateLogin(simulator, certificate).__enter__()
        started.append(login)
        return login

    yield start
    for login in started:
        login.close()


def certificate_collector(
    make_collector: Callable[..., Collector],
    receiver: HttpReceiver,
    login: CertificateLogin,
    pem: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    simulator: Simulator,
    *,
    registry: bool = True,
) -> Collector:
    # One CA bundle for both TLS servers the collector talks to: the simulator (API) and the login.
    bundle = tmp_path / "trust.pem"
    bundle.write_bytes(Path(simulator.ca_file).read_bytes() + Path(login.ca_file).read_bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    entry = {"tenantId": TID, "clientId": TENANT.client_id, "credential": "shared", "contentTypes": ["Audit.Exchange"]}
    # Either a registry entry using the app's shared certificate, or the single-tenant O365_* settings.
    tenancy = (
        {"O365_TENANT_ID": "", "O365_TENANTS": orjson.dumps([entry]).decode()}
        if registry
        else {"O365_TENANT_ID": TID, "O365_TENANTS": "", "O365_CONTENT_TYPES": "Audit.Exchange"}
    )
    return make_collector(
        REQUESTS_CA_BUNDLE=str(bundle),
        **tenancy,
        O365_CLIENT_ID=TENANT.client_id,
        O365_CLIENT_SECRET="",  # the certificate is the only credential
        O365_CLIENT_CERTIFICATE_PATH=str(pem),
        O365_AUTHORITY_HOST=login.base_url,
        O365_RETRY_MAX_ATTEMPTS="2",
        SINK_TYPE="http",
        SINK_URL=receiver.url,
    )


@pytest.mark.parametrize("registry", [True, False], ids=["registry-entry", "single-tenant-settings"])
def test_a_tenant_signs_in_with_its_certificate_and_everything_ships(
    registry: bool,
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: Callable[..., Collector],
    login_for: Callable[[x509.Certificate], CertificateLogin],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    blobs = simulator.generate(
        TID, "Audit.Exchange", now() - dt.timedelta(hours=4), now() - dt.timedelta(minutes=20),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    pem = tmp_path / "app.pem"
    login = login_for(write_pem(pem))
    collector = certificate_collector(
        make_collector, receiver, login, pem, monkeypatch, tmp_path, simulator, registry=registry
    )

    assert run_once(collector) == 0
    assert Counter(r["Id"] for r in receiver.records) == Counter(r["Id"] for b in blobs for r in b.records)
    assert login.accepted >= 1, "the token came from a verified certificate assertion"
    assert login.refused == []
    assert login.secrets_sent == 0, "no client secret was sent"


def test_a_certificate_the_app_does_not_have_is_refused_and_nothing_ships(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: Callable[..., Collector],
    login_for: Callable[[x509.Certificate], CertificateLogin],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    simulator.generate(
        TID, "Audit.Exchange", now() - dt.timedelta(hours=2), now() - dt.timedelta(minutes=20),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    registered = write_pem(tmp_path / "registered.pem")
    pem = tmp_path / "other.pem"
    write_pem(pem)  # a different key pair than the one registered with the app
    login = login_for(registered)
    collector = certificate_collector(make_collector, receiver, login, pem, monkeypatch, tmp_path, simulator)

    assert run_once(collector) == 1
    assert receiver.records == []
    assert login.accepted == 0
    assert login.refused, "the login saw the assertion and refused it"
    assert all("certificate the app does not have" in why for why in login.refused)

