"""The SDK over UDP everywhere the SDK runs: the async client (Trio and
asyncio), the blocking facade and the ``elink`` command, with resumption
after the server drops a connection."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import trio

import elink_sdk
import elink_sdk.blocking
from elink_protocol import Config
from elink_sdk import MessageReceived, cli
from tests.helpers.sdk import PIN, ServerThread, client_options, sdk_client, sdk_server
from tests.helpers.server import WAIT

#: Declare the path dead after three unanswered re-sends (about 1.4 s).
GIVES_UP_FAST = Config(initial_rtt=0.05, max_retransmissions=3)


async def test_a_udp_session_is_resumed_on_a_new_connection(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice", transport="udp", config=GIVES_UP_FAST) as alice,
        sdk_client(server.port, "bob", transport="udp") as bob,
    ):
        assert server.udp is not None and server.udp.port == server.port
        await alice.send_text("bob", "one")
        link = alice._link
        assert link is not None
        (peer,) = [
            p
            for p in server._peers
            if getattr(p.transport, "connection_id", None) == link.connection_id  # type: ignore[attr-defined]
        ]
        # The path dies under alice's connection: the server's endpoint drops
        # its datagrams from now on, and nothing tells either side.  Her
        # client gives up re-sending "two", reconnects over UDP with a new
        # connection id, and resumes the session; "two" is re-sent there.
        server.udp._forget(peer.transport)  # type: ignore[arg-type]
        await alice.send_text("bob", "two")
        assert alice.statistics().resumed == 1 and alice.statistics().connections == 2
        assert alice._link is not None and alice._link is not link
        texts = []
        with trio.fail_after(WAIT):
            while len(texts) < 2:
                event = await bob.next_event()
                if isinstance(event, MessageReceived):
                    texts.append(event.text)
        assert texts == ["one", "two"]


def test_asyncio_blocking_and_the_command_line_over_udp(tmp_path: Path) -> None:
    with ServerThread(tmp_path) as server:
        port = server.udp_port
        assert port == server.port

        async def under_asyncio() -> str:
            async with elink_sdk.connect(
                "127.0.0.1", port, **client_options(port, "alice", transport="udp")
            ) as alice:
                sent = await alice.send_text("bob", "from asyncio")
                return sent.conversation

        assert asyncio.run(under_asyncio()) == "d:alice:bob"

        with elink_sdk.blocking.connect(
            "127.0.0.1", port, **client_options(port, "carol", transport="udp")
        ) as carol:
            assert carol.send_text("bob", "from a thread").seq == 1

        out, err = io.StringIO(), io.StringIO()
        pins = [arg for key in PIN for arg in ("--fingerprint", key)]
        account = ["--host", "127.0.0.1", "--port", str(port), "--user", "alice", *pins]
        code = cli.main(
            ["send", "bob", "from the shell", "--udp", "--password-stdin", *account],
            stdin=io.StringIO("secret\n"),
            stdout=out,
            stderr=err,
        )
        assert code == 0, err.getvalue()

        with elink_sdk.blocking.connect(
            "127.0.0.1", port, **client_options(port, "bob", transport="udp")
        ) as bob:
            texts = [bob.next_event(timeout=WAIT) for _ in range(3)]
        assert sorted(e.text for e in texts if isinstance(e, MessageReceived)) == [
            "from a thread",
            "from asyncio",
            "from the shell",
        ]
