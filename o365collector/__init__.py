"""Office 365 audit-log collector: list content from the Management Activity API, queue it, fetch and ship it."""

__version__ = "0.1.0"
