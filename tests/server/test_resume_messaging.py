"""Messaging survives session resumption (issue 3, docs/protocol.md §6.5,
§11.5): a device whose TCP connection dies in the middle of a burst resumes
its session and ends up with every message exactly once.

**The check** (§11.5.3).  Each device counts how often each log entry was
pushed to it, over all its connections, and applies entries in cursor
order, keeping one pushed ahead of its cursor until the gap fills (which
§11.5.3 allows; the server may push concurrently committed entries out of
order).  Pushes are hints the spec lets a server drop under load, but these
bursts stay far below every outbox and queue bound and the transport below
them is exactly-once (§6.5.5), so here the server must do better than the
minimum: across the cut, every entry of the device's log is pushed **exactly
once** (no duplicate, none missing) and the device's cursor reaches the head
by pushes alone.  Then a Pull from that cursor must return an empty page
whose ``hd`` is the cursor (nothing the device has not seen is new), and
the log pulled from 0 must list exactly the messages the device applied, in
order.  Sequence numbers in the conversation run 1..N without repeats, each
sending device's messages keep its sending order, and every sender gets one
MessageAccepted per message, never marked ``dup``.

Connections are cut by closing the client's socket without a Close, after
the client processed a given number of packets; the resumption state is
taken right after that last processed packet, as a real client would.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from elink_protocol.app import MessageAccepted
from elink_server.host import Server
from tests.helpers.burst import Device, answer, check_log, check_sent, cut_and_resume, say
from tests.helpers.server import add_user, connect_client, login, open_test_server

#: Messages per burst.
BURST = 200
#: Bound on a whole scenario (each single wait is bounded by WAIT as well).
SCENARIO_TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def three_devices(tmp_path: Path) -> AsyncIterator[tuple[Server, list[Device]]]:
    """A server; alice on pc and phone, bob on pc, all logged in."""
    async with open_test_server(tmp_path) as server, contextlib.AsyncExitStack() as stack:
        await add_user(server, "alice")
        await add_user(server, "bob")
        devices = []
        for user, device_id in (("alice", "pc"), ("alice", "phone"), ("bob", "pc")):
            client = await stack.enter_async_context(connect_client(server))
            await login(client, user, device_id=device_id)
            devices.append(Device(f"{user}/{device_id}", client))
        yield server, devices


#: Where bob's connection is cut: after this many processed packets.
CUT_POINTS = [1, 23, 77, 150, 199]


@pytest.mark.parametrize("cut_after", CUT_POINTS)
async def test_receiver_cut_mid_burst_gets_every_message_once(
    tmp_path: Path, cut_after: int
) -> None:
    async with three_devices(tmp_path) as (server, devices), contextlib.AsyncExitStack() as stack:
        a_pc, a_phone, bob = devices
        half = BURST // 2
        sent = {
            a_pc: [f"pc-{i}" for i in range(half)],
            a_phone: [f"phone-{i}" for i in range(half)],
        }
        with trio.fail_after(SCENARIO_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for sender, cms in sent.items():
                    # Pipelined: every request is queued before any answer.
                    for i, cm in enumerate(cms):
                        sender.client.connection.queue(say(100 + i, cm, "bob"))
                    nursery.start_soon(sender.client.flush)
                    nursery.start_soon(
                        sender.read_until,
                        lambda s=sender: len(s.accepted) >= half and s.cursor >= BURST,
                    )

                async def bob_side() -> None:
                    await cut_and_resume(server, bob, cut_after, stack)
                    await bob.read_until(lambda: bob.cursor >= BURST)

                nursery.start_soon(bob_side)
            for device in devices:
                device.check_pushes(BURST)
                await check_log(device, 1000)
            for sender, cms in sent.items():
                check_sent(sender, cms)
            # Per sending device, bob saw its messages in its sending order.
            for prefix, cms in (("pc-", sent[a_pc]), ("phone-", sent[a_phone])):
                mine = [
                    e.message.client_msg_id
                    for e in bob.applied
                    if e.message.client_msg_id.startswith(prefix)
                ]
                assert mine == cms


@pytest.mark.parametrize("cut_after", CUT_POINTS)
async def test_sender_cut_mid_burst_sends_every_message_once(
    tmp_path: Path, cut_after: int
) -> None:
    async with three_devices(tmp_path) as (server, devices), contextlib.AsyncExitStack() as stack:
        a_pc, a_phone, bob = devices
        cms = [f"b-{i}" for i in range(BURST)]
        with trio.fail_after(SCENARIO_TIMEOUT):
            for i, cm in enumerate(cms):
                bob.client.connection.queue(say(100 + i, cm, "alice"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bob.client.flush)
                for reader in (a_pc, a_phone):
                    nursery.start_soon(reader.read_until, lambda r=reader: r.cursor >= BURST)
                # bob processes answers and pushes of his own messages, is
                # cut, resumes: the library re-sends what the server did
                # not process, the server re-sends what bob did not.
                await cut_and_resume(server, bob, cut_after, stack)
                await bob.read_until(lambda: len(bob.accepted) >= BURST and bob.cursor >= BURST)
            for device in devices:
                device.check_pushes(BURST)
                await check_log(device, 1000)
            check_sent(bob, cms)
            assert len({a.msg_id for a in bob.accepted}) == BURST
            assert sorted(a.seq for a in bob.accepted) == list(range(1, BURST + 1))
            assert [e.message.client_msg_id for e in a_pc.applied] == cms
            # A retry in the same session is answered from the store.
            original = next(a for a in bob.accepted if a.client_msg_id == cms[0])
            await bob.client.send(say(9000, cms[0], "alice"))
            again = await answer(bob, MessageAccepted, 9000)
            assert again.duplicate and again.msg_id == original.msg_id
