"""Starts Azurite (the Azure Storage emulator from npm) on loopback, for the demo and the tests.

Development tooling only: the deployed app never calls this.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Azurite's fixed development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def find_azurite(start: Path | None = None) -> Path | None:
    """``node_modules/.bin/azurite`` in this checkout (``npm ci``), or ``azurite`` on PATH."""
    here = (start or Path(__file__)).resolve()
    for folder in [here, *here.parents]:
        candidate = folder / "node_modules" / ".bin" / "azurite"
        if candidate.exists():
            return candidate
    found = shutil.which("azurite")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Azurite:
    process: subprocess.Popen[bytes]
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT};"
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_azurite(workdir: Path, *, executable: Path | None = None, timeout: float = 30.0) -> Azurite:
    """Start Azurite in memory on free loopback ports and wait until all three services accept connections."""
    exe = executable or find_azurite()
    if exe is None:
        raise FileNotFoundError("Azurite is not installed: run `npm ci` in the project folder (see README)")
    ports = _free_port(), _free_port(), _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = (workdir / "azurite.log").open("wb")
    process = subprocess.Popen(
        [
            str(exe),
            "--silent",
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(ports[0]),
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            str(ports[1]),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(ports[2]),
        ],
        cwd=workdir,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    azurite = Azurite(process, *ports)
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Azurite exited with code {process.returncode}; see {workdir / 'azurite.log'}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    azurite.stop()
                    raise TimeoutError(f"Azurite did not open port {port} within {timeout:.0f}s") from None
                time.sleep(0.05)
    return azurite
