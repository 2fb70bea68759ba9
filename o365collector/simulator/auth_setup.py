"""How the demo's and ``simulate``'s printed settings sign in (``--auth-mode``), set up on a running simulator.

- ``clientSecret``: the tenant's app registration and its secret (nothing to set up here);
- ``managedIdentity`` / ``federated``: the App Service identity endpoint (``identity.secretless_environment``);
- ``certificate``: the app registration's certificate kept in the simulator's Key Vault as a PFX, read by the
  app's managed identity (granted "Key Vault Secrets User") through the identity endpoint: no secret anywhere.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .core import Simulator
from .identity import DEMO_IDENTITY_CLIENT_ID, DEMO_IDENTITY_OBJECT_ID, ManagedIdentitySpec, secretless_environment
from .keyvault import PKCS12

AUTH_MODES = ("clientSecret", "certificate", "managedIdentity", "federated")
DEMO_CERTIFICATE_NAME = "o365collector-app"


def self_signed_certificate(
    common_name: str, now: dt.datetime, *, days: int = 90
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA key and a self-signed certificate, as ``az ad app credential reset --create-cert`` makes one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def certificate_environment(sim: Simulator, tenant_id: str, client_id: str) -> dict[str, str]:
    """A PFX certificate in the vault, registered on the app ``client_id``, readable by the app's identity;
    the settings that sign in with it (``O365_CLIENT_SECRET`` comes back empty)."""
    identity = ManagedIdentitySpec(DEMO_IDENTITY_CLIENT_ID, DEMO_IDENTITY_OBJECT_ID, tenant_id)
    sim.identity.add_managed_identity(identity)
    key, certificate = self_signed_certificate("o365collector demo app", sim.now())
    sim.certificates.register(tenant_id, certificate)  # its public part uploaded to the app registration
    sim.key_vault.import_certificate(DEMO_CERTIFICATE_NAME, key, certificate, content_type=PKCS12)
    sim.key_vault.grant_secrets_user(identity.object_id)
    return sim.identity.environment() | {
        "AZURE_CLIENT_ID": identity.client_id,
        "O365_AUTH_MODE": "certificate",
        "O365_CLIENT_ID": client_id,
        "O365_CLIENT_SECRET": "",
        "O365_CERTIFICATE_NAME": DEMO_CERTIFICATE_NAME,
        "O365_CERTIFICATE_KEY_VAULT_URI": sim.key_vault_url,
    }


def auth_environment(sim: Simulator, tenant_id: str, client_id: str, mode: str) -> dict[str, str]:
    """The settings that replace the client secret for ``mode`` (none for ``clientSecret``)."""
    if mode == "clientSecret":
        return {}
    if mode == "certificate":
        return certificate_environment(sim, tenant_id, client_id)
    return secretless_environment(sim.identity, tenant_id, mode)
