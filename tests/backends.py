"""Loopback fakes of real backends for sink tests: a Splunk HTTP Event Collector and an Elasticsearch ``_bulk`` API.

Each listens on 127.0.0.1 (a free port), over TLS by default with a certificate from
``tests.loopback`` (trust its CA through ``ca_file``), and speaks the backend's wire
protocol as documented: the answers, status codes and JSON error bodies a client sees. Both record
every exchange before answering, so once a client call returns the test can inspect what was
parsed; nothing waits or sleeps. ``fail_next`` scripts request-level failures (an outage that ends
after N requests), checked before authentication, like a proxy or an overloaded node.

``HecServer``: ``/services/collector/event`` (events written back to back, the token as
``Authorization: Splunk <token>``, HEC's ``{"text","code"}`` answers, allowed indexes,
``max_content_length``), ``/services/collector/ack`` (channels, ackIds that turn true after a
scripted number of queries, read once), ``/services/collector/health``.

``BulkServer``: ``GET /``, ``HEAD /<index>``, ``POST [/<index>]/_bulk`` (NDJSON, ``create`` only, ids
kept per index so a second create answers 409), ApiKey or basic authentication, per-item scripted
429s and mapping errors, automatic index creation on or off. Optionally a data stream's side of a write:
a ``default_pipeline`` run on each document before it is stored (it may set ``_id``, as an ingest
pipeline's ``ctx._id`` does), and ``require_timestamp`` refusing a document without ``@timestamp``.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from tests.loopback import LoopbackService, OwnedHandler

Reply = tuple[int, dict[str, str], bytes]


@dataclass(frozen=True)
class Exchange:
    """One request as the fake saw it, and its answer."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes
    status: int
    reply: bytes

    def json(self) -> Any:
        return json.loads(self.reply) if self.reply else None


@dataclass
class _Failure:
    status: int
    headers: dict[str, str]
    body: bytes


def json_reply(status: int, value: Any, headers: dict[str, str] | None = None) -> Reply:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(value).encode()


class LoopbackBackend(LoopbackService):
    """The common part: the exchange log and scripted failures (serving, TLS: ``LoopbackService``). Subclasses route."""

    poll_interval = 0.01
    kind = "backend"

    def __init__(self, *, tls: bool = True, timeout: float = 10.0) -> None:
        self.lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        self._failures: deque[_Failure] = deque()
        self._skip = 0
        super().__init__(_Handler, tls=tls, timeout=timeout, name="backend")

    @property
    def exchanges(self) -> list[Exchange]:
        with self.lock:
            return list(self._exchanges)

    def exchanges_to(self, path: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.path == path]

    def fail_next(
        self, n: int, status: int = 503, body: Any = None, *, retry_after: float | None = None, after: int = 0
    ) -> None:
        """Answer ``n`` requests (any path) with ``status`` and ``body`` (JSON unless bytes) once ``after`` passed."""
        headers = {"Content-Type": "application/json"} if not isinstance(body, bytes) else {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        payload = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
        with self.lock:
            self._skip = after
            self._failures.extend(_Failure(status, dict(headers), payload) for _ in range(n))

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> Reply:
        raise NotImplementedError

    def _serve(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        split = urlsplit(target)
        path, query = unquote(split.path), parse_qs(split.query)
        with self.lock:
            failure = None
            if self._failures and self._skip:
                self._skip -= 1
            elif self._failures:
                failure = self._failures.popleft()
        if failure is not None:
            reply: Reply = (failure.status, failure.headers, failure.body)
        else:
            reply = self.handle(method, path, query, headers, body)
        with self.lock:
            self._exchanges.append(Exchange(method, path, query, headers, body, reply[0], reply[2]))
        return reply


class _Handler(OwnedHandler):
    @property
    def backend(self) -> LoopbackBackend:
        return cast(LoopbackBackend, self.owner)

    def _dispatch(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        length = int(headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        status, extra, payload = self.backend._serve(self.command, self.path, headers, body)
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch


# -- Splunk HTTP Event Collector


def hec(status: int, code: int, text: str, **more: Any) -> Reply:
    return json_reply(status, {"text": text, "code": code, **more})


class HecServer(LoopbackBackend):
    """A Splunk HTTP Event Collector: see the module docstring."""

    def __init__(
        self,
        token: str,
        *,
        tls: bool = True,
        ack: bool = False,
        acks_after: int = 0,
        indexes: set[str] | None = None,
        max_content_length: int = 1_000_000,
    ) -> None:
        super().__init__(tls=tls)
        self.token = token
        self.ack = ack
        self.acks_after = acks_after
        """Ack queries that see an ackId as false before it reads true (a very large number: never)."""
        self.indexes = indexes
        """Indexes the token may write to (None: any)."""
        self.max_content_length = max_content_length
        self.events: list[dict[str, Any]] = []
        """Accepted events (the whole envelope), in arrival order."""
        self.event_bodies: list[bytes] = []
        """The raw body of every accepted event request."""
        self._channels: dict[str, dict[int, int]] = {}
        self._next_ack: dict[str, itertools.count[int]] = {}

    @property
    def records(self) -> list[Any]:
        with self.lock:
            return [event["event"] for event in self.events]

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> Reply:
        if path == "/services/collector/health" and method == "GET":
            return hec(200, 17, "HEC is healthy")
        if path not in {"/services/collector/event", "/services/collector/ack"}:
            return hec(404, 404, "The requested URL was not found on this server.")
        if method != "POST":
            return hec(405, 405, "Method not allowed")
        authorization = headers.get("authorization")
        if authorization is None:
            return hec(401, 2, "Token is required")
        scheme, _, token = authorization.partition(" ")
        if scheme != "Splunk" or not token:
            return hec(401, 3, "Invalid authorization")
        if token != self.token:
            return hec(403, 4, "Invalid token")
        channel = headers.get("x-splunk-request-channel") or (query.get("channel") or [None])[0]
        if channel is not None:
            try:
                uuid.UUID(channel)
            except ValueError:
                return hec(400, 11, "Invalid data channel")
        if path == "/services/collector/ack":
            return self._ack_query(channel, body)
        return self._events(channel, body)

    def _events(self, channel: str | None, body: bytes) -> Reply:
        if self.ack and channel is None:
            return hec(400, 10, "Data channel is missing")
        if len(body) > self.max_content_length:
            text = f"Content-Length of {len(body)} too large (maximum is {self.max_content_length})"
            return 413, {"Content-Type": "text/plain"}, text.encode()
        if not body.strip():
            return hec(400, 5, "No data")
        events: list[dict[str, Any]] = []
        decoder = json.JSONDecoder()  # stdlib: reads integers of any size exactly
        text = body.decode("utf-8")
        position = 0
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if position == len(text):
                break
            try:
                value, position = decoder.raw_decode(text, position)
            except ValueError:
                return hec(400, 6, "Invalid data format", **{"invalid-event-number": len(events)})
            number = len(events)
            if not isinstance(value, dict) or "event" not in value:
                return hec(400, 12, "Event field is required", **{"invalid-event-number": number})
            if value["event"] in ("", None):
                return hec(400, 13, "Event field cannot be blank", **{"invalid-event-number": number})
            if self.indexes is not None and "index" in value and value["index"] not in self.indexes:
                return hec(400, 7, "Incorrect index", **{"invalid-event-number": number})
            events.append(value)
        with self.lock:
            self.events.extend(events)
            self.event_bodies.append(body)
            if not self.ack:
                return hec(200, 0, "Success")
            assert channel is not None
            ack_id = next(self._next_ack.setdefault(channel, itertools.count()))
            self._channels.setdefault(channel, {})[ack_id] = self.acks_after
        return hec(200, 0, "Success", ackId=ack_id)

    def _ack_query(self, channel: str | None, body: bytes) -> Reply:
        if not self.ack:
            return hec(400, 14, "ACK is disabled")
        if channel is None:
            return hec(400, 10, "Data channel is missing")
        try:
            ids = json.loads(body)["acks"]
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return hec(400, 6, "Invalid data format")
        answer: dict[str, bool] = {}
        with self.lock:
            pending = self._channels.setdefault(channel, {})
            for ack_id in ids:
                if ack_id in pending and pending[ack_id] <= 0:
                    del pending[ack_id]  # read once: asking again answers false
                    answer[str(ack_id)] = True
                else:
                    if ack_id in pending:
                        pending[ack_id] -= 1
                    answer[str(ack_id)] = False
        return json_reply(200, {"acks": answer})


# -- Elasticsearch _bulk


def es_error(status: int, kind: str, reason: str, **more: Any) -> Reply:
    error = {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason, **more}
    return json_reply(status, {"error": error, "status": status})


@dataclass
class _ItemScript:
    throttle: int = 0
    mapping_errors: dict[str, str] = field(default_factory=dict)  # field -> mapped type (long, date, ...)
    forbidden: bool = False


class BulkServer(LoopbackBackend):
    """An Elasticsearch (or OpenSearch) node's ``/``, ``HEAD /<index>`` and ``_bulk``: see the module docstring."""

    def __init__(
        self,
        *,
        tls: bool = True,
        api_key: str | None = None,
        basic: tuple[str, str] | None = None,
        indexes: set[str] | None = None,
        auto_create: bool = True,
        monitor_privilege: bool = True,
        default_pipeline: Callable[[str | None, Any], tuple[str | None, Any]] | None = None,
        require_timestamp: bool = False,
    ) -> None:
        super().__init__(tls=tls)
        self.default_pipeline = default_pipeline
        """(request _id, source) -> (_id, source) for every document, as the index's default pipeline."""
        self.require_timestamp = require_timestamp
        self.api_key = api_key
        self.basic = basic
        self.auto_create = auto_create
        self.monitor_privilege = monitor_privilege
        self.documents: dict[str, dict[str, Any]] = {name: {} for name in indexes or ()}
        """index -> _id -> source, in insertion order."""
        self.actions: list[tuple[dict[str, Any], Any]] = []
        """Every (action line, document) pair received, accepted or not."""
        self._items = _ItemScript()

    def docs(self, index: str) -> list[Any]:
        with self.lock:
            return list(self.documents.get(index, {}).values())

    def throttle_items(self, n: int) -> None:
        """Answer 429 (es_rejected_execution_exception) to the next ``n`` create items."""
        with self.lock:
            self._items.throttle += n

    def map_field(self, name: str, mapped_type: str = "long") -> None:
        """Refuse documents whose ``name`` is not an integer, as a ``long`` mapping would (400)."""
        with self.lock:
            self._items.mapping_errors[name] = mapped_type

    def forbid_writes(self) -> None:
        """Answer 403 security_exception to every item (an API key without create_doc)."""
        with self.lock:
            self._items.forbidden = True

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> Reply:
        denied = self._authenticate(headers, path)
        if denied is not None:
            return denied
        parts = [part for part in path.split("/") if part]
        if method == "GET" and not parts:
            if not self.monitor_privilege:
                return es_error(403, "security_exception", "action [cluster:monitor/main] is unauthorized")
            info = {
                "name": "node-1",
                "cluster_name": "test",
                "version": {"number": "8.13.4"},
                "tagline": "You Know, for Search",
            }
            return json_reply(200, info)
        if method == "HEAD" and len(parts) == 1:
            with self.lock:
                exists = parts[0] in self.documents
            return (200 if exists else 404), {"Content-Type": "application/json"}, b""
        if method in {"POST", "PUT"} and parts and parts[-1] == "_bulk" and len(parts) <= 2:
            return self._bulk(parts[0] if len(parts) == 2 else None, headers, body)
        return es_error(405, "illegal_argument_exception", f"no handler for [{method}] {path}")

    def _authenticate(self, headers: dict[str, str], path: str) -> Reply | None:
        if self.api_key is None and self.basic is None:
            return None
        given = headers.get("authorization", "")
        expected = []
        if self.api_key is not None:
            expected.append(f"ApiKey {self.api_key}")
        if self.basic is not None:
            expected.append("Basic " + base64.b64encode(":".join(self.basic).encode()).decode())
        if given in expected:
            return None
        status, extra, body = es_error(401, "security_exception", f"unable to authenticate for REST request [{path}]")
        return status, {**extra, "WWW-Authenticate": 'ApiKey, Basic realm="security"'}, body

    def _bulk(self, path_index: str | None, headers: dict[str, str], body: bytes) -> Reply:
        content_type = headers.get("content-type", "")
        if "application/x-ndjson" not in content_type and "application/json" not in content_type:
            return json_reply(406, {"error": f"Content-Type header [{content_type}] is not supported", "status": 406})
        if not body.endswith(b"\n"):
            return es_error(400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
        lines = body.decode("utf-8").split("\n")[:-1]
        if not lines:
            return es_error(400, "action_request_validation_exception", "Validation Failed: 1: no requests added;")
        items: list[dict[str, Any]] = []
        pairs = iter(lines)
        for line in pairs:
            action = json.loads(line)
            ((op, meta),) = action.items()
            source_line = next(pairs, None)
            if op != "create" or source_line is None:
                return es_error(400, "illegal_argument_exception", f"this fake accepts create actions only, got [{op}]")
            source = json.loads(source_line)
            index = meta.get("_index") or path_index
            with self.lock:
                self.actions.append((action, source))  # as received, before any pipeline
            doc_id = meta.get("_id")
            if self.default_pipeline is not None:
                doc_id, source = self.default_pipeline(doc_id, source)
            with self.lock:
                items.append({"create": self._create(index, doc_id, source)})
        errors = any(item["create"]["status"] >= 300 for item in items)
        return json_reply(200, {"took": 3, "errors": errors, "items": items})

    def _create(self, index: str, doc_id: str | None, source: Any) -> dict[str, Any]:
        """One create item (called under the lock)."""
        result: dict[str, Any] = {"_index": index, "_id": doc_id or uuid.uuid4().hex}

        def failed(status: int, kind: str, reason: str) -> dict[str, Any]:
            return {**result, "status": status, "error": {"type": kind, "reason": reason, "index": index}}

        script = self._items
        if script.forbidden:
            return failed(
                403, "security_exception", f"action [indices:data/write/bulk[s]] is unauthorized on [{index}]"
            )
        if index not in self.documents and not self.auto_create:
            return failed(404, "index_not_found_exception", f"no such index [{index}]")
        if self.require_timestamp and not (isinstance(source, dict) and "@timestamp" in source):
            return failed(400, "document_parsing_exception", "data stream timestamp field [@timestamp] is missing")
        if script.throttle:
            script.throttle -= 1
            return failed(429, "es_rejected_execution_exception", "rejected execution of coordinating operation")
        for name, mapped_type in script.mapping_errors.items():
            value = source.get(name) if isinstance(source, dict) else None
            if value is not None and not isinstance(value, int):
                return failed(
                    400,
                    "document_parsing_exception",
                    f"[1:42] failed to parse field [{name}] of type [{mapped_type}] in document with id "
                    f"'{result['_id']}'. Preview of field's value: '{value}'",
                )
        stored = self.documents.setdefault(index, {})
        if result["_id"] in stored:
            reason = f"[{result['_id']}]: version conflict, document already exists (current version [1])"
            return failed(409, "version_conflict_engine_exception", reason)
        stored[result["_id"]] = source
        return {**result, "_version": 1, "result": "created", "status": 201}
