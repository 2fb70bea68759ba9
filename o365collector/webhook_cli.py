"""Push mode on the command line: ``subscriptions start --webhook`` and ``run --webhook-listen``.

``cli`` registers the flags and calls these; the work is here so ``cli`` stays a table of commands.
Re-enabling a webhook the service disabled is the same command that set it: ``subscriptions start
--webhook URL`` (the API documents /start as the way to update or re-enable a webhook).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .arrivals import webhook_state
from .errors import ConfigError
from .push_settings import AUTH_ID_SETTING, PushSettings
from .redaction import summary
from .runtime import Collector
from .webhook_server import WebhookServer, parse_listen

log = logging.getLogger(__name__)

START_WEBHOOK = "python -m o365collector subscriptions start --content-type {content_type} --webhook <URL>"


def add_subscription_arguments(subs: argparse.ArgumentParser) -> None:
    subs.add_argument(
        "--webhook",
        metavar="URL",
        help="with start: set, update or re-enable the push webhook (HTTPS; the template's webhookUrl output)",
    )
    subs.add_argument(
        "--auth-id-from-setting",
        metavar="NAME",
        default=AUTH_ID_SETTING,
        help=f"with --webhook: the app setting whose value is sent as the webhook's authId (default {AUTH_ID_SETTING})",
    )


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    push = run.add_argument_group("push mode", "also receive the API's webhook notifications (see docs/push.md)")
    push.add_argument("--webhook-listen", metavar="HOST:PORT", help="serve the webhook receiver on this address")
    push.add_argument("--webhook-cert", metavar="PEM", help="the listener's TLS certificate (chain) file")
    push.add_argument("--webhook-key", metavar="PEM", help="the listener's TLS private key file")


def webhook_body(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str] | None:
    """The ``webhook`` object /subscriptions/start takes, or None without ``--webhook``."""
    if not getattr(args, "webhook", None):
        return None
    if args.action != "start":
        raise ConfigError("--webhook", "goes with `subscriptions start` only")
    address = str(args.webhook).strip()
    parts = urlsplit(address)
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise ConfigError("--webhook", "must be an https:// URL (the service only posts to HTTPS addresses)")
    name = args.auth_id_from_setting
    auth_id = PushSettings.from_env({AUTH_ID_SETTING: environ.get(name, "")}).auth_id
    if auth_id is None:
        raise ConfigError(name, "is not set: the webhook's authId comes from it (openssl rand -hex 24)")
    # expiration "": no expiry (the API's documented form).
    return {"address": address, "authId": auth_id.reveal(), "expiration": ""}


def describe_webhook(subscription: Mapping[str, Any] | None) -> str:
    """``; webhook enabled https://host/api/webhook`` or ``""`` without one (never the function key)."""
    if not subscription:
        return ""
    state, address = webhook_state(subscription)
    if state == "none":
        return ""
    text = f"; webhook {state} {address or ''}".rstrip()
    if state in ("disabled", "expired"):
        content_type = str(subscription.get("contentType") or "<type>")
        text += f": re-enable it with `{START_WEBHOOK.format(content_type=content_type)}`"
    return text


def record_webhooks(collector: Collector, tenant_id: str, listed: Sequence[Mapping[str, Any]]) -> None:
    """Remember each subscription's webhook state for ``status`` (push mode only; advisory)."""
    if not collector.settings.push.enabled:
        return
    try:
        collector.arrivals.ensure_table()
        for subscription in listed:
            collector.arrivals.record_webhook(tenant_id, subscription, collector.clock())
    except Exception as err:
        log.warning("could not record the webhook states for status: %s", summary(str(err)))


@contextlib.contextmanager
def listening(args: argparse.Namespace, collector: Collector) -> Iterator[WebhookServer | None]:
    """Serve the webhook receiver while the block runs, when ``--webhook-listen`` was given."""
    if not getattr(args, "webhook_listen", None):
        yield None
        return
    if not collector.settings.push.enabled:
        raise ConfigError(AUTH_ID_SETTING, "is required with --webhook-listen (the receiver checks Webhook-AuthID)")
    if (args.webhook_cert is None) != (args.webhook_key is None):
        raise ConfigError("--webhook-key", "and --webhook-cert go together")
    host, port = parse_listen(args.webhook_listen)
    server = WebhookServer(
        collector.webhook_receiver(), host=host, port=port, cert_file=args.webhook_cert, key_file=args.webhook_key
    )
    with server:
        print(f"webhook receiver listening on {server.url}", flush=True)
        yield server
