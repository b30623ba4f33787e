"""Limits against abuse (issue 3), over real loopback sockets: the request
rate limit, oversized frames and payloads, a client that stops reading, and
the recipient-backlog flag.  In each case the offending client alone pays;
the others keep being served."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import trio
import trio.testing

from elink_protocol import ConnectionClosed, ErrorCode
from elink_protocol.app import (
    AppErrorCode,
    EventPush,
    EventsAvailable,
    MessageAccepted,
    MessageEvent,
    Ok,
    Pull,
    PullResult,
    RequestFailed,
    Response,
    SendMessage,
    SetPresence,
    text_content,
)
from elink_protocol.app.presence import PresenceStatus
from elink_protocol.frame import Flags, Priority
from elink_protocol.payload import encode_payload
from elink_server.host import Server
from elink_server.limits import RequestRateLimiter, Verdict
from elink_server.peer import Peer
from elink_server.services.delivery import ANSWER_RESERVE, OUTBOX_CAPACITY
from tests.helpers.server import (
    WAIT,
    LoopbackClient,
    add_user,
    connect_client,
    login,
    open_test_server,
)

# --- the bucket alone -------------------------------------------------------------


def test_bucket_admits_the_burst_then_refuses_then_floods() -> None:
    limiter = RequestRateLimiter(rate=10.0, burst=3, now=0.0, flood_factor=2)
    assert [limiter.admit(0.0) for _ in range(3)] == [Verdict.ADMIT] * 3
    # Empty: refused, each refusal counted, until the excess passes 2 x 3.
    assert [limiter.admit(0.0) for _ in range(6)] == [Verdict.REJECT] * 6
    assert limiter.admit(0.0) is Verdict.FLOOD
    assert (limiter.tokens, limiter.excess) == (0.0, 7.0)


def test_bucket_refills_at_the_rate_and_drains_the_excess() -> None:
    limiter = RequestRateLimiter(rate=10.0, burst=2, now=0.0)
    assert [limiter.admit(0.0) for _ in range(4)] == [Verdict.ADMIT] * 2 + [Verdict.REJECT] * 2
    assert limiter.retry_after_ms() == 100  # one token takes 1 / 10 s
    assert limiter.admit(0.05) is Verdict.REJECT  # half a token
    assert limiter.retry_after_ms() == 50
    assert limiter.admit(0.11) is Verdict.ADMIT
    # Refill never exceeds the burst, however long the pause; the excess is gone.
    assert limiter.admit(1000.0) is Verdict.ADMIT
    assert (limiter.tokens, limiter.excess) == (1.0, 0.0)


def test_bucket_above_the_rate_serves_at_the_rate() -> None:
    # Twice the rate: half is served, and the excess never builds up.
    limiter = RequestRateLimiter(rate=100.0, burst=5, now=0.0, flood_factor=2)
    verdicts = [limiter.admit(i / 200) for i in range(10_000)]
    assert Verdict.FLOOD not in verdicts
    assert verdicts.count(Verdict.ADMIT) == pytest.approx(5_000, abs=10)
    # Ten times the rate: flooding within a fraction of a second.
    limiter = RequestRateLimiter(rate=100.0, burst=5, now=0.0, flood_factor=2)
    first_flood = next(i for i in range(10_000) if limiter.admit(i / 1000) is Verdict.FLOOD)
    assert first_flood < 100


def test_bucket_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        RequestRateLimiter(rate=0.0, burst=1, now=0.0)
    with pytest.raises(ValueError):
        RequestRateLimiter(rate=1.0, burst=0, now=0.0)


# --- helpers ----------------------------------------------------------------------


async def answers(client: LoopbackClient, count: int) -> dict[int, Response]:
    """The next ``count`` answers by request id (pushes are skipped)."""
    got: dict[int, Response] = {}
    while len(got) < count:
        event = await client.next_event()
        assert not isinstance(event, ConnectionClosed), event
        if isinstance(event, Response):
            got[event.rid] = event
    return got


async def still_served(client: LoopbackClient, rid: int) -> None:
    """``client`` is answered normally."""
    await client.send(SetPresence(rid=rid, status=PresenceStatus.AWAY))
    assert isinstance((await answers(client, 1))[rid], Ok)


def peer_of(server: Server, user: str) -> Peer:
    assert server.context is not None
    (session,) = server.context.registry.devices(user)
    return session.peer


def say(rid: int, to: str) -> SendMessage:
    return SendMessage(
        rid=rid, client_msg_id=f"c{rid}", to=to, kind="text", content=text_content(f"m{rid}")
    )


async def users(server: Server, *names: str) -> None:
    for name in names:
        await add_user(server, name)


# --- the rate limit over loopback ---------------------------------------------------

#: A refill so slow that no token comes back during a test (one per 100 s).
NO_REFILL = 0.01


async def test_requests_over_the_rate_are_rate_limited_others_unaffected(
    tmp_path: Path,
) -> None:
    async with open_test_server(
        tmp_path, max_requests_per_second=NO_REFILL, request_burst=5
    ) as server:
        await users(server, "alice", "bob")
        async with connect_client(server) as alice, connect_client(server) as bob:
            await login(alice, "alice")  # one token of five
            await login(bob, "bob")
            for rid in range(2, 12):
                alice.connection.queue(SetPresence(rid=rid, status=PresenceStatus.BUSY))
            await alice.flush()
            got = await answers(alice, 10)
            assert all(isinstance(got[rid], Ok) for rid in range(2, 6))
            limited = [got[rid] for rid in range(6, 12)]
            assert all(
                isinstance(a, RequestFailed) and a.code == AppErrorCode.RATE_LIMITED
                for a in limited
            )
            # No token comes back for 100 s, and the answers say so.
            waits = [a.retry_after_ms for a in limited if isinstance(a, RequestFailed)]
            assert all(99_000 <= wait <= 100_000 for wait in waits)
            # The limited client stays connected; another client is served.
            await still_served(bob, 2)
            assert not peer_of(server, "alice").is_closed
            assert peer_of(server, "alice").rate_limited == 6


async def test_a_client_flooding_far_beyond_the_limit_is_closed(tmp_path: Path) -> None:
    async with open_test_server(
        tmp_path, max_requests_per_second=NO_REFILL, request_burst=2
    ) as server:
        await users(server, "alice", "bob")
        async with connect_client(server) as alice, connect_client(server) as bob:
            await login(alice, "alice")
            await login(bob, "bob")
            # Tokens: 2 - 1 (login) = 1 served, then refusals until their
            # count passes 10 x 2 = 20: the 21st refusal closes.
            for rid in range(2, 60):
                alice.connection.queue(SetPresence(rid=rid, status=PresenceStatus.BUSY))
            await alice.flush()
            codes: list[int] = []
            while True:
                event = await alice.next_event()
                if isinstance(event, ConnectionClosed):
                    break
                if isinstance(event, Ok):
                    codes.append(0)
                elif isinstance(event, RequestFailed):
                    codes.append(event.code)
            assert event.by_peer and event.code == ErrorCode.RESOURCE_LIMIT
            assert codes == [0] + [AppErrorCode.RATE_LIMITED] * 20
            await still_served(bob, 2)


# --- oversized frames and payloads --------------------------------------------------


async def test_oversized_frame_header_is_refused_before_its_payload(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await users(server, "alice", "bob")
        async with connect_client(server) as bad, connect_client(server) as good:
            await login(bad, "alice")
            await login(good, "bob")
            # An encrypted numbered frame announcing 4161 bytes (§4.2: at most
            # 4160); the payload is never sent, the header alone is refused.
            pid = bad.connection._next_pid
            header = struct.pack(
                "!BBHIIHBBI", 1, Flags.ENCRYPTED, SendMessage.TYPE, pid, 0, 4161, 1, 0, 0
            )
            await bad.stream.send_all(header)
            closed = await bad.wait_closed()
            assert closed.by_peer and closed.code == ErrorCode.FRAME_TOO_LARGE
            await still_served(good, 2)


async def test_oversized_encrypted_payload_is_refused(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await users(server, "alice", "bob")
        async with connect_client(server) as bad, connect_client(server) as good:
            await login(bad, "alice")
            await login(good, "bob")
            # A correctly sealed frame (fits the 4160-byte wire limit) whose
            # plaintext is over 4096 bytes: the library would never send it.
            payload = encode_payload({"r": 2, "x": b"y" * 4100})
            assert len(payload) > 4096
            conn = bad.connection
            pid = conn._next_pid
            wire = conn._seal(
                SendMessage.TYPE,
                counter=pid,
                pid=pid,
                flags=Flags.ENCRYPTED,
                priority=Priority.INTERACTIVE,
                payload=payload,
            )
            assert len(wire) - 20 <= 4160
            await bad.stream.send_all(wire)
            closed = await bad.wait_closed()
            assert closed.by_peer and closed.code == ErrorCode.FRAME_TOO_LARGE
            await still_served(good, 2)


# --- a client that stops reading ----------------------------------------------------

#: The server's bound on unacknowledged packets per connection in this test;
#: its send queue holds this plus 64 more.  (The sender, which reads, needs
#: room for a batch of answers and pushes between its acks.)
UNACKED = 256
#: Messages the sender pipelines at once.
BATCH = 50


async def test_a_stalled_reader_does_not_stall_senders_and_stays_bounded(
    tmp_path: Path,
) -> None:
    bound = UNACKED + (UNACKED + 64) + OUTBOX_CAPACITY + 1  # + one EventsAvailable
    count = bound + 150
    async with open_test_server(tmp_path, max_unacked_packets=UNACKED) as server:
        await users(server, "alice", "bob")
        async with connect_client(server) as alice, connect_client(server) as bob:
            await login(alice, "alice")
            await login(bob, "bob")
            # bob reads nothing from here on (and so acknowledges nothing).
            for start in range(0, count, BATCH):
                rids = range(start + 2, min(start + BATCH, count) + 2)
                for rid in rids:
                    alice.connection.queue(say(rid, "bob"))
                await alice.flush()
                got = await answers(alice, len(rids))
                assert all(isinstance(got[rid], MessageAccepted) for rid in rids)
            # bob's connection on the server is saturated, not growing.
            stalled = peer_of(server, "bob")
            # (Pushes leave ANSWER_RESERVE slots of the send queue free.)
            pushed = UNACKED + 64 - ANSWER_RESERVE
            with trio.fail_after(WAIT):
                while (stats := stalled.connection.statistics()).queued < pushed:
                    await trio.sleep(0.005)
            assert stats.unacked == UNACKED and stats.queued == pushed
            assert not stalled.is_closed
            # More sends: still answered at once, bob's share still bounded.
            for rid in range(count + 2, count + 2 + BATCH):
                alice.connection.queue(say(rid, "bob"))
            await alice.flush()
            assert len(await answers(alice, BATCH)) == BATCH
            stats = stalled.connection.statistics()
            assert stats.unacked == UNACKED and stats.queued == pushed

            # bob reads again: first what the server had queued for him...
            pushes = 0
            # (bob's LoginOk, read but not yet acknowledged, was one of them.)
            while pushes < UNACKED + pushed - 1:
                event = await bob.next_event()
                assert isinstance(event, EventPush | EventsAvailable), event
                pushes += 1
            # ...then he pulls (pushes that were dropped are hints, §11.5.3):
            # what was pushed is bounded, nothing is lost.
            await bob.send(Pull(rid=2, after=0, limit=1000))
            cursor, seen, rid = 0, 0, 2
            while True:
                event = await bob.next_event()
                assert not isinstance(event, ConnectionClosed), event
                if isinstance(event, EventPush | EventsAvailable):
                    pushes += 1
                elif isinstance(event, PullResult) and event.rid == rid:
                    seen += sum(isinstance(e, MessageEvent) for e in event.events)
                    cursor = event.next_cursor
                    if not event.more:
                        break
                    rid += 1
                    await bob.send(Pull(rid=rid, after=cursor, limit=1000))
            assert seen == count + BATCH
            assert pushes <= bound < count


#: A smaller connection bound for the tests below: bob's connection holds
#: SMALL_UNACKED unacknowledged pushes and SMALL_UNACKED + 64 - ANSWER_RESERVE
#: queued ones (the sender, which reads, still has room for its batches).
SMALL_UNACKED = 128


async def stall_bob(server: Server, alice: LoopbackClient) -> int:
    """With bob logged in and not reading, alice sends until bob's connection
    is saturated (pushes stop at the answer reserve) and then enough more to
    overflow his outbox.  Returns the last entry of bob's log (dropped)."""
    rid = 2

    async def send_batches(count: int) -> None:
        nonlocal rid
        for start in range(0, count, BATCH):
            rids = range(rid, rid + min(BATCH, count - start))
            for r in rids:
                alice.connection.queue(say(r, "bob"))
            await alice.flush()
            got = await answers(alice, len(rids))
            assert all(isinstance(got[r], MessageAccepted) for r in rids)
            rid = rids[-1] + 1

    # Enough pushes to fill bob's send window and his share of the queue.
    await send_batches(2 * SMALL_UNACKED + 64)
    stalled = peer_of(server, "bob")
    pushed = SMALL_UNACKED + 64 - ANSWER_RESERVE
    with trio.fail_after(WAIT):
        # A deterministic step: the whole process (server included) is idle.
        while (stats := stalled.connection.statistics()).queued < pushed:
            await trio.testing.wait_all_tasks_blocked()
    assert stats.unacked == SMALL_UNACKED and stats.queued == pushed
    # The outbox task now waits for room: these fill the outbox, then drop.
    await send_batches(OUTBOX_CAPACITY + BATCH)
    stats = stalled.connection.statistics()
    assert stats.unacked == SMALL_UNACKED and stats.queued == pushed
    assert not stalled.is_closed
    return rid - 2  # bob's log has one entry per message


async def pull_rest(client: LoopbackClient, page: PullResult, rid: int) -> list[int]:
    """The cursors of ``page`` and of every page after it (rids from ``rid``)."""
    cursors = [e.cursor for e in page.events]
    while page.more:
        await client.send(Pull(rid=rid, after=page.next_cursor, limit=1000))
        answer = (await answers(client, 1))[rid]
        assert isinstance(answer, PullResult), answer
        page, rid = answer, rid + 1
        cursors += [e.cursor for e in page.events]
    return cursors


async def read_pushes_until_hint(bob: LoopbackClient) -> tuple[list[int], int, list[Response]]:
    """bob reads: the entries pushed (cursors), the EventsAvailable's head,
    and any answers that came before it."""
    cursors: list[int] = []
    got: list[Response] = []
    while True:
        event = await bob.next_event()
        assert not isinstance(event, ConnectionClosed), event
        if isinstance(event, EventsAvailable):
            return cursors, event.latest, got
        if isinstance(event, Response):
            got.append(event)
            continue
        assert isinstance(event, EventPush), event
        cursors.append(event.event.cursor)


async def test_a_device_that_reads_again_gets_the_hint_for_what_was_dropped(
    tmp_path: Path,
) -> None:
    async with open_test_server(tmp_path, max_unacked_packets=SMALL_UNACKED) as server:
        await users(server, "alice", "bob")
        async with connect_client(server) as alice, connect_client(server) as bob:
            await login(alice, "alice")
            await login(bob, "bob")
            last = await stall_bob(server, alice)
            # bob reads: what was queued and held for him, in log order, then
            # one EventsAvailable naming the newest entry that was dropped.
            cursors, head, got = await read_pushes_until_hint(bob)
            assert got == []
            assert cursors == list(range(1, len(cursors) + 1))
            assert len(cursors) < last and head == last
            # The hint is enough: pulling from the last pushed entry catches up.
            await bob.send(Pull(rid=2, after=cursors[-1], limit=1000))
            page = (await answers(bob, 1))[2]
            assert isinstance(page, PullResult) and page.head == last
            pulled = await pull_rest(bob, page, 3)
            assert pulled == list(range(len(cursors) + 1, last + 1))
            await still_served(bob, 100)


async def test_a_stalled_device_starting_with_a_pull_is_answered_not_closed(
    tmp_path: Path,
) -> None:
    async with open_test_server(tmp_path, max_unacked_packets=SMALL_UNACKED) as server:
        await users(server, "alice", "bob")
        async with connect_client(server) as alice, connect_client(server) as bob:
            await login(alice, "alice")
            await login(bob, "bob")
            last = await stall_bob(server, alice)
            # bob's first move is a Pull, before he reads anything: its answer
            # fits in the reserve the pushes left free.
            await bob.send(Pull(rid=2, after=0, limit=1000))
            cursors, head, got = await read_pushes_until_hint(bob)
            assert len(got) == 1
            (page,) = got
            assert isinstance(page, PullResult) and page.rid == 2, page
            assert page.head == last
            assert head == last
            assert cursors == list(range(1, len(cursors) + 1))
            assert not peer_of(server, "bob").is_closed
            # The page was the start of a complete pull.
            assert await pull_rest(bob, page, 3) == list(range(1, last + 1))
            await still_served(bob, 100)


# --- the recipient's backlog --------------------------------------------------------


async def test_backlog_full_flag_reaches_the_sender_past_the_offline_cap(
    tmp_path: Path,
) -> None:
    cap = 1000  # the store's minimum
    async with open_test_server(tmp_path, offline_cap=cap) as server:
        await users(server, "alice", "bob")  # bob never logs in: nothing pulled
        async with connect_client(server) as alice:
            await login(alice, "alice")
            flags: dict[int, bool] = {}
            for start in range(0, cap + 1, 250):
                rids = range(start + 2, min(start + 250, cap + 1) + 2)
                for rid in rids:
                    alice.connection.queue(say(rid, "bob"))
                await alice.flush()
                for rid, answer in (await answers(alice, len(rids))).items():
                    assert isinstance(answer, MessageAccepted), answer
                    flags[rid] = answer.recipient_backlog_full
            # Message n leaves bob with n unpulled entries: full past the cap.
            assert [rid - 1 for rid, full in sorted(flags.items()) if full] == [cap + 1]
