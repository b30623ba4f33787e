"""The light bus over a bad UDP network: a seeded proxy on loopback drops,
duplicates, reorders, delays and corrupts datagrams, and sessions keep their
exact semantics (docs/protocol.md §6.4-§6.9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import elink_sdk
from elink_protocol import Config
from elink_sdk import MessageReceived
from tests.helpers.sdk import sdk_client, sdk_server
from tests.helpers.udp_proxy import open_lossy_udp_proxy

#: The whole exchange must finish well inside this (seconds); it is a bound,
#: not a measurement (benchmarks/udp_lossy.py measures).
DEADLINE = 90.0

#: Loopback round trips are a few milliseconds: a 200 ms floor on the
#: retransmission timeout would make every loss cost 200 ms.
LAN_MIN_RTO = 0.03

#: Tuned for a link that loses 36% of the datagrams each way (20% dropped,
#: then 20% of the rest corrupted): the handshake
#: retransmits after 0.2 s rather than 1 s and backoff stops at 1 s; a packet
#: may be re-sent 20 times (8 consecutive losses are not rare here); the
#: handshake may take 30 s.  Rekey every 150 packets so that key updates run
#: during the exchange.
LOSSY_CONFIG = Config(
    initial_rtt=0.1,
    min_rto=LAN_MIN_RTO,
    max_rto=1.0,
    max_retransmissions=20,
    handshake_timeout=30.0,
    rekey_after_packets=150,
)
LOSSY_SERVER = {
    "handshake_timeout": 30.0,
    "min_rto": LAN_MIN_RTO,
    "max_rto": 1.0,
    "max_retransmissions": 20,
}

OVER_UDP = {
    "transport": "udp",
    "config": LOSSY_CONFIG,
    "connect_timeout": 30.0,
    "request_timeout": DEADLINE,
}

BAD = {"drop": 0.2, "duplicate": 0.2, "reorder": 0.2, "delay": 0.2, "corrupt": 0.2}


async def _send_in_order(
    client: elink_sdk.Client, to: str, texts: list[str], sent: list[elink_sdk.SentMessage]
) -> None:
    """Send every text concurrently (pipelined), each request queued after the
    one before: a new send starts only once every task is blocked, that is,
    once the previous request is on the wire or waiting for its answer."""

    async def one(index: int, text: str) -> None:
        sent[index] = await client.send_text(to, text)

    async with trio.open_nursery() as nursery:
        for index, text in enumerate(texts):
            nursery.start_soon(one, index, text)
            await trio.testing.wait_all_tasks_blocked()


async def _receive(client: elink_sdk.Client, count: int) -> list[MessageReceived]:
    got: list[MessageReceived] = []
    while len(got) < count:
        event = await client.next_event()
        if isinstance(event, MessageReceived):
            got.append(event)
    return got


@pytest.mark.parametrize(
    ("rate", "half"),
    [
        # 20% of each: 36% of the datagrams are lost each way (dropped or
        # corrupted), and AIMD holds the window at 2-3 packets: about 10
        # messages a second, so 160 messages here (the benchmark runs more).
        (0.20, 80),
        # A thousand messages on a link that is bad but usable.
        (0.05, 500),
    ],
)
async def test_messages_over_a_bad_link_arrive_once_in_order_with_receipts(
    tmp_path: Path, rate: float, half: int
) -> None:
    rates = dict.fromkeys(BAD, rate)
    async with (
        sdk_server(tmp_path, **LOSSY_SERVER) as server,
        open_lossy_udp_proxy(server.udp.port, seed=8, **rates) as proxy,  # type: ignore[union-attr]
    ):
        with trio.fail_after(DEADLINE):
            async with (
                sdk_client(proxy.port, "alice", **OVER_UDP) as alice,
                sdk_client(proxy.port, "bob", **OVER_UDP) as bob,
            ):
                to_bob = [f"a{i}" for i in range(half)]
                to_alice = [f"b{i}" for i in range(half)]
                from_alice: list[elink_sdk.SentMessage] = [None] * half  # type: ignore[list-item]
                from_bob: list[elink_sdk.SentMessage] = [None] * half  # type: ignore[list-item]
                results: dict[str, list[MessageReceived]] = {}

                async def collect(name: str, client: elink_sdk.Client) -> None:
                    results[name] = await _receive(client, half)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(collect, "bob", bob)
                    nursery.start_soon(collect, "alice", alice)
                    nursery.start_soon(_send_in_order, alice, "bob", to_bob, from_alice)
                    nursery.start_soon(_send_in_order, bob, "alice", to_alice, from_bob)

                # Exactly once and in order: the receivers saw each text once,
                # in the order it was sent, with the server's sequence numbers.
                assert [e.text for e in results["bob"]] == to_bob
                assert [e.text for e in results["alice"]] == to_alice
                assert [e.message.seq for e in results["bob"]] == [s.seq for s in from_alice]
                assert [e.message.seq for e in results["alice"]] == [s.seq for s in from_bob]
                assert not any(s.duplicate for s in from_alice + from_bob)
                # Receipts: taking the events confirmed them to the senders.
                for sent in from_alice + from_bob:
                    await sent.wait_delivered()
                # Key updates ran over the same link, and the link was bad.
                for client in (alice, bob):
                    stats = client.statistics()
                    assert stats.transport == "udp"
                    assert stats.key_epoch >= 1
                    assert stats.retransmissions > 0
    # Every kind of damage happened, many times.
    damage = proxy.stats
    assert min(damage.dropped, damage.corrupted, damage.duplicated) > 50
    assert min(damage.reordered, damage.delayed) > 50
