"""Parallel gzip: one standard gzip member, whatever the block cuts, readable by any gzip reader."""

from __future__ import annotations

import gzip
import io
import random
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from o365collector.sinks.compression import compress


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def audit_like(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [b"FileAccessed", b"MailItemsAccessed", b"contoso", b'"Workload":"Exchange"', b"\xc3\xa9", b"0123"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" " + str(rng.getrandbits(24)).encode()
    return bytes(out[:size])


@pytest.mark.parametrize("size", [0, 1, 1000, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 17, 100_000])
@pytest.mark.parametrize("level", [1, 6])
def test_every_cut_decodes_to_the_same_bytes_with_any_gzip_reader(
    pool: ThreadPoolExecutor, size: int, level: int
) -> None:
    data = audit_like(size)
    body = compress(data, level, pool, block_bytes=4096).result()
    assert gzip.decompress(body) == data
    assert zlib.decompressobj(wbits=31).decompress(body) == data  # a single member: readers that stop after one
    with gzip.GzipFile(fileobj=io.BytesIO(body)) as reader:
        assert reader.read() == data
    assert body[:4] == b"\x1f\x8b\x08\x00"


def test_matches_reach_across_block_cuts(pool: ThreadPoolExecutor) -> None:
    data = audit_like(64 * 1024, seed=2) * 8  # repeats lie across the 16 KiB cuts
    parallel = compress(data, 6, pool, block_bytes=16 * 1024).result()
    assert len(parallel) < len(gzip.compress(data, 6)) * 1.05


def test_the_same_input_compresses_to_the_same_bytes(pool: ThreadPoolExecutor) -> None:
    data = audit_like(50_000)
    assert compress(data, 1, pool, block_bytes=8192).result() == compress(data, 1, pool, block_bytes=8192).result()
