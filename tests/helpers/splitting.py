"""Feed bytes to a parser in every way a network could deliver them."""

from __future__ import annotations

import random
from collections.abc import Iterator


def whole(data: bytes) -> Iterator[bytes]:
    if data:  # an empty read would mean end of stream
        yield data


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def random_splits(data: bytes, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    i = 0
    while i < len(data):
        n = rng.randint(1, max(1, len(data) // 3))
        yield data[i : i + n]
        i += n


def all_splits(data: bytes) -> list[list[bytes]]:
    """The ways every test feeds the same bytes: whole, one byte at a time,
    and at five seeded random split points."""
    return [list(whole(data)), list(byte_by_byte(data))] + [
        list(random_splits(data, seed)) for seed in range(5)
    ]
