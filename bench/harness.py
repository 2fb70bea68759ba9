"""What the benchmarks share: the machine's description, a fast loopback receiver, the API simulator
in a process of its own, Azurite, and the collector's settings.

The collector under test runs in the benchmark's own process, exactly as ``run --once`` runs it (the
same ``Collector``, ``QueueRunner`` and sinks). The simulator and the receiver stand for services on
other machines; they run in a child process so that their work is not counted against the
collector's interpreter (they still share the machine's cores, which makes the figures conservative).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import socket
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from azure.core.pipeline.transport import RequestsTransport

from bench.workload import BlobBody
from o365collector.azurite import Azurite, start_azurite
from o365collector.models import CONTENT_TYPES
from o365collector.simulator import Simulator, SimulatorConfig, TenantSpec

TENANT = TenantSpec(
    tenant_id="3c9a4f2e-7b1d-4e8a-9f60-2d5b8c1a7e34",
    client_id="8e2f6a1c-4d3b-4a7e-b5c9-0f1e2d3c4b5a",
    client_secret="bench-secret-not-real",
    subscribed=CONTENT_TYPES,
)


def machine() -> str:
    """CPU model, cores, memory, Python and OS: printed with every figure."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as handle:
        total_kb = int(handle.readline().split()[1])
        memory = f", {total_kb / 1024 / 1024:.0f} GiB RAM"
    return (
        f"{model}, {os.cpu_count()} cores{memory}; Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> None:
    """Make VmHWM start again from the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def vm_hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- the receiver ------------------------------------------------------------------------------


@dataclass
class ReceiverStats:
    requests: int = 0
    records: int = 0
    body_bytes: int = 0
    wire_bytes: int = 0
    refused: int = 0
    # content id -> (first accepted, last accepted), time.time() of each accepted request
    accepted_at: dict[str, tuple[float, float]] = field(default_factory=dict)


class FastReceiver:
    """A loopback HTTP ingest endpoint that inflates and counts NDJSON lines, and keeps nothing else.

    It answers 200 once a body is read, then inflates and counts it (an ingest endpoint that queues
    what it receives); ``settle()`` waits until every accepted body is counted.

    ``clock`` stamps accepted requests (epoch seconds); a benchmark that moves time passes its own.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.stats = ReceiverStats()
        self.refusing = False
        self._clock = clock
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._pending = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(200)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.refusing:
                    with receiver._lock:
                        receiver.stats.refused += 1
                    self._answer(503)
                    return
                now = receiver._clock()
                content_id = self.headers.get("X-O365-Content-Id", "")
                gzipped = self.headers.get("Content-Encoding") == "gzip"
                # Accepted once read, as an ingest endpoint that queues does; counting comes after the answer.
                with receiver._lock:
                    receiver._pending += 1
                self._answer(200)
                body = zlib.decompress(raw, wbits=31) if gzipped else raw
                with receiver._lock:
                    receiver._pending -= 1
                    receiver._settled.notify_all()
                    stats = receiver.stats
                    stats.requests += 1
                    stats.records += body.count(b"\n")
                    stats.body_bytes += len(body)
                    stats.wire_bytes += len(raw)
                    first, _ = stats.accepted_at.get(content_id, (now, now))
                    stats.accepted_at[content_id] = (first, now)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/ingest"

    def settle(self, timeout: float = 30.0) -> ReceiverStats:
        """The stats once every accepted body is counted."""
        with self._settled:
            self._settled.wait_for(lambda: self._pending == 0, timeout)
            return self.stats

    def start(self) -> FastReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SteppedClock:
    """The real clock plus an offset that only grows: a benchmark jumps over idle time instead of sleeping."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, delta: dt.timedelta) -> None:
        self.offset += max(delta, dt.timedelta(0))

    def advance_to(self, when: dt.datetime) -> None:
        self.advance(when - self())


# -- the simulator and the receiver in a child process -------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    api_url: str
    ca_file: str
    receiver_url: str


def _services_main(
    conn: multiprocessing.connection.Connection,
    blobs: Sequence[BlobBody] | Callable[[], Sequence[BlobBody]],
    created: dt.datetime,
    seed: int,
) -> None:
    sim = Simulator(SimulatorConfig(seed=seed, page_size=100))
    sim.add_tenant(TENANT)
    served = blobs() if callable(blobs) else blobs
    for index, blob in enumerate(served):
        # contentCreated a millisecond apart, ending at ``created``.
        when = created - dt.timedelta(milliseconds=len(served) - index)
        sim.add_blob(TENANT.tenant_id, blob.content_type, when, blob.body)
    del served
    sim.start()
    receiver = FastReceiver().start()
    conn.send(Endpoints(sim.api_url, sim.ca_file, receiver.url))
    while True:
        command = conn.recv()
        if command == "stats":
            conn.send((receiver.settle(), dict(sim.stats.fetches), dict(sim.stats.requests)))
        elif command == "refuse":
            receiver.refusing = True
            conn.send(None)
        elif command == "accept":
            receiver.refusing = False
            conn.send(None)
        else:
            break
    receiver.stop()
    sim.stop()
    conn.send(None)


class Services:
    """The simulator (serving ``blobs``) and a ``FastReceiver``, in a forked child process.

    ``blobs`` may be a function that makes them: it then runs in the child, and the blobs never take
    memory in the benchmark's process.
    """

    def __init__(
        self,
        blobs: Sequence[BlobBody] | Callable[[], Sequence[BlobBody]],
        *,
        created: dt.datetime,
        seed: int = 1,
    ) -> None:
        self._start(_services_main, (blobs, created, seed))

    def _start(self, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        """Fork ``target(conn, *args)``; it answers with the endpoints, then serves "stats" until "stop"."""
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=target, args=(child, *args), daemon=True)
        self._process.start()
        self.endpoints: Endpoints = self._conn.recv()

    def stats(self) -> tuple[ReceiverStats, dict[str, int], dict[str, int]]:
        """(receiver stats, successful fetches per content id, API requests per route)."""
        self._conn.send("stats")
        stats: tuple[ReceiverStats, dict[str, int], dict[str, int]] = self._conn.recv()
        return stats

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send("stop")
            self._conn.recv()
        self._process.join(10)


# -- storage transactions --------------------------------------------------------------------


@dataclass
class StorageCounter:
    """Counts the storage account's REST calls by service, resource and operation (each is one billed transaction)."""

    queue_port: int
    table_port: int
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def classify(self, method: str, url: str) -> tuple[str, str, str]:
        parts = urlsplit(url)
        segments = [s for s in parts.path.split("/") if s][1:]  # drop the account name
        query = parts.query
        if parts.port == self.queue_port:
            name = segments[0] if segments else "(account)"
            if len(segments) == 1:
                op = "properties" if "comp=metadata" in query and method == "GET" else f"{method} queue"
            elif len(segments) == 2:
                op = {"POST": "put message", "GET": "get messages", "DELETE": "clear"}.get(method, method)
            else:
                op = {"DELETE": "delete message", "PUT": "update message"}.get(method, method)
            return "queue", name, op
        if parts.port != self.table_port:
            return "other", parts.netloc, method  # azure-identity's token calls use the same transport
        head = segments[0] if segments else "(account)"
        if head.startswith("Tables"):
            return "table", "(tables)", f"{method} table"
        if head.startswith("$batch"):
            return "table", "(entity group)", "batch of entities"
        name, _, keys = head.partition("(")
        if method == "GET":
            op = "read entity" if "RowKey=" in keys else "query"
        elif method == "POST":
            op = "insert entity"
        elif method == "DELETE":
            op = "delete entity"
        else:
            op = "update entity"
        return "table", name, op

    @contextlib.contextmanager
    def counting(self) -> Iterator[StorageCounter]:
        """Count every request azure-core's requests transport sends while inside the block."""
        original = RequestsTransport.send
        counter = self

        def send(transport: RequestsTransport, request: Any, **kwargs: Any) -> Any:
            counter.counts[counter.classify(request.method, request.url)] += 1
            return original(transport, request, **kwargs)

        RequestsTransport.send = send
        try:
            yield self
        finally:
            RequestsTransport.send = original


@contextlib.contextmanager
def azurite() -> Iterator[Azurite]:
    with tempfile.TemporaryDirectory(prefix="o365-bench-") as scratch:
        instance = start_azurite(Path(scratch) / "azurite")
        try:
            yield instance
        finally:
            instance.stop()


def collector_env(
    endpoints: Endpoints, storage: Azurite, *, start: dt.datetime, run: str = "bench", **overrides: str
) -> dict[str, str]:
    """Settings for a collector pointed at the services and Azurite (fresh queue and tables per ``run``)."""
    sim_env = {
        "O365_API_URL": endpoints.api_url,
        "O365_AUTHORITY_HOST": endpoints.api_url,
        "REQUESTS_CA_BUNDLE": endpoints.ca_file,
        "O365_TENANT_ID": TENANT.tenant_id,
        "O365_CLIENT_ID": TENANT.client_id,
        "O365_CLIENT_SECRET": TENANT.client_secret,
    }
    return (
        sim_env
        | {
            "AzureWebJobsStorage": storage.connection_string,
            "SINK_TYPE": "http",
            "SINK_URL": endpoints.receiver_url,
            "O365_START_TIME": start.isoformat(),
            "O365_CONTENT_QUEUE": f"content-{run}",
            "O365_CHECKPOINT_TABLE": f"cp{run}",
            "O365_LEDGER_TABLE": f"ledger{run}",
        }
        | overrides
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
