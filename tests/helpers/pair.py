"""An in-memory client/server pair of :class:`Connection` objects, and the
plumbing to move bytes between them (after h11's and aioquic's test helpers)."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from elink_protocol.config import Config
from elink_protocol.connection import Connection, Transport
from elink_protocol.crypto.identity import ServerIdentity
from elink_protocol.crypto.suites import CipherSuite
from elink_protocol.events import NEED_DATA
from elink_protocol.state import Role

MODERN = (
    CipherSuite.ECDHE_X25519_AES_256_GCM_SHA256,
    CipherSuite.ECDHE_X25519_CHACHA20_POLY1305_SHA256,
)
LEGACY = (
    CipherSuite.RSA_AES_256_CBC_HMAC_SHA256,
    CipherSuite.RSA_3DES_EDE_CBC_HMAC_SHA256,
    CipherSuite.RSA_DES_CBC_HMAC_SHA256,
)
ALL_SUITES = MODERN + LEGACY


@functools.cache
def identity(rsa: bool = True) -> ServerIdentity:
    """One Ed25519 + RSA-2048 identity for the whole test run (RSA keygen is slow)."""
    return ServerIdentity.generate(ed25519=True, rsa_bits=2048 if rsa else None)


def seeded_random(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def make_pair(
    *,
    suite: int = CipherSuite.ECDHE_X25519_AES_256_GCM_SHA256,
    transport: Transport = Transport.STREAM,
    client: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    seed: int | None = None,
    now: float = 0.0,
) -> tuple[Connection, Connection]:
    """A client and a server that will agree on ``suite``."""
    ident = identity()
    legacy = suite in LEGACY
    server_config = Config(
        identity=ident,
        suites=(suite,),
        allow_legacy_suites=legacy,
        **(server or {}),
    )
    client_config = Config(
        suites=(suite,),
        trusted_server_keys=frozenset(ident.fingerprints().values()),
        **(client or {}),
    )
    kwargs: dict[str, Any] = {"transport": transport, "now": now}
    c = Connection(
        role=Role.CLIENT,
        config=client_config,
        random=seeded_random(seed) if seed is not None else _urandom(),
        **kwargs,
    )
    s = Connection(
        role=Role.SERVER,
        config=server_config,
        random=seeded_random(seed + 1) if seed is not None else _urandom(),
        **kwargs,
    )
    return c, s


def _urandom() -> Callable[[int], bytes]:
    import os

    return os.urandom


def drain(conn: Connection) -> list[Any]:
    """Every event ready on ``conn``."""
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def transfer(
    src: Connection, dst: Connection, *, chunks: Callable[[bytes], Iterable[bytes]] | None = None
) -> list[Any]:
    """Stream: move ``src``'s pending bytes into ``dst`` and return ``dst``'s events."""
    data = src.data_to_send()
    if not data:
        return []
    pieces = [data] if chunks is None else list(chunks(data))
    events: list[Any] = []
    for piece in pieces:
        dst.receive_data(piece)
        events += drain(dst)
    return events


@attrs.define
class Exchange:
    client_events: list[Any] = attrs.Factory(list)
    server_events: list[Any] = attrs.Factory(list)


def roundtrip_until_quiet(client: Connection, server: Connection, rounds: int = 20) -> Exchange:
    """Stream: shuttle bytes both ways until neither side has anything to send."""
    out = Exchange()
    for _ in range(rounds):
        to_server = client.data_to_send()
        to_client = server.data_to_send()
        if not to_server and not to_client:
            return out
        if to_server:
            server.receive_data(to_server)
            out.server_events += drain(server)
        if to_client:
            client.receive_data(to_client)
            out.client_events += drain(client)
    raise AssertionError("connections kept talking")


def establish(client: Connection, server: Connection) -> Exchange:
    """Stream: run the handshake to completion."""
    client.initiate()
    return roundtrip_until_quiet(client, server)
