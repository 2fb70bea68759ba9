"""``check``: a diagnosis an admin can act on, one step per line, each OK or FAIL with the fix.

Steps, in order (a step that depends on a failed one is SKIPped, which also fails the check):

1. ``settings``       the app settings parse (the error names the setting at fault)
2. per tenant:
   ``certificate``    (certificate credentials only) the PEM file is readable, holds a private key and the
                      certificate that matches it, and has not expired (its expiry is shown; WARN under
                      ``CERTIFICATE_WARN_DAYS``)
   ``token``          a token is obtained; AADSTS errors are translated (wrong or expired secret,
                      wrong tenant, app not found)
   ``permissions``    the token's ``roles`` claim holds ActivityFeed.Read, and ActivityFeed.ReadDlp
                      when DLP.All is collected
   ``subscriptions``  every configured content type has an enabled subscription (offers to start them)
   ``audit logging``  unified audit logging is on: a listing of an enabled content type is answered
                      instead of "Tenant … does not exist"
   ``clock``          this machine's clock is within ``MAX_CLOCK_SKEW`` of the API's ``Date`` header
   ``source <name>``  each Microsoft Graph source of the tenant: one probe call shows its permission (and
                      for sign-ins the tenant's Entra ID P1/P2 licence) works (``source_check``)
3. ``storage``        the queues and tables answer
4. ``first run``      per tenant: what the first listing run backfills for the content types that have
                      no checkpoint yet (the lister logs the same line), always OK once storage answers
5. ``sink <name>``    each sink's own ``check()``

A tenant from ``O365_TENANTS`` or the tenant table is named by its entry in the hints
(``O365_TENANTS[1].tenantId``, the entry's ``setting:`` secret), not by the single-tenant settings.
WARN is a pass that wants attention soon.

Nothing here changes state except starting subscriptions, and only when the admin agreed.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import email.utils
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Any

import orjson
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .arrivals import webhook_verdicts
from .auth import AADSTS_HINTS, TokenProvider, read_certificate
from .certificate_expiry import check_keyvault_certificate
from .checkpoints import CheckpointStore
from .config import CollectionPolicy, Settings
from .envparse import Environ, InvalidSettingsError, get_str
from .errors import ApiTransientError, CollectorError
from .identity import missing_role_hint, secretless_hint
from .lister import describe_first_run
from .management_api import ManagementApiClient
from .models import TimeWindow
from .redaction import redact, summary
from .source_check import source_verdicts
from .sources.catalog import AUDIT, SOURCES, source_of
from .storage import StorageClients
from .tenant_config import CertificateCredentialConfig, KeyVaultCertificateConfig, TenantConfig
from .windows import plan_windows

# Windows are planned from this machine's clock; the API refuses starts older than 7 days and
# spans over 24 h, and a clock running ahead lists windows the service has not filled yet.
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
# A certificate that expires stops every sign-in at once: warn while there is time to roll it.
CERTIFICATE_WARN_DAYS = 30
READ_ROLE = "ActivityFeed.Read"
DLP_ROLE = "ActivityFeed.ReadDlp"
DLP_TYPE = "DLP.All"

WRONG_TENANT_HINT = f"AADSTS90002: {AADSTS_HINTS['AADSTS90002']}"
MISSING_ROLE_HINT = (
    "the token lacks the {role} role: in the app registration add Office 365 Management APIs > {role} "
    "(Application permission), then grant admin consent"
)
AUDIT_OFF_HINT = (
    "unified audit logging is off (the API answers 'Tenant {tenant} does not exist'): turn it on in Microsoft "
    "Purview (Audit > Start recording user and admin activity); it takes up to 60 minutes"
)
SUBSCRIPTIONS_HINT = (
    "start them with `python -m o365collector check --start-subscriptions` "
    "or `python -m o365collector subscriptions start --content-type <type>`"
)
CLOCK_HINT = (
    "sync this machine's clock (NTP): listing windows are planned from it and the API refuses or under-fills "
    "windows that are off"
)


class Verdict(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    name: str
    verdict: Verdict
    detail: str
    subject: str = ""

    def __post_init__(self) -> None:
        # Details quote peers (a token endpoint, a sink) that may echo our credentials: redacted once, here.
        # Only the settings step keeps line breaks: it lists every invalid setting, one per line, in our words.
        object.__setattr__(self, "detail", redact(self.detail, keep_newlines=self.name == "settings"))

    @property
    def passed(self) -> bool:
        return self.verdict in (Verdict.OK, Verdict.WARN)

    def line(self) -> str:
        label = f"{self.name} [{self.subject}]" if self.subject else self.name
        return f"{self.verdict.value:<4}  {label}: {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return {"step": self.name, "subject": self.subject, "result": self.verdict.value, "detail": self.detail}


Confirm = Callable[[str], bool]


def diagnose(
    env: Mapping[str, str],
    *,
    confirm: Confirm = lambda _question: False,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> Iterator[Step]:
    """Run every step, yielding each as soon as it is decided (so a slow step shows where it is)."""
    from .runtime import Collector  # runtime imports the whole pipeline; check needs it only here

    try:
        settings = Settings.from_env(env, now=clock())
        collector = Collector(settings, sinks=[], environ=env, clock=clock)
        tenants = collector.tenants()
    except InvalidSettingsError as err:
        yield from (Step("settings", Verdict.FAIL, str(one)) for one in err.errors)  # every bad setting, one line each
        return
    except CollectorError as err:
        yield Step("settings", Verdict.FAIL, str(err))
        return
    except Exception as err:  # e.g. the tenant registry table cannot be read
        yield Step("settings", Verdict.FAIL, f"could not load the tenants: {type(err).__name__}: {err}")
        return
    for problem in collector.registry_problems:  # skipped rows: those tenants are not collected
        yield Step("registry row", Verdict.FAIL, f"skipped: {summary(problem.problem)}", problem.setting)
    if not tenants:
        yield Step("settings", Verdict.FAIL, "no enabled tenant (O365_TENANT_ID, O365_TENANTS or the tenant registry)")
    else:
        types = sorted({ct for t in tenants for ct in t.content_types if AUDIT in t.sources})
        graph = [name for name in SOURCES if name != AUDIT and any(name in t.sources for t in tenants)]
        sinks = ", ".join(s.name for s in settings.sinks)
        collected = f"content types {', '.join(types) or 'none'}" + (
            f"; Graph sources {', '.join(graph)}" if graph else ""
        )
        yield Step("settings", Verdict.OK, f"{len(tenants)} tenant(s); {collected}; sinks {sinks}")
    for tenant in tenants:
        names = entry_names(env, tenant.tenant_id)
        signed_in = False
        if AUDIT not in tenant.sources:
            # Only Graph sources: the audit feed's steps (its token, roles, subscriptions) do not apply, and
            # each Graph probe below signs in itself, so a credential problem still shows there.
            signed_in = True
            yield Step("audit feed", Verdict.SKIP, "not among this tenant's sources (O365_SOURCES)", tenant.tenant_id)
        else:
            for step in tenant_steps(tenant, settings, confirm=confirm, clock=clock):
                signed_in = signed_in or (step.name == "token" and step.passed)
                yield dataclasses.replace(step, detail=rename_settings(step.detail, names)) if names else step
        # Each Microsoft Graph source: one probe call that shows its permission works (source_check.py).
        for v in source_verdicts(tenant, collector.client, signed_in=signed_in):
            yield Step(v.name, Verdict(v.verdict), rename_settings(v.detail, names), v.subject)
    storage = storage_step(settings)
    yield storage
    for tenant in tenants:
        if storage.passed:
            yield first_run_step(tenant, settings.policy, collector.checkpoints, clock())
        else:
            yield Step("first run", Verdict.SKIP, "needs storage (the checkpoints)", tenant.tenant_id)
    yield from sink_steps(settings)


# -- the tenant's side ------------------------------------------------------------------------------


def tenant_steps(
    tenant: TenantConfig, settings: Settings, *, confirm: Confirm, clock: Callable[[], dt.datetime]
) -> Iterator[Step]:
    subject = tenant.tenant_id
    dependent = ("permissions", "subscriptions", "audit logging", "clock")
    if isinstance(tenant.credential, CertificateCredentialConfig):
        certificate = certificate_step(tenant, tenant.credential, clock())
        yield certificate
        if not certificate.passed:
            yield from (
                Step(name, Verdict.SKIP, "needs a usable certificate", subject) for name in ("token", *dependent)
            )
            return
    vault_credential = None
    if isinstance(tenant.credential, KeyVaultCertificateConfig):
        verdict, detail, vault_credential = check_keyvault_certificate(
            tenant, tenant.credential, clock(), dt.timedelta(days=CERTIFICATE_WARN_DAYS)
        )
        yield Step("certificate", Verdict(verdict), detail, subject)
        if vault_credential is None or verdict == Verdict.FAIL:
            skipped = ("token", *dependent)
            yield from (Step(name, Verdict.SKIP, "needs a usable certificate", subject) for name in skipped)
            return
    try:
        tokens = TokenProvider(tenant, vault_credential)
        token = tokens.get_token()
    except Exception as err:
        yield Step("token", Verdict.FAIL, explain_token_failure(err, tenant), subject)
        yield from (Step(name, Verdict.SKIP, "needs a token", subject) for name in dependent)
        return
    yield Step("token", Verdict.OK, f"obtained from {tenant.authority_host} for {tenant.token_scope}", subject)
    yield roles_step(token, tenant)

    # A diagnosis should answer in seconds: two attempts, a short retry budget.
    policy = dataclasses.replace(settings.http, max_attempts=2, max_retry_seconds=10.0)
    api = ManagementApiClient(tenant, tokens=tokens, policy=policy)
    before = clock()
    try:
        listed, date_header = api.list_subscriptions_with_date()
    except CollectorError as err:
        if is_audit_off(err):
            yield Step("subscriptions", Verdict.SKIP, "needs unified audit logging", subject)
            yield Step("audit logging", Verdict.FAIL, AUDIT_OFF_HINT.format(tenant=tenant.tenant_id), subject)
        else:
            yield Step("subscriptions", Verdict.FAIL, f"could not list them: {err}", subject)
            yield Step("audit logging", Verdict.SKIP, "needs an answer from the API", subject)
        yield Step("clock", Verdict.SKIP, "needs an answer from the API", subject)
        return
    after = clock()
    server_now = parse_http_date(date_header)

    step, enabled = subscriptions_step(api, tenant, listed, confirm)
    yield step
    for passed, detail in webhook_verdicts(tenant.content_types, listed, push=settings.push.enabled):
        yield Step("webhook", Verdict.OK if passed else Verdict.FAIL, detail, subject)
    yield audit_step(api, tenant, enabled, server_now or after)
    yield clock_step(server_now, before + (after - before) / 2, subject)


def certificate_step(tenant: TenantConfig, cred: CertificateCredentialConfig, now: dt.datetime) -> Step:
    """The PEM is readable (with the same caps as sign-in), holds a private key and its certificate, in date."""
    subject = tenant.tenant_id
    try:
        pem = read_certificate(cred, tenant_id=tenant.tenant_id)
    except CollectorError as err:
        return Step("certificate", Verdict.FAIL, str(err), subject)
    setting = "O365_CLIENT_CERTIFICATE_PATH" if cred.folder is None else "O365_CERTIFICATE_DIR"
    where = f"{setting}: {cred.certificate_path!r}"
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        return Step(
            "certificate",
            Verdict.FAIL,
            f"{where}: the private key is encrypted (export it without a password)",
            subject,
        )
    except ValueError:
        return Step(
            "certificate",
            Verdict.FAIL,
            f"{where}: no private key in PEM form (expected -----BEGIN PRIVATE KEY----- and the certificate, "
            "in one file)",
            subject,
        )
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certificates = []
    if not certificates:
        return Step(
            "certificate",
            Verdict.FAIL,
            f"{where}: no certificate in PEM form (expected -----BEGIN CERTIFICATE----- next to the private key)",
            subject,
        )
    own = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    matching = [
        c
        for c in certificates
        if c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        == own
    ]
    if not matching:
        return Step(
            "certificate", Verdict.FAIL, f"{where}: no certificate in the file matches its private key", subject
        )
    cert = matching[0]
    expires = cert.not_valid_after_utc
    shown = expires.strftime("%Y-%m-%d %H:%MZ")
    thumbprint = cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - what Entra shows, not a security use
    if cert.not_valid_before_utc > now:
        return Step(
            "certificate",
            Verdict.FAIL,
            f"{where}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%MZ}",
            subject,
        )
    if expires <= now:
        return Step(
            "certificate",
            Verdict.FAIL,
            f"{where}: expired on {shown}: upload a new certificate to the app registration and replace the file",
            subject,
        )
    days = (expires - now).days
    detail = f"{where}: thumbprint {thumbprint}, expires {shown} (in {days} days)"
    if days < CERTIFICATE_WARN_DAYS:
        return Step(
            "certificate",
            Verdict.WARN,
            f"{detail}: renew it soon (upload the new one to the app registration, then replace the file)",
            subject,
        )
    return Step("certificate", Verdict.OK, detail, subject)


def entry_names(env: Environ, tenant_id: str) -> dict[str, str]:
    """How the single-tenant setting names read for this tenant's entry (empty for the single-tenant settings).

    Hints are written for ``O365_TENANT_ID``/``O365_CLIENT_ID``/``O365_CLIENT_SECRET``: for a tenant of
    ``O365_TENANTS`` that would send the admin to settings that play no part in its sign-in.
    """
    if get_str(env, "O365_TENANT_TABLE"):
        return {"O365_TENANT_ID": f"O365_TENANT_TABLE[{tenant_id}].tenantId"}
    listed = get_str(env, "O365_TENANTS")
    if listed is None:
        return {}
    try:
        entries = orjson.loads(listed)
    except orjson.JSONDecodeError:
        return {}
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict) or str(entry.get("tenantId", "")).strip().lower() != tenant_id:
            continue
        where = f"O365_TENANTS[{i}]"
        names = {"O365_TENANT_ID": f"{where}.tenantId"}
        if entry.get("clientId"):
            names["O365_CLIENT_ID"] = f"{where}.clientId"
        kind, _, reference = str(entry.get("credential") or "shared").partition(":")
        if kind == "setting" and reference:
            names["O365_CLIENT_SECRET"] = f"{reference} (named by {where}.credential)"
        if entry.get("cloud"):
            names["O365_CLOUD"] = f"{where}.cloud"
        return names
    return {}


def rename_settings(text: str, names: Mapping[str, str]) -> str:
    for old, new in names.items():
        text = text.replace(old, new)
    return text


def explain_token_failure(err: BaseException, tenant: TenantConfig) -> str:
    text = redact(str(err))
    if isinstance(err, CollectorError) and secretless_hint(tenant, text) is not None:
        return text  # already the secretless mode's own hint (consent link, FIC command)
    for code, hint in AADSTS_HINTS.items():
        if code in text:
            return f"{code}: {hint}"
    if "Unable to get authority configuration" in text:
        return WRONG_TENANT_HINT
    if isinstance(err, ApiTransientError | ServiceRequestError):
        return f"{text}: check the network path (proxy, firewall, REQUESTS_CA_BUNDLE) to {tenant.authority_host}"
    return f"{type(err).__name__}: {text}" if not isinstance(err, CollectorError) else text


def token_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT access token, decoded from its payload segment.

    The signature is deliberately NOT verified: this only reads what the token says, to tell the admin
    which permissions Entra granted; the API verifies every token itself. Never use this for access decisions.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def roles_step(token: str, tenant: TenantConfig) -> Step:
    claims = token_claims(token)
    if claims is None:
        return Step("permissions", Verdict.FAIL, "the token is not a JWT: its roles cannot be read", tenant.tenant_id)
    raw = claims.get("roles")
    roles = {str(r) for r in raw} if isinstance(raw, list) else set()
    needed = [READ_ROLE] + ([DLP_ROLE] if DLP_TYPE in tenant.content_types else [])
    missing = [role for role in needed if role not in roles]
    if missing:
        detail = "; ".join(missing_role_hint(tenant, role) or MISSING_ROLE_HINT.format(role=role) for role in missing)
        if missing == [DLP_ROLE]:
            detail += f" (or remove {DLP_TYPE} from the content types)"
        return Step("permissions", Verdict.FAIL, detail, tenant.tenant_id)
    return Step("permissions", Verdict.OK, f"the token's roles include {', '.join(needed)}", tenant.tenant_id)


def subscriptions_step(
    api: ManagementApiClient, tenant: TenantConfig, listed: Sequence[dict[str, Any]], confirm: Confirm
) -> tuple[Step, list[str]]:
    """The step and the configured content types whose subscription is enabled (after any start)."""
    subject = tenant.tenant_id
    state = {str(s.get("contentType")): str(s.get("status") or "") for s in listed}
    not_enabled = [ct for ct in tenant.content_types if state.get(ct, "").lower() != "enabled"]
    if not not_enabled:
        return Step("subscriptions", Verdict.OK, f"enabled for {', '.join(tenant.content_types)}", subject), list(
            tenant.content_types
        )
    described = ", ".join(f"{ct} {state.get(ct) or 'not started'}" for ct in not_enabled)
    question = f"tenant {tenant.tenant_id}: {described}. Start them now?"
    if not confirm(question):
        enabled = [ct for ct in tenant.content_types if ct not in not_enabled]
        return Step("subscriptions", Verdict.FAIL, f"{described}: {SUBSCRIPTIONS_HINT}", subject), enabled
    failed: list[str] = []
    for content_type in not_enabled:
        try:
            api.start_subscription(content_type)
        except CollectorError as err:
            failed.append(f"{content_type}: {err}")
    if failed:
        started = [ct for ct in not_enabled if not any(f.startswith(ct + ":") for f in failed)]
        enabled = [ct for ct in tenant.content_types if ct not in not_enabled or ct in started]
        return Step("subscriptions", Verdict.FAIL, "could not start " + "; ".join(failed), subject), enabled
    detail = f"started {', '.join(not_enabled)}; enabled for {', '.join(tenant.content_types)}"
    return Step("subscriptions", Verdict.OK, detail, subject), list(tenant.content_types)


def audit_step(api: ManagementApiClient, tenant: TenantConfig, enabled: Sequence[str], now: dt.datetime) -> Step:
    """List the last hour of one enabled content type: the call that says "does not exist" when auditing is off."""
    subject = tenant.tenant_id
    if not enabled:
        return Step("audit logging", Verdict.SKIP, "needs an enabled subscription to list", subject)
    content_type = enabled[0]
    window = TimeWindow(now - dt.timedelta(hours=1), now - dt.timedelta(minutes=1))
    try:
        next(api.list_content(content_type, window), None)  # the first page answers the question
    except CollectorError as err:
        if is_audit_off(err):
            return Step("audit logging", Verdict.FAIL, AUDIT_OFF_HINT.format(tenant=tenant.tenant_id), subject)
        return Step("audit logging", Verdict.FAIL, f"listing {content_type} failed: {err}", subject)
    return Step("audit logging", Verdict.OK, f"on (the API listed {content_type} for the last hour)", subject)


def is_audit_off(err: CollectorError) -> bool:
    # The client turns the service's "DataServiceException: Tenant … does not exist" into this hint.
    return "unified audit logging appears to be off" in str(err) or getattr(err, "code", None) == "AF20011"


def parse_http_date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def clock_step(server: dt.datetime | None, local: dt.datetime, subject: str) -> Step:
    if server is None:
        return Step("clock", Verdict.SKIP, "the API sent no usable Date header", subject)
    skew = local - server
    seconds = abs(skew.total_seconds())
    if abs(skew) > MAX_CLOCK_SKEW:
        direction = "ahead of" if skew > dt.timedelta(0) else "behind"
        return Step(
            "clock",
            Verdict.FAIL,
            f"this machine's clock is {seconds / 60:.1f} min {direction} the API's: {CLOCK_HINT}",
            subject,
        )
    return Step("clock", Verdict.OK, f"within {seconds:.0f} s of the API's clock", subject)


# -- our own side -----------------------------------------------------------------------------------


def storage_step(settings: Settings, storage: StorageClients | None = None) -> Step:
    """Every queue and table answers (a missing one is fine: the collector creates it on its first run)."""
    clients = storage or StorageClients(settings.storage)
    # One quick attempt each: a diagnosis reports an unreachable account instead of backing off for a minute.
    quick: dict[str, Any] = {"retry_total": 0, "connection_timeout": 10}
    found: list[str] = []
    try:
        for name in (settings.content_queue, settings.poison_queue):
            try:
                count = clients.queue(name).get_queue_properties(**quick).approximate_message_count
                found.append(f"queue {name} ({count} messages)")
            except ResourceNotFoundError:
                found.append(f"queue {name} (created on the first run)")
        for name in (settings.checkpoint_table, settings.ledger_table, settings.status_table):
            try:
                rows = clients.table(name).list_entities(results_per_page=1, select=["PartitionKey"], **quick)
                next(iter(rows), None)
                found.append(f"table {name}")
            except ResourceNotFoundError:
                found.append(f"table {name} (created on the first run)")
    except Exception as err:
        return Step("storage", Verdict.FAIL, explain_storage_failure(err, settings))
    return Step("storage", Verdict.OK, "; ".join(found))


def first_run_step(
    tenant: TenantConfig, policy: CollectionPolicy, checkpoints: CheckpointStore, now: dt.datetime
) -> Step:
    """What the next listing run will backfill for the streams with no checkpoint (informational: OK); each
    source's own retention bounds its backfill (7 days for the audit feed, 30 or 90 for a Graph log)."""
    subject = tenant.tenant_id
    try:
        cursors = {ct: checkpoints.get(tenant.tenant_id, ct).cursor for ct in tenant.streams}
    except Exception as err:
        return Step("first run", Verdict.FAIL, f"could not read the checkpoints: {type(err).__name__}: {err}", subject)
    new = [ct for ct, cursor in cursors.items() if cursor is None]
    started = {ct: cursor for ct, cursor in cursors.items() if cursor is not None}
    parts: list[str] = []
    by_retention: dict[dt.timedelta, list[str]] = {}
    for stream in new:
        spec = source_of(stream)
        by_retention.setdefault(spec.retention if spec is not None else policy.retention, []).append(stream)
    for retention, streams in by_retention.items():
        plan = plan_windows(
            cursor=None, now=now, policy=dataclasses.replace(policy, retention=retention), start_time=tenant.start_time
        )
        parts.append(describe_first_run(", ".join(streams), tenant.start_time, plan, retention))
    if started:
        oldest = min(started.values()).strftime("%Y-%m-%dT%H:%MZ")
        parts.append(f"{', '.join(started)} resume from their checkpoints (the oldest at {oldest})")
    return Step("first run", Verdict.OK, "; ".join(parts), subject)


def explain_storage_failure(err: BaseException, settings: Settings) -> str:
    where = settings.storage.queue_service_uri or "the account in AzureWebJobsStorage"
    if isinstance(err, ServiceRequestError):
        return f"cannot reach {where}: check AzureWebJobsStorage (locally: is Azurite running?) ({err})"
    if isinstance(err, ClientAuthenticationError) or (isinstance(err, HttpResponseError) and err.status_code == 403):
        return (
            f"access to {where} was refused: with a connection string check its key; with an identity grant it "
            f"Storage Queue Data Contributor and Storage Table Data Contributor ({str(err).splitlines()[0]})"
        )
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def sink_steps(settings: Settings) -> Iterator[Step]:
    for sink_settings in settings.sinks:
        name = f"sink {sink_settings.name}"
        try:
            sink = sink_settings.create()
        except Exception as err:
            yield Step(name, Verdict.FAIL, f"could not be created: {err}")
            continue
        try:
            sink.check()
        except Exception as err:
            yield Step(name, Verdict.FAIL, str(err) or type(err).__name__)
        else:
            yield Step(name, Verdict.OK, "reachable and accepting our credentials")
        finally:
            sink.close()
