"""``check``'s step per source other than the audit feed: one probe call that shows the permission works.

For each tenant and each of its Microsoft Graph sources (``TenantConfig.sources``), the source's client
(``Collector.client(tenant, stream)``) makes one small request (``probe()``: a page of one record). The
verdicts:

- OK: the service answered: the app holds the permission (and, for sign-ins, the tenant its licence);
- FAIL with the fix: Graph refused (``Authorization_RequestDenied``: grant the permission the catalog
  names, with admin consent), the tenant has no Entra ID P1/P2 for sign-ins
  (``Authentication_RequestFromNonPremiumTenantOrB2CTenant``), the source is not served in the tenant's
  cloud (message trace: global service only), or the call could not be made (network, throttling);
- SKIP when the tenant has no token (the token step failed: the probe would only repeat that).

``diagnose`` turns each ``SourceVerdict`` into one of its steps; this module does not import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import ApiPermanentError, ApiTransientError, CollectorError
from .source_health import GRAPH_DENIED, LICENCE_CODES, LICENCE_HINT, PERMISSION_CODES, PERMISSION_HINT
from .sources.catalog import AUDIT, SOURCES, SourceSpec
from .sources.selection import GLOBAL_SERVICE_CLOUDS
from .tenant_config import TenantConfig


@runtime_checkable
class Probe(Protocol):
    """What the step needs of a source's client: one cheap call that raises what the service refused."""

    def probe(self) -> object: ...


ClientFor = Callable[[str, str], object]
"""``(tenant id, stream) -> client``: ``runtime.Collector.client``."""


@dataclass(frozen=True, slots=True)
class SourceVerdict:
    name: str
    verdict: str  # diagnose.Verdict's values: OK, WARN, FAIL, SKIP
    detail: str
    subject: str


def step_name(spec: SourceSpec) -> str:
    return f"source {spec.name}"


def source_verdicts(tenant: TenantConfig, client_for: ClientFor, *, signed_in: bool) -> Iterator[SourceVerdict]:
    """One verdict per source of ``tenant`` other than the audit feed (whose steps ``diagnose`` has)."""
    for name in tenant.sources:
        if name != AUDIT:
            yield probe_source(tenant, SOURCES[name], client_for, signed_in=signed_in)


def probe_source(tenant: TenantConfig, spec: SourceSpec, client_for: ClientFor, *, signed_in: bool) -> SourceVerdict:
    subject = tenant.tenant_id

    def verdict(result: str, detail: str) -> SourceVerdict:
        return SourceVerdict(step_name(spec), result, f"{spec.title}: {detail}", subject)

    if not signed_in:
        return verdict("SKIP", "needs a token")
    if spec.global_cloud_only and tenant.cloud not in GLOBAL_SERVICE_CLOUDS:
        # Settings refuse this selection already; a check must not call a service that does not exist there.
        return verdict(
            "FAIL",
            f"served by Microsoft Graph's global service only ({' and '.join(GLOBAL_SERVICE_CLOUDS)} tenants), "
            f"not in the {tenant.cloud} cloud: remove {spec.name} from the tenant's sources",
        )
    try:
        client = client_for(tenant.tenant_id, spec.streams[0])
        if not isinstance(client, Probe):
            return verdict("SKIP", "this source's client cannot be probed")
        answer = client.probe()
    except ApiPermanentError as err:
        return verdict("FAIL", explain_refusal(err, spec))
    except ApiTransientError as err:
        return verdict("FAIL", f"could not verify {spec.permission} ({err}): check the network path, then run again")
    except CollectorError as err:
        return verdict("FAIL", str(err))
    except Exception as err:
        return verdict("FAIL", f"{type(err).__name__}: {err}")
    shown = f" ({answer})" if isinstance(answer, str) and answer else ""
    return verdict("OK", f"{spec.permission} works: the service answered{shown}")


def explain_refusal(err: ApiPermanentError, spec: SourceSpec) -> str:
    """The client's message, led by the fix when it does not already name what to grant or license."""
    text = str(err)
    code = err.code or ""
    licence = next((c for c in LICENCE_CODES if c == code or c in text), None)
    if licence is not None:
        hint = LICENCE_HINT.format(code=licence, name=spec.name)
        return text if "P1" in text else f"{hint} ({text})"  # the client's own hint names the licence
    permission = spec.permission.split(" ")[0]
    refused = code in PERMISSION_CODES or GRAPH_DENIED in text or err.status == 403
    if refused and permission not in text:
        return f"{PERMISSION_HINT.format(permission=spec.permission, code=code or err.status)} ({text})"
    return text
