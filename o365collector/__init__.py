"""Office 365 audit-log collector: list content from the Management Activity API (and Microsoft Graph's logs),
queue it, fetch and ship it.

Where things are (``function_app.py`` only binds triggers to ``listing_queue`` and ``runtime``):

- **Listing**: the timer calls ``listing_queue.run_timer``. With ``O365_LIST_FANOUT`` it enqueues one
  message per tenant on the list queue, whose trigger (``listing_queue.run_list_message``) lists that
  tenant under per-stream leases (``checkpoints.StreamLeases``); without it the timer lists every tenant
  itself. Either way ``lister`` does the listing: ``windows`` plans, ``management_api`` pages, ``scheduler``
  spreads streams over a pool, ``pacing`` shares the API budget between instances.
- **Fetching**: the content queue's trigger (``runtime.process_message``) runs ``fetcher``: claim the blob
  in the ledger (``checkpoints``), fetch, ship through ``sinks``, mark done; ``deferral`` rides out a
  failing sink; ``poison`` replays the poison queue. Push mode's receiver (``webhook``) enqueues too.
- **Wiring**: ``runtime.Collector`` builds the clients once per process from ``config.Settings`` (tenants
  from ``tenant_config`` and the registry in ``tenants``; sign-in in ``auth``, ``identity``,
  ``keyvault_certificates``; storage clients in ``storage``).
- **Operating**: ``cli`` (``running``, ``queue_runner``, ``ops_cli``, ``tenants_cli``, ``webhook_cli``,
  ``resend``, ``demo``); ``health`` builds the ``status_report`` from ``status``, ``deferral``,
  ``push_status`` and ``certificate_expiry``; ``diagnose`` is ``check``.
- **Sources**: the lister and the fetcher call a ``sources.base.SourceClient`` per (tenant, stream), from
  ``runtime.Collector.client``: ``management_api`` for the audit feed's content types, ``sources.graph_source``
  for the Microsoft Graph logs (Entra sign-ins and directory audits, Exchange message trace); which
  sources a tenant collects is ``sources.selection`` (``O365_SOURCES``), their names and labels ``sources.catalog``.
- ``simulator``: a local Management Activity API, Microsoft Graph logs, Entra token endpoint and Key Vault,
  for tests and the demo.

Imports go one way (lower layers never import higher ones); ``tests/test_module_graph.py`` keeps it so.
"""

__version__ = "0.1.0"
