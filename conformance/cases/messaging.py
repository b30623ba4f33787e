"""Messages, sync, receipts, recall, history and search (§11.4-§11.8)."""

from __future__ import annotations

import time
from typing import Any

import trio

from conformance.case import Context, case
from conformance.requirements import Level
from conformance.results import Fail, Skip
from conformance.session import Client, failed
from elink_protocol import ErrorCode
from elink_protocol import packets as p
from elink_protocol.app import (
    AppErrorCode,
    Delivered,
    History,
    HistoryPage,
    Logout,
    MarkRead,
    Message,
    MessageAccepted,
    MessageEvent,
    MessageStatus,
    Ok,
    Pull,
    PullResult,
    QueryStatus,
    Recall,
    RecallEvent,
    RecallOk,
    RequestFailed,
    Search,
    SearchResult,
    SendMessage,
    StatusEvent,
    StatusUpdate,
    SyncEvent,
    text_content,
)

from ._util import expect_error, packed

MUST, SHOULD = Level.MUST, Level.SHOULD

#: Requests in flight at once when a case sends many (fewer than the 64
#: answers a server keeps room for, so it never has to refuse a reader).
BATCH = 32


# --- helpers -----------------------------------------------------------------------


def _conversation(a: str, b: str) -> str:
    low, high = sorted((a, b))
    return f"d:{low}:{high}"


async def _send(
    client: Client, ctx: Context, to: str, text: str, *, cm: str | None = None, **fields: Any
) -> MessageAccepted:
    request = SendMessage(
        rid=client.rid(),
        client_msg_id=cm or ctx.unique("cm"),
        to=to,
        kind=fields.pop("kind", "text"),
        content=fields.pop("content", text_content(text)),
        **fields,
    )
    answer = await client.expect_answer(request, MessageAccepted, ctx.wait)
    assert isinstance(answer, MessageAccepted)
    return answer


async def _pull_all(
    client: Client, ctx: Context, after: int, *, page: int = 100
) -> tuple[list[SyncEvent], int]:
    """Every log entry after ``after``; returns (entries, head)."""
    events: list[SyncEvent] = []
    cursor = after
    while True:
        result = await client.expect_answer(
            Pull(rid=client.rid(), after=cursor, limit=page), PullResult, ctx.wait
        )
        assert isinstance(result, PullResult)
        events += result.events
        cursor = result.next_cursor
        if not result.more:
            return events, result.head


def _head(client: Client) -> int:
    assert client.login_ok is not None
    return client.login_ok.cursor + client.login_ok.pending


def _messages(events: list[SyncEvent]) -> dict[int, Message]:
    return {e.message.msg_id: e.message for e in events if isinstance(e, MessageEvent)}


async def _history(client: Client, ctx: Context, peer: str, **fields: Any) -> HistoryPage:
    page = await client.expect_answer(
        History(rid=client.rid(), with_user=peer, **fields), HistoryPage, ctx.wait
    )
    assert isinstance(page, HistoryPage)
    return page


async def _search(client: Client, ctx: Context, query: str) -> SearchResult:
    result = await client.expect_answer(
        Search(rid=client.rid(), query=query), SearchResult, ctx.wait
    )
    assert isinstance(result, SearchResult)
    return result


# --- sending (§11.4) --------------------------------------------------------------------


@case(
    "EL-11.4.7-1",
    "An accepted message is stored at once: in the history and in both users' logs, in sequence",
    MUST,
    covers=["11.4.7-1"],
    users=2,
)
async def accepted_is_stored(ctx: Context) -> None:
    """User A sends five texts to user B in one write.  Each answer must be
    MessageAccepted in the conversation ``d:A:B`` with distinct ids and five
    consecutive ``sq``.  As soon as the last answer is in, A's History must
    hold all five (same id, ``sq``, ``t``, ``cm``) and both A's and B's logs
    must have a ``message`` entry for each.  Durability itself cannot be
    seen from outside; this is what a message acknowledged before it was
    stored fails."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    requests = [
        SendMessage(
            rid=a.rid(),
            client_msg_id=ctx.unique("cm"),
            to=b.user,
            kind="text",
            content=text_content(f"message {i}"),
        )
        for i in range(5)
    ]
    for request in requests:
        await a.send(request)
    answers = [await a.answer(request, ctx.wait) for request in requests]
    bad = [failed(x) for x in answers if not isinstance(x, MessageAccepted)]
    if bad:
        raise Fail(f"SendMessage answered {bad}")
    accepted = [x for x in answers if isinstance(x, MessageAccepted)]
    conversation = _conversation(a.user, b.user)
    if {x.conversation for x in accepted} != {conversation}:
        raise Fail(f"conversations {[x.conversation for x in accepted]}, expected {conversation}")
    seqs = sorted(x.seq for x in accepted)
    if seqs != list(range(seqs[0], seqs[0] + 5)) or len({x.msg_id for x in accepted}) != 5:
        raise Fail(f"five messages got sq {seqs} and ids {[x.msg_id for x in accepted]}")
    page = await _history(a, ctx, b.user, limit=10)
    stored = {m.msg_id: m for m in page.messages}
    for request, answer in zip(requests, accepted, strict=True):
        m = stored.get(answer.msg_id)
        if m is None:
            raise Fail(
                f"message {answer.msg_id} (MessageAccepted) is not in the history right after"
            )
        if (m.seq, m.created_at_ms, m.client_msg_id) != (
            answer.seq,
            answer.created_at_ms,
            request.client_msg_id,
        ):
            raise Fail(f"history has {m}, MessageAccepted said {answer}")
    for client in (a, b):
        events, _ = await _pull_all(client, ctx, _head(client))
        missing = {x.msg_id for x in accepted} - set(_messages(events))
        if missing:
            raise Fail(f"{client.user}'s log lacks the messages {sorted(missing)}")


@case(
    "EL-11.4.7-2",
    "A SendMessage retried with its client message id is answered dup; nothing new is stored",
    MUST,
    covers=["11.4.7-2"],
    users=2,
)
async def idempotent_retry(ctx: Context) -> None:
    """A sends a text to B, then the same client message id again with a
    different text.  The second answer must have ``dup`` set and describe
    the original (same id, ``sq``, ``t``); the history must hold one
    message with that id and the first text; B's log one entry."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    cm = ctx.unique("cm")
    first = await _send(a, ctx, b.user, "the original", cm=cm)
    retry = await _send(a, ctx, b.user, "a different text", cm=cm)
    if not retry.duplicate:
        raise Fail("the retry was not answered with dup set")
    if (retry.msg_id, retry.seq, retry.created_at_ms, retry.conversation) != (
        first.msg_id,
        first.seq,
        first.created_at_ms,
        first.conversation,
    ):
        raise Fail(f"the retry's answer {retry} does not describe the original {first}")
    page = await _history(a, ctx, b.user, limit=10)
    copies = [m for m in page.messages if m.client_msg_id == cm]
    if len(copies) != 1 or copies[0].content != text_content("the original"):
        raise Fail(f"the history holds {copies} for the client message id")
    events, _ = await _pull_all(b, ctx, _head(b))
    entries = [e for e in events if isinstance(e, MessageEvent) and e.message.client_msg_id == cm]
    if len(entries) != 1:
        raise Fail(f"B's log has {len(entries)} entries for the message")


@case(
    "EL-11.4.7-3",
    "A message re-sent on a new session after a lost connection is recognised as a retry",
    MUST,
    covers=["11.4.7-3", "11.2.4-1"],
    users=2,
)
async def retry_after_lost_connection(ctx: Context) -> None:
    """A sends a text; its connection is lost right after (no Close, no
    acknowledgement, no resumption).  A logs in again on a new device and
    re-sends the message with the same client message id: the answer must
    be ``dup`` with the original's id and ``sq``."""
    a, _ = await ctx.logged_in(0, name="A1")
    cm = ctx.unique("cm")
    a.frozen_ack = a.last_processed
    first = await _send(a, ctx, ctx.user(1), "sent before the loss", cm=cm)
    await a.aclose()
    again, _ = await ctx.logged_in(0, name="A2")
    retry = await _send(again, ctx, ctx.user(1), "sent before the loss", cm=cm)
    if not retry.duplicate or retry.msg_id != first.msg_id or retry.seq != first.seq:
        raise Fail(f"the retry was answered {retry}; the original was {first}")


@case(
    "EL-11.4.1-1",
    "A message of a kind the server does not know is stored and relayed unchanged",
    SHOULD,
    covers=["11.4.1-1"],
    users=2,
)
async def unknown_kind(ctx: Context) -> None:
    """A sends B a message of kind ``x-conformance`` whose content has a
    ``text`` and a nested extra key.  SHOULD be accepted and reach B's log
    with the kind and content unchanged (UNSUPPORTED_CONTENT is allowed but
    NON-STRICT)."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    content = {"text": "from the future", "extra": {"list": [1, 2, 3], "flag": True}}
    request = SendMessage(
        rid=a.rid(),
        client_msg_id=ctx.unique("cm"),
        to=b.user,
        kind="x-conformance",
        content=content,
    )
    answer = await a.request(request, ctx.wait)
    if not isinstance(answer, MessageAccepted):
        raise Fail(f"an unknown kind was answered {failed(answer)}")
    events, _ = await _pull_all(b, ctx, _head(b))
    message = _messages(events).get(answer.msg_id)
    if message is None:
        raise Fail("the message is not in B's log")
    if message.kind != "x-conformance" or message.content != content:
        raise Fail(f"relayed as kind {message.kind!r} with content {message.content!r}")


@case(
    "EL-11.4.2-1",
    "Content over 2600 bytes, or text over 2500, is refused with PAYLOAD_INVALID",
    MUST,
    covers=["11.4.2-1", "11.4.2-2"],
)
async def content_too_large(ctx: Context) -> None:
    """Each on its own connection after the handshake (the payload check
    precedes the login check): a SendMessage of kind ``x-big`` whose content
    encodes to 2700 bytes, and a ``text`` message of 2501 bytes."""
    probes = [
        (
            {"r": 1, "cm": "big-1", "to": "conf-b", "k": "x-big", "c": {"blob": "b" * 2690}},
            "a 2700-byte content",
        ),
        (
            {"r": 1, "cm": "big-2", "to": "conf-b", "k": "text", "c": {"text": "t" * 2501}},
            "a 2501-byte text",
        ),
    ]
    for fields, what in probes:
        client, _ = await ctx.established()
        await client.send_payload(SendMessage.TYPE, packed(fields), note=what)
        await expect_error(ctx, client, ErrorCode.PAYLOAD_INVALID, what=what)


@case(
    "EL-11.4.2-2",
    "Content that breaks its kind's table is refused with PAYLOAD_INVALID",
    MUST,
    covers=["11.4.2-2"],
)
async def content_schema(ctx: Context) -> None:
    """A ``text`` message without ``text``; a ``file`` message whose
    transfer reference names ``a/b`` (path separators are not allowed); a
    ``link`` without ``url``."""
    ref = {"id": b"\x01" * 16, "sz": 10, "h": b"\x02" * 32, "n": "a/b", "mt": "text/plain"}
    probes = [
        (
            {"r": 1, "cm": "c-1", "to": "conf-b", "k": "text", "c": {"caption": "no text"}},
            "text without text",
        ),
        ({"r": 1, "cm": "c-2", "to": "conf-b", "k": "file", "c": {"ref": ref}}, "a file named a/b"),
        (
            {"r": 1, "cm": "c-3", "to": "conf-b", "k": "link", "c": {"title": "no url"}},
            "a link without url",
        ),
    ]
    for fields, what in probes:
        client, _ = await ctx.established()
        await client.send_payload(SendMessage.TYPE, packed(fields), note=what)
        await expect_error(ctx, client, ErrorCode.PAYLOAD_INVALID, what=what)


@case(
    "EL-11.4.5-1",
    "A SendMessage with both or neither of to and cv is refused with PAYLOAD_INVALID",
    MUST,
    covers=["11.4.5-1"],
)
async def to_and_cv(ctx: Context) -> None:
    """Two SendMessages on their own connections: one with ``to`` and
    ``cv``, one with neither."""
    base = {"r": 1, "cm": "both", "k": "text", "c": {"text": "x"}}
    for fields, what in (
        ({**base, "to": "conf-b", "cv": "d:conf-a:conf-b"}, "both to and cv"),
        (base, "neither to nor cv"),
    ):
        client, _ = await ctx.established()
        await client.send_payload(SendMessage.TYPE, packed(fields), note=what)
        await expect_error(ctx, client, ErrorCode.PAYLOAD_INVALID, what=what)


@case(
    "EL-11.8.1-1",
    "A History with both w and cv is refused with PAYLOAD_INVALID",
    MUST,
    covers=["11.8.1-1"],
)
async def history_w_and_cv(ctx: Context) -> None:
    """A History naming both a peer (``w``) and a conversation (``cv``)."""
    client, _ = await ctx.established()
    fields = {"r": 1, "w": "conf-b", "cv": "d:conf-a:conf-b"}
    await client.send_payload(History.TYPE, packed(fields), note="History with w and cv")
    await expect_error(ctx, client, ErrorCode.PAYLOAD_INVALID, what="both w and cv")


@case(
    "EL-11.4.3-1",
    "Reserved flag bits are refused (UNSUPPORTED_CONTENT) or kept when stored and relayed",
    MUST,
    covers=["11.4.3-1", "11.4.3-2"],
    users=2,
)
async def reserved_flags(ctx: Context) -> None:
    """A sends B a text with flag bit 8 (0x100) set.  The server either
    refuses it with UNSUPPORTED_CONTENT, or stores it: then the history and
    B's log must show ``fl`` with bit 8 still set."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    request = SendMessage(
        rid=a.rid(),
        client_msg_id=ctx.unique("cm"),
        to=b.user,
        kind="text",
        content=text_content("flags"),
        flags=0x100,
    )
    answer = await a.request(request, ctx.wait)
    if isinstance(answer, RequestFailed) and answer.code == AppErrorCode.UNSUPPORTED_CONTENT:
        ctx.note("refused with UNSUPPORTED_CONTENT")
        return
    if not isinstance(answer, MessageAccepted):
        raise Fail(f"answered {failed(answer)}")
    page = await _history(a, ctx, b.user, limit=5)
    stored = {m.msg_id: m for m in page.messages}.get(answer.msg_id)
    events, _ = await _pull_all(b, ctx, _head(b))
    relayed = _messages(events).get(answer.msg_id)
    for where, message in (("history", stored), ("B's log", relayed)):
        if message is None or not message.flags & 0x100:
            raise Fail(f"{where}: flag bit 8 was not kept ({message})")


@case(
    "EL-11.4.3-2",
    "A SECRET message is refused or kept out of search",
    MUST,
    covers=["11.4.3-2", "11.8.3-1"],
    users=2,
)
async def secret_flag(ctx: Context) -> None:
    """A sends B a text flagged SECRET that contains a unique word.  Either
    UNSUPPORTED_CONTENT (the server does not implement secret chat), or the
    message is stored with the flag, and neither A nor B finds it by
    searching for the word."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    word = ctx.unique("secret").replace("-", "")
    request = SendMessage(
        rid=a.rid(),
        client_msg_id=ctx.unique("cm"),
        to=b.user,
        kind="text",
        content=text_content(f"hush {word}"),
        flags=0x1,
    )
    answer = await a.request(request, ctx.wait)
    if isinstance(answer, RequestFailed) and answer.code == AppErrorCode.UNSUPPORTED_CONTENT:
        ctx.note("SECRET refused with UNSUPPORTED_CONTENT")
        return
    if not isinstance(answer, MessageAccepted):
        raise Fail(f"answered {failed(answer)}")
    page = await _history(a, ctx, b.user, limit=5)
    stored = {m.msg_id: m for m in page.messages}.get(answer.msg_id)
    if stored is None or not stored.flags & 0x1:
        raise Fail(f"the SECRET flag was not kept: {stored}")
    for client in (a, b):
        result = await _search(client, ctx, word)
        if any(m.msg_id == answer.msg_id for m in result.messages):
            raise Fail(f"{client.user}'s search found the SECRET message")


# --- sync (§11.5) ---------------------------------------------------------------------


@case(
    "EL-11.5.5-1",
    "Pull pages are in ascending order without gaps; nc and mo follow the rules",
    MUST,
    covers=["11.5.5-1"],
    users=2,
)
async def pull_pages(ctx: Context) -> None:
    """A sends B five texts; B pulls from its head before them with
    ``n`` = 2.  Each page must hold at most 2 entries, numbered strictly
    ascending and without gaps from the cursor, ``nc`` equal to the last
    entry's number, ``mo`` set exactly while ``nc`` is below ``hd``; the
    pages together must hold the five messages."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    sent = {(await _send(a, ctx, b.user, f"page {i}")).msg_id for i in range(5)}
    cursor = _head(b)
    seen: set[int] = set()
    for _ in range(100):
        result = await b.expect_answer(
            Pull(rid=b.rid(), after=cursor, limit=2), PullResult, ctx.wait
        )
        assert isinstance(result, PullResult)
        numbers = [e.cursor for e in result.events]
        if len(numbers) > 2 or numbers != list(range(cursor + 1, cursor + 1 + len(numbers))):
            raise Fail(f"a page after {cursor} holds entries {numbers}")
        expected_next = numbers[-1] if numbers else cursor
        if result.next_cursor != expected_next:
            raise Fail(f"nc = {result.next_cursor}, expected {expected_next}")
        if result.more != (result.next_cursor < result.head):
            raise Fail(f"mo = {result.more} with nc {result.next_cursor} and hd {result.head}")
        seen |= set(_messages(list(result.events)))
        cursor = result.next_cursor
        if not result.more:
            break
    if not sent <= seen:
        raise Fail(f"the pages lack messages {sorted(sent - seen)}")


@case(
    "EL-11.5.5-2",
    "A cursor beyond the log is refused with CURSOR_INVALID",
    MUST,
    covers=["11.5.5-2"],
    users=1,
)
async def cursor_beyond_head(ctx: Context) -> None:
    """A Pull and a Delivered whose cursor is 10^12 above the log's head."""
    client, _ = await ctx.logged_in(0)
    far = _head(client) + 10**12
    await client.expect_failure(
        Pull(rid=client.rid(), after=far), AppErrorCode.CURSOR_INVALID, ctx.wait
    )
    await client.expect_failure(
        Delivered(rid=client.rid(), cursor=far), AppErrorCode.CURSOR_INVALID, ctx.wait
    )


@case(
    "EL-11.5.7-1",
    "Messages sent while a user is offline wait in its log and are pulled at login",
    MUST,
    covers=["11.5.7-1"],
    users=2,
)
async def offline_messages(ctx: Context) -> None:
    """B logs in to learn its log's head and logs out.  A sends B three
    texts.  B logs in on another device: LoginOk ``pe`` must count at least
    the three, and a Pull from the old head must return them."""
    b, _ = await ctx.logged_in(1, name="B1")
    head = _head(b)
    await b.expect_answer(Logout(rid=b.rid()), Ok, ctx.wait)
    await b.expect_close(ctx.wait)
    a, _ = await ctx.logged_in(0, name="A")
    sent = {(await _send(a, ctx, ctx.user(1), f"offline {i}")).msg_id for i in range(3)}
    again, ok = await ctx.logged_in(1, name="B2")
    if ok.cursor + ok.pending < head + 3:
        raise Fail(f"LoginOk c={ok.cursor} pe={ok.pending}: fewer entries than the three sent")
    events, _ = await _pull_all(again, ctx, head)
    missing = sent - set(_messages(events))
    if missing:
        raise Fail(f"messages {sorted(missing)} sent while B was offline are not in its log")


@case(
    "EL-11.5.7-2",
    "When a recipient's backlog passes the offline cap, MessageAccepted says so (bf)",
    MUST,
    covers=["11.5.7-2", "11.5.7-1"],
    users=3,
)
async def offline_cap(ctx: Context) -> None:
    """The third account (C) confirms its whole log, so its backlog is 0, and
    goes offline.  B then sends C as many messages as the offline cap
    (--offline-cap, 1000 by default): none may carry ``bf`` while C's
    backlog is at most 1000 (the least cap the spec allows); the next one
    must.  C then logs in again: every message is still there.  Finally C
    confirms everything, so that later runs start from an empty backlog."""
    cap = ctx.options.offline_cap
    if cap > 5000:
        raise Skip(f"--offline-cap {cap}: too many messages for a conformance run")
    c, _ = await ctx.logged_in(2, name="C")
    _, head = await _pull_all(c, ctx, _head(c), page=1000)
    await c.expect_answer(Delivered(rid=c.rid(), cursor=head), Ok, ctx.wait)
    await c.expect_answer(Logout(rid=c.rid()), Ok, ctx.wait)
    await c.expect_close(ctx.wait)
    b, _ = await ctx.logged_in(1, name="B")
    total = cap + 1
    first_full = None
    started = time.monotonic()
    for batch in range(0, total, BATCH):
        requests = [
            SendMessage(
                rid=b.rid(),
                client_msg_id=ctx.unique("cm"),
                to=ctx.user(2),
                kind="text",
                content=text_content(f"backlog {i}"),
            )
            for i in range(batch, min(batch + BATCH, total))
        ]
        for request in requests:
            await b.send(request)
        for i, request in enumerate(requests, start=batch + 1):
            answer = await b.answer(request, ctx.wait * 4)
            if not isinstance(answer, MessageAccepted):
                raise Fail(f"message {i} was answered {failed(answer)}")
            if answer.recipient_backlog_full and first_full is None:
                first_full = i
    if first_full is not None and first_full <= 1000:
        raise Fail(f"bf set on message {first_full}, with a backlog of at most 1000")
    if first_full != total:
        raise Fail(f"bf first set on message {first_full}, expected message {total} (cap {cap})")
    ctx.note(f"{total} messages in {time.monotonic() - started:.1f} s")
    c2, ok = await ctx.logged_in(2, name="C2")
    if ok.cursor + ok.pending < head + total:
        raise Fail(
            f"C's log holds up to {ok.cursor + ok.pending}, expected at least {head + total}"
        )
    _, new_head = await _pull_all(c2, ctx, head + total - 5)
    await c2.expect_answer(Delivered(rid=c2.rid(), cursor=new_head), Ok, ctx.wait)


# --- receipts (§11.6) --------------------------------------------------------------------


@case(
    "EL-11.6.2-1",
    "Delivery and read receipts reach the sender and both logs",
    MUST,
    covers=["11.5.2.3-1", "11.5.2.3-2", "11.6.2-1"],
    users=2,
)
async def receipts(ctx: Context) -> None:
    """A sends B a text.  B pulls it and confirms it (Delivered): A must get
    a StatusUpdate ``delivered`` naming B and B's device, and QueryStatus
    must report it delivered.  B marks the conversation read: A must get a
    StatusUpdate ``read`` (without a device), both logs must gain a
    ``status`` entry ``read`` for the message, and QueryStatus must say
    ``read`` with one read receipt."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    a_head = _head(a)
    sent = await _send(a, ctx, b.user, "please read")
    events, b_head = await _pull_all(b, ctx, _head(b))
    if sent.msg_id not in _messages(events):
        raise Fail("the message is not in B's log")
    await b.expect_answer(Delivered(rid=b.rid(), cursor=b_head), Ok, ctx.wait)
    update = await a.wait_push(
        lambda pkt: (
            isinstance(pkt, StatusUpdate)
            and pkt.msg_id == sent.msg_id
            and pkt.status == "delivered"
        ),
        ctx.wait,
        what="StatusUpdate delivered",
    )
    assert isinstance(update, StatusUpdate)
    if (update.user, update.device) != (b.user, b.device):
        raise Fail(
            f"StatusUpdate delivered names {update.user}/{update.device}, "
            f"expected {b.user}/{b.device}"
        )
    status = await a.expect_answer(
        QueryStatus(rid=a.rid(), msg_id=sent.msg_id), MessageStatus, ctx.wait
    )
    assert isinstance(status, MessageStatus)
    if status.state != "delivered" or status.delivered_count != 1:
        raise Fail(f"QueryStatus after the delivery: {status}")
    await b.expect_answer(
        MarkRead(rid=b.rid(), conversation=sent.conversation, up_to_seq=sent.seq), Ok, ctx.wait
    )
    update = await a.wait_push(
        lambda pkt: (
            isinstance(pkt, StatusUpdate) and pkt.msg_id == sent.msg_id and pkt.status == "read"
        ),
        ctx.wait,
        what="StatusUpdate read",
    )
    assert isinstance(update, StatusUpdate)
    if update.user != b.user or update.device:
        raise Fail(f"StatusUpdate read: {update}")
    for client, after in ((a, a_head), (b, b_head)):
        log, _ = await _pull_all(client, ctx, after)
        reads = [
            e
            for e in log
            if isinstance(e, StatusEvent) and e.msg_id == sent.msg_id and e.status == "read"
        ]
        if len(reads) != 1 or reads[0].by != b.user:
            raise Fail(f"{client.user}'s log has {reads} as read receipts of the message")
    final = await a.expect_answer(
        QueryStatus(rid=a.rid(), msg_id=sent.msg_id), MessageStatus, ctx.wait
    )
    assert isinstance(final, MessageStatus)
    if final.state != "read" or final.read_count != 1 or final.delivered_count < 1:
        raise Fail(f"QueryStatus: {final}")
    if not any(r.user == b.user and r.device == b.device for r in final.delivered):
        raise Fail(f"QueryStatus lacks B's delivery: {final.delivered}")


# --- recall (§11.7) ------------------------------------------------------------------


@case(
    "EL-11.7.3-1",
    "Only the sender may recall a message; an unknown message is NOT_FOUND",
    MUST,
    covers=["11.7.3-1"],
    users=2,
)
async def recall_by_others(ctx: Context) -> None:
    """A sends B a text; B tries to recall it (PERMISSION_DENIED); A recalls
    a message id that does not exist (NOT_FOUND)."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    sent = await _send(a, ctx, b.user, "not yours to recall")
    await b.expect_failure(
        Recall(rid=b.rid(), msg_id=sent.msg_id), AppErrorCode.PERMISSION_DENIED, ctx.wait
    )
    await a.expect_failure(
        Recall(rid=a.rid(), msg_id=(1 << 62) - 7), AppErrorCode.NOT_FOUND, ctx.wait
    )


@case(
    "EL-11.7.3-2",
    "A recall inside the window hides the content everywhere and reaches both logs",
    MUST,
    covers=["11.7.3-2", "11.7.3-3", "11.4.4-1", "11.8.3-1"],
    users=2,
)
async def recall_inside_window(ctx: Context) -> None:
    """A sends B a text with a unique word and recalls it at once.  RecallOk
    must name the message; A's history must show it with ``rc`` and without
    content; B's log must gain a ``recall`` entry by A, and the message
    entry must now come without content; neither A nor B may find the word
    by search; a second Recall succeeds with the original time."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    word = ctx.unique("recall").replace("-", "")
    sent = await _send(a, ctx, b.user, f"oops {word}")
    ok = await a.expect_answer(Recall(rid=a.rid(), msg_id=sent.msg_id), RecallOk, ctx.wait)
    assert isinstance(ok, RecallOk)
    if ok.msg_id != sent.msg_id:
        raise Fail(f"RecallOk names message {ok.msg_id}")
    page = await _history(a, ctx, b.user, limit=5)
    stored = {m.msg_id: m for m in page.messages}.get(sent.msg_id)
    if stored is None or stored.recalled_at_ms != ok.recalled_at_ms or stored.content is not None:
        raise Fail(f"the history shows {stored} after the recall")
    events, _ = await _pull_all(b, ctx, _head(b))
    recalls = [e for e in events if isinstance(e, RecallEvent) and e.msg_id == sent.msg_id]
    if len(recalls) != 1 or recalls[0].by != a.user:
        raise Fail(f"B's log has {recalls} as recall entries")
    message = _messages(events).get(sent.msg_id)
    if message is None or message.content is not None:
        raise Fail(f"B's log shows the message as {message}")
    for client in (a, b):
        result = await _search(client, ctx, word)
        if any(m.msg_id == sent.msg_id for m in result.messages):
            raise Fail(f"{client.user}'s search finds the recalled message")
    again = await a.expect_answer(Recall(rid=a.rid(), msg_id=sent.msg_id), RecallOk, ctx.wait)
    assert isinstance(again, RecallOk)
    if again.recalled_at_ms != ok.recalled_at_ms:
        raise Fail(
            f"a repeated Recall gave time {again.recalled_at_ms}, the first {ok.recalled_at_ms}"
        )


@case(
    "EL-11.7.3-3",
    "A recall after the window is refused with RECALL_WINDOW_EXPIRED",
    MUST,
    covers=["11.7.3-1"],
    users=2,
)
async def recall_outside_window(ctx: Context) -> None:
    """A sends B a text, waits the recall window its LoginOk announced
    (``rw``) plus 1.5 s, and recalls: RECALL_WINDOW_EXPIRED, and the
    history still shows the content.  SKIPPED when the window is longer
    than --max-wait."""
    a, ok = await ctx.logged_in(0, name="A")
    window = ok.recall_window_s
    ctx.need_wait(window + 1.5, f"waiting out the recall window of {window} s")
    sent = await _send(a, ctx, ctx.user(1), "too late to recall")
    waited_from = time.monotonic()
    while time.monotonic() - waited_from < window + 1.5:
        await a.ping(b"keepalive")
        await a.expect(p.Pong, ctx.wait)
        await trio.sleep(min(0.5, max(window + 1.5 - (time.monotonic() - waited_from), 0)))
    await a.expect_failure(
        Recall(rid=a.rid(), msg_id=sent.msg_id), AppErrorCode.RECALL_WINDOW_EXPIRED, ctx.wait
    )
    page = await _history(a, ctx, ctx.user(1), limit=5)
    stored = {m.msg_id: m for m in page.messages}.get(sent.msg_id)
    if stored is None or stored.content is None:
        raise Fail(f"after a refused recall the history shows {stored}")


# --- history and search (§11.8) ---------------------------------------------------------


@case(
    "EL-11.8.2-1",
    "History pages go backwards through one conversation in strictly descending sq",
    MUST,
    covers=["11.8.2-1"],
    users=1,
)
async def history_paging(ctx: Context) -> None:
    """A sends five texts to its own file assistant, then pages with
    History ``n`` = 2 from the newest, continuing with ``bs`` = the last
    ``sq``.  Every page must hold at most 2 messages of ``d:A:A`` in
    strictly descending ``sq``, ``mo`` set while older ones exist, and the
    first three pages must be the five messages, newest first."""
    a, _ = await ctx.logged_in(0)
    sent = [await _send(a, ctx, a.user, f"note {i}") for i in range(5)]
    conversation = _conversation(a.user, a.user)
    seen: list[int] = []
    before: int | None = None
    for _ in range(3):
        page = await _history(
            a, ctx, a.user, limit=2, **({} if before is None else {"before_seq": before})
        )
        seqs = [m.seq for m in page.messages]
        if len(seqs) > 2 or seqs != sorted(seqs, reverse=True) or len(set(seqs)) != len(seqs):
            raise Fail(f"a page holds sq {seqs}")
        if any(m.conversation != conversation for m in page.messages):
            raise Fail("a page holds messages of another conversation")
        if before is not None and seqs and seqs[0] >= before:
            raise Fail(f"a page before sq {before} starts at {seqs[0]}")
        if page.more != (bool(seqs) and seqs[-1] > 1):
            raise Fail(f"mo = {page.more} with the oldest sq {seqs[-1] if seqs else None}")
        seen += [m.msg_id for m in page.messages]
        if not seqs:
            break
        before = seqs[-1]
    expected = [x.msg_id for x in reversed(sent)]
    if seen[:5] != expected:
        raise Fail(f"pages gave messages {seen[:5]}, expected {expected}")


@case(
    "EL-11.1.6-1",
    "Pages of large messages hold as many as fit in 4096 bytes and say there is more",
    MUST,
    covers=["11.1.6-1"],
    users=1,
)
async def large_pages(ctx: Context) -> None:
    """A sends three 2500-byte texts to its file assistant.  A History with
    ``n`` = 10 must fit in one payload (the client checks every payload is at
    most 4096 bytes), hold at least one of them, and set ``mo``; so must a
    Pull of A's log over the three entries."""
    a, _ = await ctx.logged_in(0)
    head = _head(a)
    for i in range(3):
        await _send(a, ctx, a.user, str(i) * 2500)
    page = await _history(a, ctx, a.user, limit=10)
    if not page.messages or not page.more:
        raise Fail(
            f"a History page of 2500-byte texts holds {len(page.messages)} with mo={page.more}"
        )
    result = await a.expect_answer(Pull(rid=a.rid(), after=head, limit=10), PullResult, ctx.wait)
    assert isinstance(result, PullResult)
    if not result.events or not result.more:
        raise Fail(
            f"a Pull page of 2500-byte texts holds {len(result.events)} with mo={result.more}"
        )


@case(
    "EL-11.8.3-1",
    "Search finds text in any ASCII case and in Chinese, in the user's own conversations only",
    MUST,
    covers=["11.8.3-1"],
    users=3,
)
async def search(ctx: Context) -> None:
    """A sends B ``Conf<word>检索测试`` and then a recalled message with the
    same word.  B's search for the word in lower case and for ``word检索``
    must find the first message and not the recalled one; C (not a member
    of the conversation) must find neither."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    word = ctx.unique("w").replace("-", "").upper()
    kept = await _send(a, ctx, b.user, f"Conf{word}检索测试")
    gone = await _send(a, ctx, b.user, f"Conf{word} recalled")
    await a.expect_answer(Recall(rid=a.rid(), msg_id=gone.msg_id), RecallOk, ctx.wait)
    for query in (word.lower(), f"{word.lower()}检索"):
        result = await _search(b, ctx, query)
        ids = {m.msg_id for m in result.messages}
        if kept.msg_id not in ids:
            raise Fail(f"B's search for {query!r} does not find the message")
        if gone.msg_id in ids:
            raise Fail(f"B's search for {query!r} finds the recalled message")
    c, _ = await ctx.logged_in(2, name="C")
    result = await _search(c, ctx, word.lower())
    if {kept.msg_id, gone.msg_id} & {m.msg_id for m in result.messages}:
        raise Fail("a user who is not a member of the conversation finds its messages")
