"""The light bus over a lossy path: UDP against TCP through the same proxy.

    python -m benchmarks.udp_lossy [--messages N] [--window W] [--latency S]

Alice and bob log in through :func:`elink_sdk.connect` via a proxy on
loopback that adds ``latency`` seconds each way.  For UDP the proxy is the
seeded lossy proxy of the tests (``tests/helpers/udp_proxy.py``), run at 0%,
5% and 20% datagram loss (drops only: what loss costs); for TCP it is a
delaying proxy (a TCP proxy cannot lose bytes, so TCP is measured at the same
delay with no loss, its best case).  Alice sends N messages with W of them in
flight at once; the script reports:

* **delivered**: messages bob received (exactly once, in order) out of N;
* **latency**: from the start of ``send_text`` until bob's event, p50/p99;
* **accept**: from the start of ``send_text`` until the server's answer;
* **rate**: messages per second over the whole run.

Server and clients run in one process under Trio (one core), so the numbers
include the server's cost; they are rough (the machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
import trio

import elink_sdk
from elink_protocol import Config
from elink_sdk import MessageReceived
from elink_server.host import open_server
from elink_server.settings import ServerSettings
from tests.helpers.pair import identity
from tests.helpers.server import add_user
from tests.helpers.udp_proxy import open_lossy_udp_proxy

LOSSES = (0.0, 0.05, 0.20)
PIN = sorted(identity().fingerprints().values())


@contextlib.asynccontextmanager
async def delaying_tcp_proxy(target: int, latency: float) -> AsyncIterator[int]:
    """Forward TCP to ``127.0.0.1:target``, every chunk ``latency`` late."""

    async def pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](1024)

        lost = (trio.BrokenResourceError, trio.ClosedResourceError)

        async def reader() -> None:
            with contextlib.suppress(*lost):
                async with send:
                    while data := await source.receive_some(65536):
                        await send.send((trio.current_time() + latency, data))

        async def writer() -> None:
            with contextlib.suppress(*lost):
                async with receive:
                    async for due, data in receive:
                        await trio.sleep_until(due)
                        await sink.send_all(data)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)

    async def handle(client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream("127.0.0.1", target) as upstream,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(pipe, client, upstream)
            nursery.start_soon(pipe, upstream, client)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def run_case(
    server_port: int,
    udp_port: int,
    *,
    transport: str,
    loss: float,
    messages: int,
    window: int,
    latency: float,
    seed: int,
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "password": "secret",
        "server_fingerprint": PIN,
        "transport": transport,
        "connect_timeout": 60.0,
        "request_timeout": 120.0,
        # Loopback plus the proxy: start from a 20 ms RTT guess, not 500 ms.
        "config": Config(initial_rtt=0.02, max_retransmissions=20),
    }
    async with contextlib.AsyncExitStack() as stack:
        if transport == "udp":
            proxy = await stack.enter_async_context(
                open_lossy_udp_proxy(udp_port, seed=seed, drop=loss, latency=latency)
            )
            port = proxy.port
        else:
            port = await stack.enter_async_context(delaying_tcp_proxy(server_port, latency))
        alice = await stack.enter_async_context(
            elink_sdk.connect("127.0.0.1", port, user="alice", device_id="a", **options)
        )
        bob = await stack.enter_async_context(
            elink_sdk.connect("127.0.0.1", port, user="bob", device_id="b", **options)
        )
        started: dict[str, float] = {}
        accepted: list[float] = []
        delivered: list[float] = []
        received: list[str] = []
        slots = trio.Semaphore(window)
        begin = trio.current_time()

        async def send(index: int) -> None:
            text = f"m{index}"
            started[text] = trio.current_time()
            await alice.send_text("bob", text)
            accepted.append(trio.current_time() - started[text])
            slots.release()

        async def receive() -> None:
            while len(received) < messages:
                event = await bob.next_event()
                if isinstance(event, MessageReceived) and event.text is not None:
                    received.append(event.text)
                    delivered.append(trio.current_time() - started[event.text])

        with trio.move_on_after(300):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                for index in range(messages):
                    await slots.acquire()
                    nursery.start_soon(send, index)
        elapsed = trio.current_time() - begin
        in_order = received == [f"m{i}" for i in range(len(received))]
        return {
            "transport": transport,
            "loss": loss,
            "delivered": len(set(received)),
            "duplicates": len(received) - len(set(received)),
            "in_order": in_order,
            "p50_ms": 1000 * statistics.median(delivered),
            "p99_ms": 1000 * statistics.quantiles(delivered, n=100)[98],
            "accept_p50_ms": 1000 * statistics.median(accepted),
            "rate": len(received) / elapsed,
            "retransmissions": alice.statistics().retransmissions,
        }


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as data_dir:
        settings = ServerSettings(
            host="127.0.0.1",
            port=0,
            data_dir=Path(data_dir),
            max_requests_per_second=10_000,
        )
        async with open_server(settings, identity=identity()) as server:
            await add_user(server, "alice")
            await add_user(server, "bob")
            assert server.udp is not None
            print(
                f"{args.messages} messages, {args.window} in flight, "
                f"{1000 * args.latency:.0f} ms each way"
            )
            print(
                f"{'transport':<10}{'loss':>6}{'delivered':>11}{'in order':>10}"
                f"{'p50 ms':>9}{'p99 ms':>9}{'accept p50':>12}{'msg/s':>8}{'re-sent':>9}"
            )
            cases = [("tcp", 0.0)] + [("udp", loss) for loss in LOSSES]
            for transport, loss in cases:
                r = await run_case(
                    server.port,
                    server.udp.port,
                    transport=transport,
                    loss=loss,
                    messages=args.messages,
                    window=args.window,
                    latency=args.latency,
                    seed=args.seed,
                )
                print(
                    f"{r['transport']:<10}{100 * r['loss']:>5.0f}%"
                    f"{r['delivered']:>6}/{args.messages:<4}{r['in_order']!s:>10}"
                    f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['accept_p50_ms']:>12.1f}"
                    f"{r['rate']:>8.0f}{r['retransmissions']:>9}"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=1)
    trio.run(main, parser.parse_args())
