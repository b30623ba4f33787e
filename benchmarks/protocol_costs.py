"""CPU cost of the protocol library's hot paths, per cipher suite.

    python -m benchmarks.protocol_costs [--quick]

Measures, in one process on one core:

* sending a 256-byte chat packet: ``Connection.send()`` (scheduler, PID,
  header, encryption) -> bytes;
* receiving it: ``receive_data()`` + ``next_event()`` (frame parsing,
  decryption, msgpack decoding, packet validation) -> the packet;
* a full handshake, client and server together, in memory.

Numbers are medians of several runs; the machine is shared and noisy, so read
them as +-20%.  Results go to stdout as a Markdown table for
docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

from elink_protocol import (
    NEED_DATA,
    CipherSuite,
    Config,
    Connection,
    Role,
    ServerIdentity,
    SignatureAlgorithm,
    UnknownPacket,
)
from elink_protocol.payload import encode_payload

MODERN = (
    CipherSuite.ECDHE_X25519_AES_256_GCM_SHA256,
    CipherSuite.ECDHE_X25519_CHACHA20_POLY1305_SHA256,
)


def _pair(suite: int, identity: ServerIdentity) -> tuple[Connection, Connection]:
    legacy = suite not in MODERN
    server = Connection(
        role=Role.SERVER,
        config=Config(identity=identity, suites=(suite,), allow_legacy_suites=legacy),
    )
    client = Connection(
        role=Role.CLIENT,
        config=Config(
            suites=(suite,),
            trusted_server_keys=frozenset(identity.fingerprints().values()),
            # The benchmark never returns the server's acks to the client.
            max_unacked_packets=200_000,
        ),
    )
    return client, server


def _drain(conn: Connection) -> None:
    while conn.next_event() is not NEED_DATA:
        pass


def _handshake(client: Connection, server: Connection) -> None:
    client.initiate()
    for _ in range(3):
        for src, dst in ((client, server), (server, client)):
            data = src.data_to_send()
            if data:  # an empty read would mean end of stream
                dst.receive_data(data)
                _drain(dst)


def _median_us(fn: Callable[[], None], *, number: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            fn()
        times.append((time.process_time() - start) / number)
    return statistics.median(times) * 1e6


def measure(quick: bool) -> list[tuple[str, str, float, float, float]]:
    # The server signs with Ed25519 when it has that key and the suite is
    # modern; an RSA-only identity makes it sign with RSA-PSS.
    identities = {
        SignatureAlgorithm.ED25519: ServerIdentity.generate(ed25519=True, rsa_bits=2048),
        SignatureAlgorithm.RSA_PSS_RSAE_SHA256: ServerIdentity.generate(
            ed25519=False, rsa_bits=2048
        ),
    }
    rows = []
    chat = UnknownPacket(
        type=0x8001, payload=encode_payload({"t": "x" * 240, "to": "bob", "id": os.urandom(8)})
    )
    assert 250 <= len(chat.payload) <= 270
    combos: list[tuple[int, SignatureAlgorithm]] = [
        (MODERN[0], SignatureAlgorithm.ED25519),
        (MODERN[1], SignatureAlgorithm.ED25519),
        (MODERN[0], SignatureAlgorithm.RSA_PSS_RSAE_SHA256),
        (CipherSuite.RSA_AES_256_CBC_HMAC_SHA256, SignatureAlgorithm.RSA_PSS_RSAE_SHA256),
        (CipherSuite.RSA_3DES_EDE_CBC_HMAC_SHA256, SignatureAlgorithm.RSA_PSS_RSAE_SHA256),
        (CipherSuite.RSA_DES_CBC_HMAC_SHA256, SignatureAlgorithm.RSA_PSS_RSAE_SHA256),
    ]
    n_hs, n_msg, repeat = (20, 2000, 3) if quick else (100, 20000, 5)
    for suite, sig in combos:
        ident = identities[sig]
        hs = _median_us(
            lambda s=suite, i=ident: _handshake(*_pair(s, i)), number=n_hs, repeat=repeat
        )
        client, server = _pair(suite, ident)
        _handshake(client, server)
        wires: list[bytes] = []

        def send(c: Connection = client, out: list[bytes] = wires) -> None:
            out.append(c.send(chat))

        send_us = _median_us(send, number=n_msg, repeat=repeat)
        frames = iter(wires)

        def receive(s: Connection = server, source: Iterator[bytes] = frames) -> None:
            s.receive_data(next(source))
            event = s.next_event()
            assert event == chat

        # every send produced one frame; receive them in order
        recv_us = _median_us(receive, number=n_msg, repeat=repeat)
        rows.append((CipherSuite(suite).name, sig.name, hs, send_us, recv_us))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    rows = measure(args.quick)
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print()
    print(
        "| Suite | Server signature | Full handshake, client+server (µs) "
        "| Send 256-B chat packet (µs) | Receive it (µs) |"
    )
    print("|---|---|---|---|---|")
    for suite, sig, hs, send_us, recv_us in rows:
        print(f"| {suite} | {sig} | {hs:,.0f} | {send_us:.1f} | {recv_us:.1f} |")


if __name__ == "__main__":
    main()
