"""The file sink: one NDJSON file per content blob, written atomically under ``SINK_FILE_DIR``.

Layout: ``{SINK_FILE_DIR}/{tenant_id}/{content_type}/{yyyy}/{mm}/{dd}/{safe content id}.ndjson``,
dated by the blob's ``contentCreated`` in UTC. The file name is a function of the content id alone,
so a redelivered blob replaces its file instead of adding a second copy.

Each line is one record as compact JSON (``batching.serialize``: a raw line feed never appears inside
it), or, with ``SINK_FILE_WRAPPER=wazuh``, ``{"integration":"office365","office365":<record>}``: the
shape Wazuh's stock office365 decoder and rules read, for a Wazuh agent's ``localfile`` with
``log_format`` json. Filebeat's ``filestream`` input with the ``ndjson`` parser reads either. With
``SINK_FILE_SHAPE=flat`` each line is ``shape.flat_record`` of the record instead (``o365.audit.*``
fields and ``@timestamp``); it does not combine with the Wazuh wrapper, whose rules read the raw record.

Each file is written to a hidden temporary file in the same folder, flushed, fsynced and renamed over
the final name (``os.replace``), so readers see either the whole previous file or the whole new one,
never a partial file. A crash can at worst leave a ``.<name>.<random>.tmp`` behind, never a short
``.ndjson``.

Content ids contain ``$`` and, being opaque, may contain anything; names keep ``[A-Za-z0-9._-]``,
replace every other character with ``_`` and end in 16 hex digits of the id's SHA-256, so two ids
that clean up alike still get different files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..envparse import Environ, get_choice, require_str
from ..errors import CollectorError, ConfigError, SinkPermanentError, SinkTransientError
from ..models import BlobContext, Record, utc
from .batching import serialize
from .shape import flat_record, get_shape
from .syslog import WRAPPERS, wazuh_wrap

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_PLAIN_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Keeps names well under the usual 255-byte limit, with room for the hash and the temporary-file affixes.
_MAX_STEM = 120

# Failures that pass without an operator (disk full, a network share hiccup): the queue redelivers.
# Any other OSError (permissions, read-only file system, a file where a folder should be) is permanent.
_TRANSIENT_ERRNOS = frozenset(
    code
    for code in (
        errno.ENOSPC,
        getattr(errno, "EDQUOT", None),
        errno.EIO,
        errno.EAGAIN,
        errno.EBUSY,
        errno.ETIMEDOUT,
        getattr(errno, "ESTALE", None),
    )
    if code is not None
)


@dataclass(frozen=True, slots=True)
class FileSinkSettings:
    """``SINK_FILE_DIR``: the folder the files go under (created when missing).

    ``SINK_FILE_WRAPPER`` and ``SINK_FILE_SHAPE``: what each line holds.
    """

    name: ClassVar[str] = "file"

    directory: Path
    wrapper: str = "none"
    """``none``: one record per line; ``wazuh``: each record under ``office365`` (see the module docstring)."""
    shape: str = "raw"
    """``raw``: each record as served; ``flat``: ``shape.flat_record`` (``o365.audit.*`` and ``@timestamp``)."""

    @classmethod
    def from_env(cls, env: Environ) -> FileSinkSettings:
        text = require_str(env, "SINK_FILE_DIR", "the folder the file sink writes NDJSON files under")
        wrapper = get_choice(env, "SINK_FILE_WRAPPER", "none", WRAPPERS)
        shape = get_shape(env, "SINK_FILE_SHAPE")
        if shape == "flat" and wrapper != "none":
            # Wazuh's rules read the raw record under office365: renamed fields would match none of them.
            raise ConfigError("SINK_FILE_SHAPE", f"flat cannot be combined with SINK_FILE_WRAPPER={wrapper}: keep one")
        return cls(directory=Path(text).expanduser(), wrapper=wrapper, shape=shape)

    def create(self) -> FileSink:
        return FileSink(self)


def safe_name(text: str) -> str:
    """A file-name stem for ``text``: its safe characters, then ``-`` and 16 hex digits of its SHA-256."""
    cleaned = _UNSAFE.sub("_", text)[:_MAX_STEM]
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]  # no hidden files, no "." or ".."
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{cleaned}-{digest}"


def _segment(text: str) -> str:
    # Tenant ids (GUIDs) and content types (Audit.Exchange) are safe and stay readable; anything else is made safe.
    return text if _PLAIN_SEGMENT.match(text) else safe_name(text)


class FileSink:
    """Writes each blob's records to its own NDJSON file; see the module docstring."""

    name = "file"

    def __init__(self, settings: FileSinkSettings) -> None:
        self._root = settings.directory
        self._wazuh = settings.wrapper == "wazuh"
        self._flat = settings.shape == "flat"

    def path_for(self, context: BlobContext) -> Path:
        """Where the records of ``context``'s blob are written."""
        created = utc(context.content_created)
        return (
            self._root
            / _segment(context.tenant_id)
            / _segment(context.content_type)
            / f"{created:%Y}"
            / f"{created:%m}"
            / f"{created:%d}"
            / f"{safe_name(context.content_id)}.ndjson"
        )

    def check(self) -> None:
        """Create ``SINK_FILE_DIR`` if needed and prove a file can be written, synced and removed there."""
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            _write_atomically(self._root / f".o365collector-check-{uuid.uuid4().hex}", [b'"ok"'], keep=False)
        except OSError as err:
            raise _file_error(err, self._root) from err
        log.debug("file sink: %s is writable", self._root)

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        target = self.path_for(context)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            lines = (serialize(self._shaped(record)) for record in records)
            _write_atomically(target, lines)
        except OSError as err:
            raise _file_error(err, target) from err
        log.debug(
            "file sink: wrote %d records to %s",
            len(records),
            target,
            extra={
                "tenant_id": context.tenant_id,
                "content_type": context.content_type,
                "content_id": context.content_id,
            },
        )

    def _shaped(self, record: Record) -> Record:
        if self._flat:
            return flat_record(record)
        return wazuh_wrap(record) if self._wazuh else record

    def close(self) -> None:
        """Nothing to release: every file is closed before ``send`` returns."""


def _write_atomically(target: Path, lines: Iterable[bytes], *, keep: bool = True) -> None:
    """Write ``lines`` (newline-terminated) to a temporary file beside ``target``, sync it, rename it over ``target``.

    With ``keep=False`` the synced temporary file is removed instead (the writability probe).
    """
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # "x": never clobber another writer's temporary file; permissions follow the umask like any new file.
        with open(temporary, "xb", buffering=1024 * 1024) as handle:
            for line in lines:
                handle.write(line)
                handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        if keep:
            os.replace(temporary, target)
    finally:
        # After a successful replace the temporary name no longer exists; otherwise leave no debris.
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
    if keep:
        _sync_directory(target.parent)


def _sync_directory(directory: Path) -> None:
    # Makes the rename itself durable on POSIX. Best effort: Windows and some network shares cannot.
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _file_error(err: OSError, path: Path) -> CollectorError:
    reason = err.strerror or type(err).__name__
    if err.errno in _TRANSIENT_ERRNOS:
        return SinkTransientError(f"SINK_FILE_DIR: cannot write {path}: {reason} (the write will be retried)")
    return SinkPermanentError(
        f"SINK_FILE_DIR: cannot write {path}: {reason} (make the folder writable by the collector, or change it)"
    )
