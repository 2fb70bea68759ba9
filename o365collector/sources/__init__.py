"""Where records come from: one module per source behind the contract in ``sources.base``.

- ``catalog``: the sources and their streams (names, retention, how sinks label their records). Pure data.
- ``base``: the contract the lister and the fetcher call (``SourceClient``), and what a fetched unit is.
- ``selection`` (which sources a tenant collects: ``O365_SOURCES``, an entry's ``sources``) and
  ``settings`` (``GraphSettings``: ``O365_GRAPH_*``, ``O365_MESSAGE_TRACE_DETAILS``).
- The Management Activity API (``o365collector.management_api``) is the first implementation: its streams
  are the five content types, its units the content blobs a listing names.
- ``graph``: Microsoft Graph's HTTP conventions (tokens for graph.microsoft.com, ``@odata.nextLink``
  paging, 429 + ``Retry-After``); ``entra`` (sign-ins, directory audits) and ``message_trace`` (Exchange
  message trace) say how each log is read; ``graph_units`` names a unit (a time window) and checks a
  message's; ``overlap`` carries the ids a window shipped near its end to the next window, which re-reads
  that stretch for late records; ``graph_source`` is their ``SourceClient`` (``graph_client``).

The backbone (``lister``, ``fetcher``, the ledger) only knows the contract: it asks the collector for
the client of a (tenant, stream) and never looks at which source answers.
"""
