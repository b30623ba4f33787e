"""Messages (§11.4): storing, ordering, idempotent retries, kinds, content
limits and flags."""

from __future__ import annotations

from conformance.case import Context, case
from conformance.cases._app import (
    conversation_of,
    history_page,
    log_head,
    message_map,
    pull_log,
    search_for,
    send_text,
)
from conformance.requirements import Level
from conformance.results import Fail
from conformance.session import failed
from elink_protocol import ErrorCode
from elink_protocol.app import (
    AppErrorCode,
    History,
    MessageAccepted,
    MessageEvent,
    RequestFailed,
    SendMessage,
    text_content,
)

from ._util import expect_error, packed

MUST, SHOULD = Level.MUST, Level.SHOULD


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
    conversation = conversation_of(a.user, b.user)
    if {x.conversation for x in accepted} != {conversation}:
        raise Fail(f"conversations {[x.conversation for x in accepted]}, expected {conversation}")
    seqs = sorted(x.seq for x in accepted)
    if seqs != list(range(seqs[0], seqs[0] + 5)) or len({x.msg_id for x in accepted}) != 5:
        raise Fail(f"five messages got sq {seqs} and ids {[x.msg_id for x in accepted]}")
    page = await history_page(a, ctx, b.user, limit=10)
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
        events, _ = await pull_log(client, ctx, log_head(client))
        missing = {x.msg_id for x in accepted} - set(message_map(events))
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
    first = await send_text(a, ctx, b.user, "the original", cm=cm)
    retry = await send_text(a, ctx, b.user, "a different text", cm=cm)
    if not retry.duplicate:
        raise Fail("the retry was not answered with dup set")
    if (retry.msg_id, retry.seq, retry.created_at_ms, retry.conversation) != (
        first.msg_id,
        first.seq,
        first.created_at_ms,
        first.conversation,
    ):
        raise Fail(f"the retry's answer {retry} does not describe the original {first}")
    page = await history_page(a, ctx, b.user, limit=10)
    copies = [m for m in page.messages if m.client_msg_id == cm]
    if len(copies) != 1 or copies[0].content != text_content("the original"):
        raise Fail(f"the history holds {copies} for the client message id")
    events, _ = await pull_log(b, ctx, log_head(b))
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
    first = await send_text(a, ctx, ctx.user(1), "sent before the loss", cm=cm)
    await a.aclose()
    again, _ = await ctx.logged_in(0, name="A2")
    retry = await send_text(again, ctx, ctx.user(1), "sent before the loss", cm=cm)
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
    events, _ = await pull_log(b, ctx, log_head(b))
    message = message_map(events).get(answer.msg_id)
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
    page = await history_page(a, ctx, b.user, limit=5)
    stored = {m.msg_id: m for m in page.messages}.get(answer.msg_id)
    events, _ = await pull_log(b, ctx, log_head(b))
    relayed = message_map(events).get(answer.msg_id)
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
    page = await history_page(a, ctx, b.user, limit=5)
    stored = {m.msg_id: m for m in page.messages}.get(answer.msg_id)
    if stored is None or not stored.flags & 0x1:
        raise Fail(f"the SECRET flag was not kept: {stored}")
    for client in (a, b):
        result = await search_for(client, ctx, word)
        if any(m.msg_id == answer.msg_id for m in result.messages):
            raise Fail(f"{client.user}'s search found the SECRET message")
