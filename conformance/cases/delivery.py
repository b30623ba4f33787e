"""Delivery on a stream (§6): PIDs, acknowledgements, heartbeats and the idle
deadline, priorities at the receiver, fragments, and session resumption
(the stream's retransmission: what was not acknowledged is re-sent)."""

from __future__ import annotations

import os
import time

import attrs
import trio

from conformance.case import Context, case
from conformance.handshake import Hello, Resume
from conformance.requirements import Level
from conformance.results import Fail
from conformance.session import Client
from conformance.wire import Closed, SessionState
from elink_protocol import ErrorCode, Priority
from elink_protocol import packets as p
from elink_protocol.app import (
    AppErrorCode,
    DeviceKind,
    Login,
    PresenceResult,
    Pull,
    PullResult,
    QueryPresence,
    RequestFailed,
)
from elink_protocol.frame import ENCRYPTED, MORE_FRAGMENTS, UNNUMBERED

from ._util import expect_error, packed, refused_after_handshake

MUST, SHOULD = Level.MUST, Level.SHOULD

EXTENSION = 0x8001
"""An ignorable type: numbered, acknowledged, processed as a no-op (§5.3)."""


# --- PIDs on a stream (§6.5.2) ---------------------------------------------------


@case(
    "EL-6.5.2-1",
    "A numbered packet that skips a PID is refused with PID_ERROR",
    MUST,
    covers=["6.5.2-1", "6.5.2-2"],
)
async def pid_gap(ctx: Context) -> None:
    """After the handshake, the first numbered packet (an extension packet)
    carries PID 2 instead of 1."""
    await refused_after_handshake(
        ctx, EXTENSION, packed({}), ErrorCode.PID_ERROR, what="PID 2 as the first PID", pid=2
    )


@case(
    "EL-6.5.2-2",
    "A numbered packet sent twice is refused with PID_ERROR",
    MUST,
    covers=["6.5.2-2"],
)
async def pid_repeat(ctx: Context) -> None:
    """An extension packet with PID 1, then the identical frame again (a
    replay inside the connection)."""
    client, _ = await ctx.established()
    frame = client.seal(EXTENSION, packed({"n": 1}), numbered=True)
    await client.send_bytes(frame, note="extension packet, PID 1")
    await client.send_bytes(frame, note="the same frame again")
    await expect_error(ctx, client, ErrorCode.PID_ERROR, what="a repeated PID")


@case(
    "EL-6.5.2-3",
    "PID 0 as the first numbered packet of a session is refused with PID_ERROR",
    MUST,
    covers=["6.5.2-1", "6.5.2-2"],
)
async def pid_zero(ctx: Context) -> None:
    """The first numbered packet after the handshake carries PID 0."""
    await refused_after_handshake(
        ctx, EXTENSION, packed({}), ErrorCode.PID_ERROR, what="PID 0 first", pid=0
    )


@case(
    "EL-6.5.2-4",
    "An acknowledgement of a PID the server never sent is refused with PID_ERROR",
    MUST,
    covers=["6.5.2-4"],
)
async def ack_never_sent(ctx: Context) -> None:
    """Right after the handshake (the server has sent no numbered packet),
    a Ping whose header acknowledges PID 5."""
    await refused_after_handshake(
        ctx,
        p.Ping.TYPE,
        packed({}),
        ErrorCode.PID_ERROR,
        what="a cumulative ack of PID 5",
        numbered=False,
        priority=Priority.CONTROL,
        ack=5,
    )


async def _round_trip(client: Client, wait: float) -> float:
    started = time.monotonic()
    await client.ping(os.urandom(8))
    await client.expect(p.Pong, wait)
    return time.monotonic() - started


@case(
    "EL-6.5.2-5",
    "A numbered packet is acknowledged within 1 second when the server has nothing to send",
    MUST,
    covers=["6.5.2-3", "6.3.1-1"],
)
async def ack_within_a_second(ctx: Context) -> None:
    """Measures the round trip with a Ping, then sends one numbered extension
    packet (which causes no answer) and waits for a frame whose cumulative
    ack covers it: within 1 s plus twice the round trip plus 0.2 s."""
    client, _ = await ctx.established()
    rtt = await _round_trip(client, ctx.wait)
    pid = await client.send_payload(EXTENSION, packed({"ack": "me"}), numbered=True)
    started = time.monotonic()
    limit = 1.0 + 2 * rtt + 0.2
    with trio.move_on_after(limit):
        while client.server_ack != pid:
            event = await client.receive(limit)
            if isinstance(event, Closed):
                raise Fail(f"the connection ended: {event.describe()}")
    took = time.monotonic() - started
    if client.server_ack != pid:
        raise Fail(f"PID {pid} was not acknowledged within {limit:.2f} s")
    ctx.note(f"acknowledged after {took * 1000:.0f} ms (round trip {rtt * 1000:.1f} ms)")


# --- heartbeats and deadlines (§6.7) -----------------------------------------------


@case(
    "EL-6.7.1-1",
    "Every Ping is answered by a Pong carrying the same data",
    MUST,
    covers=["6.7.1-2", "6.2.1-1"],
)
async def pings_answered(ctx: Context) -> None:
    """Three Pings in one write (empty data, 64 random bytes, one byte),
    then two Pings whose unnumbered counters are equal (the counter is not
    a PID: the second is no duplicate).  Five Pongs must come back, in
    order, echoing each Ping's data, and the server's cumulative ack must
    stay 0: unnumbered packets are never acknowledged."""
    client, _ = await ctx.established()
    datas = [b"", os.urandom(64), b"x"]
    frames = b"".join(
        client.seal(p.Ping.TYPE, packed({"d": d}) if d else packed({}), numbered=False)
        for d in datas
    )
    await client.send_bytes(frames, note="three Pings in one write")
    counter = client.unnumbered
    for data in (b"same counter 1", b"same counter 2"):
        await client.send_payload(
            p.Ping.TYPE, packed({"d": data}), numbered=False, priority=Priority.CONTROL, pid=counter
        )
        datas.append(data)
    for expected in datas:
        pong = await client.expect(p.Pong, ctx.wait)
        assert isinstance(pong.packet, p.Pong)
        if pong.packet.data != expected:
            raise Fail(f"a Pong carries {pong.packet.data!r}, expected {expected!r} (in order)")
    if client.server_ack != 0:
        raise Fail(f"the server acknowledged PID {client.server_ack}; only Pings were sent")


@case(
    "EL-6.7.1-2",
    "The server sends a Ping after its heartbeat interval without sending",
    MUST,
    covers=["6.7.1-1"],
)
async def server_heartbeat(ctx: Context) -> None:
    """After the handshake the client stays silent (it answers Pings and key
    updates only).  The server must never go longer than its heartbeat
    interval (--heartbeat-interval, 20 s by default) times 1.5 plus a second
    without sending: a Ping ends the case, and so does any other frame that
    breaks the silence, as long as the gaps stay short."""
    limit = ctx.options.heartbeat_interval * 1.5 + 1
    ctx.need_wait(2 * limit, "waiting for the server's heartbeat")
    client, _ = await ctx.established()
    started = last = time.monotonic()
    while time.monotonic() - started < 2 * limit:
        event = await client.poll(limit - (time.monotonic() - last))
        if event is None:
            raise Fail(f"the server sent nothing for {limit:g} s")
        if isinstance(event, Closed):
            raise Fail(f"the connection ended: {event.describe()}")
        if isinstance(event.packet, p.Ping):
            ctx.note(f"Ping after {time.monotonic() - last:.2f} s of silence")
            return
        last = time.monotonic()
    ctx.note("the server never fell silent, so it needed no Ping")


@case(
    "EL-6.7.2-1",
    "A silent client is closed with TIMEOUT after the idle timeout",
    MUST,
    covers=["6.7.2-1"],
)
async def idle_timeout(ctx: Context) -> None:
    """After the handshake the client sends nothing at all (it does not even
    answer Pings).  The server must close with TIMEOUT within the idle
    timeout (--idle-timeout, 60 s by default) times 1.5 plus 2 s."""
    limit = ctx.options.idle_timeout * 1.5 + 2
    ctx.need_wait(limit, "waiting for the idle timeout")
    client, _ = await ctx.established()
    client.auto_pong = False
    started = time.monotonic()
    closed = await client.expect_close(limit)
    if closed.code != ErrorCode.TIMEOUT:
        raise Fail(f"expected Close TIMEOUT, got {closed.describe()}")
    ctx.note(f"closed after {time.monotonic() - started:.2f} s")


# --- priorities at the receiver (§6.1.7) ------------------------------------------


@case(
    "EL-6.1.7-1",
    "Packets are processed whatever their priority byte",
    MUST,
    covers=["6.1.7-1"],
)
async def any_priority(ctx: Context) -> None:
    """A Ping sent as BULK, a Pull (normally SYNC) sent as CONTROL and a
    numbered extension packet as INTERACTIVE: the Ping must be answered, the
    Pull answered NOT_LOGGED_IN (no login yet), nothing refused."""
    client, _ = await ctx.established()
    await client.send_payload(
        p.Ping.TYPE, packed({"d": b"bulk"}), numbered=False, priority=Priority.BULK
    )
    pong = await client.expect(p.Pong, ctx.wait)
    if pong.packet != p.Pong(data=b"bulk"):
        raise Fail(f"expected Pong(b'bulk'), got {pong.packet}")
    await client.send_payload(EXTENSION, packed({}), numbered=True, priority=Priority.INTERACTIVE)
    rid = client.rid()
    await client.send_payload(
        Pull.TYPE, packed(Pull(rid=rid, after=0).to_payload()), priority=Priority.CONTROL
    )
    answer = await client.answer(Pull(rid=rid, after=0), ctx.wait)
    if not isinstance(answer, RequestFailed) or answer.code != AppErrorCode.NOT_LOGGED_IN:
        raise Fail(f"a Pull sent as CONTROL was answered {answer}")


# --- fragments on a stream (§6.6) -----------------------------------------------------


@case(
    "EL-6.6.4-1",
    "A fragmented packet on a stream is reassembled",
    MUST,
    covers=["6.6.4-1"],
)
async def fragments_reassembled(ctx: Context) -> None:
    """A Pull cut into two fragments (consecutive PIDs, MORE_FRAGMENTS on the
    first): the server must reassemble it and answer (NOT_LOGGED_IN, with
    the Pull's request id, before login)."""
    client, _ = await ctx.established()
    rid = client.rid()
    payload = packed(Pull(rid=rid, after=0, limit=7).to_payload())
    cut = len(payload) // 2
    await client.send_payload(
        Pull.TYPE, payload[:cut], priority=Pull.PRIORITY, flags=ENCRYPTED | MORE_FRAGMENTS
    )
    await client.send_payload(Pull.TYPE, payload[cut:], priority=Pull.PRIORITY)
    answer = await client.answer(Pull(rid=rid, after=0), ctx.wait)
    if not isinstance(answer, RequestFailed) or answer.code != AppErrorCode.NOT_LOGGED_IN:
        raise Fail(f"the reassembled Pull was answered {answer}")


@case(
    "EL-6.6.3-1",
    "A fragment chain continued by another type is refused with PROTOCOL_VIOLATION",
    MUST,
    covers=["6.6.3-1"],
)
async def chain_type_changes(ctx: Context) -> None:
    """A Pull fragment with MORE_FRAGMENTS, then a numbered extension packet."""
    client, _ = await ctx.established()
    await client.send_payload(Pull.TYPE, b"\x82", flags=ENCRYPTED | MORE_FRAGMENTS)
    await client.send_payload(EXTENSION, packed({}))
    await expect_error(ctx, client, ErrorCode.PROTOCOL_VIOLATION, what="a chain of two types")


@case(
    "EL-6.6.3-2",
    "An empty fragment that is not the last is refused with FRAME_MALFORMED",
    MUST,
    covers=["6.6.2-1"],
)
async def empty_fragment(ctx: Context) -> None:
    """A Pull fragment with MORE_FRAGMENTS and an empty payload."""
    await refused_after_handshake(
        ctx,
        Pull.TYPE,
        b"",
        ErrorCode.FRAME_MALFORMED,
        what="an empty non-final fragment",
        flags=ENCRYPTED | MORE_FRAGMENTS,
    )


@case(
    "EL-6.6.3-3",
    "A fragment chain over 4096 bytes is refused with FRAME_TOO_LARGE at once",
    MUST,
    covers=["4.2-1"],
)
async def chain_too_large(ctx: Context) -> None:
    """Two Pull fragments of 3000 bytes, both with MORE_FRAGMENTS: the chain
    exceeds 4096 bytes with the second, and the server must not wait for
    the rest."""
    client, _ = await ctx.established()
    for _ in range(2):
        await client.send_payload(Pull.TYPE, b"\x00" * 3000, flags=ENCRYPTED | MORE_FRAGMENTS)
    await expect_error(ctx, client, ErrorCode.FRAME_TOO_LARGE, what="6000 bytes of fragments")


@case(
    "EL-6.6.3-4",
    "MORE_FRAGMENTS on an unnumbered frame is refused with FRAME_MALFORMED",
    MUST,
    covers=["6.2.1-2"],
)
async def unnumbered_fragment(ctx: Context) -> None:
    """A Ping with both UNNUMBERED and MORE_FRAGMENTS."""
    await refused_after_handshake(
        ctx,
        p.Ping.TYPE,
        packed({}),
        ErrorCode.FRAME_MALFORMED,
        what="a fragmented Ping",
        numbered=False,
        flags=ENCRYPTED | UNNUMBERED | MORE_FRAGMENTS,
    )


# --- resumption (§6.5, §7.9) -----------------------------------------------------------


async def _query(client: Client, wait: float) -> tuple[int, PresenceResult]:
    """A request whose answer is a numbered packet: returns (our PID, answer)."""
    request = QueryPresence(rid=client.rid(), users=(client.user,))
    pid = client.next_pid
    answer = await client.request(request, wait)
    if not isinstance(answer, PresenceResult):
        raise Fail(f"QueryPresence was answered {answer}")
    return pid, answer


@case(
    "EL-6.5.3-1",
    "An answer the client did not acknowledge is re-sent, with its PID, after resumption",
    MUST,
    covers=["6.5.2-3", "6.5.1-1"],
    users=1,
)
async def resend_after_resumption(ctx: Context) -> None:
    """Logs in, then stops acknowledging: a QueryPresence is answered (the
    answer's PID is noted) but every later frame still acknowledges only
    LoginOk.  The connection is dropped without a Close, and a new one
    resumes the session claiming LoginOk as the last packet processed.  The
    server must resume (res true), report in ``rl`` that it processed the
    request, and re-send the same answer under the same PID, first."""
    client, _ = await ctx.logged_in(0)
    acked = client.last_processed
    client.frozen_ack = acked
    request_pid, answer = await _query(client, ctx.wait)
    answer_pid = client.last_processed
    state = attrs.evolve(client.session_state(), last_processed=acked)
    await client.aclose()
    resumed, info = await ctx.resume(state, name="resumed")
    if not info.resumed:
        raise Fail("the server did not resume the session")
    if info.server_last_processed != request_pid:
        raise Fail(
            f"ServerFinished rl = {info.server_last_processed}; the server processed the "
            f"client's packets up to PID {request_pid}"
        )
    again = await resumed.expect(lambda pkt: True, ctx.wait, what="the re-sent answer")
    if again.frame.pid != answer_pid or again.packet != answer:
        raise Fail(
            f"first packet after resumption: PID {again.frame.pid} {again.packet}; expected the "
            f"unacknowledged answer, PID {answer_pid}"
        )


@case(
    "EL-6.5.3-2",
    "Answers are held back, never dropped, while the client does not acknowledge",
    MUST,
    covers=["6.5.3-1"],
    users=1,
)
async def withheld_acks(ctx: Context) -> None:
    """Logs in, freezes its acknowledgement, sends 40 QueryPresence requests
    and reads what comes for a while (a server that bounds its
    unacknowledged packets stops sending); then acknowledges everything.
    Each request must get exactly one answer in the end."""
    client, _ = await ctx.logged_in(0)
    client.frozen_ack = client.last_processed
    requests = [QueryPresence(rid=client.rid(), users=(client.user,)) for _ in range(40)]
    for request in requests:
        await client.send(request)
    answers: dict[int, int] = {}

    async def collect(period: float) -> None:
        for packet in await client.quiet(period):
            if isinstance(packet, PresenceResult | RequestFailed):
                answers[packet.rid] = answers.get(packet.rid, 0) + 1

    await collect(0.5)
    held = len(answers)
    client.frozen_ack = None
    deadline = trio.current_time() + ctx.wait
    while len(answers) < len(requests) and trio.current_time() < deadline:
        await client.ack()
        await collect(0.3)
    missing = [r.rid for r in requests if r.rid not in answers]
    doubled = [rid for rid, n in answers.items() if n > 1]
    if missing or doubled:
        raise Fail(f"requests without an answer: {missing}; answered twice: {doubled}")
    ctx.note(f"{held} answers came before the client acknowledged anything")


async def _lost_session(ctx: Context) -> tuple[Client, int]:
    """A logged-in session whose connection is then lost; returns the old
    client and the last server PID it processed."""
    client, _ = await ctx.logged_in(0)
    await _query(client, ctx.wait)
    await client.ack()
    await client.ping(b"sync")
    await client.expect(p.Pong, ctx.wait)
    last = client.last_processed
    await client.aclose()
    return client, last


@case(
    "EL-6.5.5-1",
    "Resuming with an rl beyond the server's last PID is refused with RESUME_REJECTED",
    MUST,
    covers=["6.5.5-1"],
    users=1,
)
async def resume_claims_too_much(ctx: Context) -> None:
    """A logged-in session is lost; the client resumes it claiming to have
    processed server PID 1000, which the server never sent."""
    old, _ = await _lost_session(ctx)
    client = await ctx.connect("resume")
    await _claim(ctx, client, old.session_state(), 1000)


async def _claim(ctx: Context, client: Client, state: SessionState, claimed: int) -> None:
    """Finish a resumption handshake claiming ``rl`` = ``claimed``; the
    server must end with RESUME_REJECTED (before or right after SF)."""
    hs = ctx.handshaker(client)
    await hs.send_hello(Hello())
    flight = await hs.receive_server_flight()
    if isinstance(flight, Closed):
        raise Fail(f"handshake refused: {flight.describe()}")
    await hs.send_finished(hs.finished(resume=Resume(state=state, last_processed=claimed)))
    result = await hs.receive_finished()
    if isinstance(result, Closed):
        if result.code != ErrorCode.RESUME_REJECTED:
            raise Fail(f"expected Close RESUME_REJECTED, got {result.describe()}")
        return
    if not result.resumed:
        raise Fail(
            "the server did not resume the (lost, logged-in) session at all, so rl could not "
            "be tested"
        )
    client.adopt(
        attrs.evolve(state, last_processed=claimed),
        server_last_processed=result.server_last_processed,
    )
    closed = await client.expect_close(ctx.wait)
    if closed.code != ErrorCode.RESUME_REJECTED:
        raise Fail(f"expected Close RESUME_REJECTED after ServerFinished, got {closed.describe()}")


@case(
    "EL-6.5.5-2",
    "Resuming with an rl before what the client acknowledged is refused with RESUME_REJECTED",
    MUST,
    covers=["6.5.5-1"],
    users=1,
)
async def resume_claims_too_little(ctx: Context) -> None:
    """A logged-in session acknowledges every server packet (and a Ping
    round trip makes sure the server saw that), then is lost; the client
    resumes it claiming to have processed one packet fewer: a packet the
    server was told was processed and may have discarded."""
    old, last = await _lost_session(ctx)
    client = await ctx.connect("resume")
    await _claim(ctx, client, old.session_state(), last - 1)


@case(
    "EL-6.5.6-1",
    "Resuming a session whose connection is still open closes the old connection first",
    MUST,
    covers=["6.5.6-1"],
    users=1,
)
async def resume_open_session(ctx: Context) -> None:
    """Connection 1 logs in, stops acknowledging, sends a QueryPresence and
    waits until the server acknowledges it (so it has arrived and been
    processed).  Connection 2 resumes the session while connection 1 is
    still open.  The server must close connection 1, resume with ``rl``
    covering the request, and re-send the unacknowledged answer on
    connection 2 under its PID."""
    first, _ = await ctx.logged_in(0, name="old")
    acked = first.last_processed
    first.frozen_ack = acked
    request_pid, answer = await _query(first, ctx.wait)
    answer_pid = first.last_processed
    with trio.move_on_after(ctx.wait):
        while first.server_ack != request_pid:
            event = await first.receive(ctx.wait)
            if isinstance(event, Closed):
                raise Fail(f"connection 1 ended: {event.describe()}")
    state = attrs.evolve(first.session_state(), last_processed=acked)
    second, info = await ctx.resume(state, name="new")
    if not info.resumed:
        raise Fail("the server did not resume the session")
    if info.server_last_processed != request_pid:
        raise Fail(f"rl = {info.server_last_processed}, expected {request_pid}")
    again = await second.expect(lambda pkt: True, ctx.wait, what="the re-sent answer")
    if again.frame.pid != answer_pid or again.packet != answer:
        raise Fail(f"first packet on connection 2: PID {again.frame.pid} {again.packet}")
    closed = await first.expect_close(ctx.wait)
    ctx.note(f"connection 1 ended with {closed.describe()}")


@case(
    "EL-7.9.2-1",
    "A resumption request with a wrong proof or an unknown session gets a fresh session",
    MUST,
    covers=["7.3.5-1", "7.9.2-1"],
    users=1,
)
async def wrong_resume_proof(ctx: Context) -> None:
    """Connection 1 logs in and stays open.  Connection 2 asks to resume its
    session with a wrong proof; connection 3 asks for a session id that does
    not exist.  Both must complete as new sessions (``res`` false, a fresh
    session id, ``rl`` 0), and connection 1 must be untouched: still open,
    still logged in, still answering."""
    first, _ = await ctx.logged_in(0, name="owner")
    state = first.session_state()
    for name, probe in (
        ("wrong-proof", Resume(state=state, proof=os.urandom(32))),
        ("unknown-id", Resume(state=attrs.evolve(state, session_id=os.urandom(16)))),
    ):
        client = await ctx.connect(name)
        info = await ctx.handshaker(client).run(Hello(), resume=probe)
        if info.resumed or info.session_id == state.session_id or info.server_last_processed:
            raise Fail(f"{name}: resumed={info.resumed}, rl={info.server_last_processed}")
        await client.close()
    await _query(first, ctx.wait)


@case(
    "EL-11.3.6-5",
    "A resumed session is still logged in; a Login on it is ALREADY_LOGGED_IN",
    MUST,
    covers=["11.3.6-5"],
    users=1,
)
async def resumed_is_logged_in(ctx: Context) -> None:
    """A logged-in session is lost and resumed; on the new connection a
    Pull must be served (not NOT_LOGGED_IN) and a Login answered
    ALREADY_LOGGED_IN."""
    client, ok = await ctx.logged_in(0)
    await client.ack()
    await client.ping(b"sync")
    await client.expect(p.Pong, ctx.wait)
    state = client.session_state()
    await client.aclose()
    resumed, info = await ctx.resume(state, name="resumed")
    if not info.resumed:
        raise Fail("the server did not resume the session")
    head = ok.cursor + ok.pending
    await resumed.expect_answer(Pull(rid=resumed.rid(), after=head), PullResult, ctx.wait)
    await resumed.expect_failure(
        Login(
            rid=resumed.rid(),
            user=client.user,
            password=ctx.password,
            device_id=client.device,
            device_kind=DeviceKind.BOT,
        ),
        AppErrorCode.ALREADY_LOGGED_IN,
        ctx.wait,
    )
