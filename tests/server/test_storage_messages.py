"""Messages: append, idempotency, seq assignment, history, recall."""

from __future__ import annotations

import pytest
import trio

from elink_server.storage import (
    ConversationKind,
    EventKind,
    EventRef,
    InvalidArgument,
    MessageFlags,
    MessageKind,
    PermissionDenied,
    RecallWindowExpired,
    SqliteStore,
    UnknownConversation,
    UnknownDevice,
    UnknownMessage,
    UnknownUser,
    direct_conversation_id,
    group_conversation_id,
)

T0 = 1_700_000_000.0  # the conftest's clock origin
AB = "d:alice:bob"


async def test_append_assigns_seq_msg_id_and_log_entries(store: SqliteStore, send) -> None:
    first = await send("alice", "bob", "hello", client_msg_id="c1", now=T0 + 1)
    second = await send("bob", "alice", "hi back", client_msg_id="c1", now=T0 + 2)

    assert not first.duplicate and not second.duplicate
    assert (first.message.seq, second.message.seq) == (1, 2)
    assert second.message.msg_id > first.message.msg_id
    assert first.message.conversation == second.message.conversation == AB
    assert first.message.content == {"text": "hello"}
    assert first.message.created_at == T0 + 1
    assert first.events == (EventRef(user="alice", user_seq=1), EventRef(user="bob", user_seq=1))
    assert second.events == (EventRef(user="alice", user_seq=2), EventRef(user="bob", user_seq=2))
    assert first.backlog_full == () and not first.recipient_backlog_full

    conversation = await store.get_conversation(AB)
    assert conversation is not None
    assert conversation.kind is ConversationKind.DIRECT
    assert conversation.members == ("alice", "bob")
    assert conversation.last_seq == 2
    assert [c.id for c in await store.list_conversations("alice")] == [AB]
    assert await store.list_conversations("carol") == ()


async def test_duplicate_client_msg_id_returns_the_original(store: SqliteStore, send) -> None:
    original = await send("alice", "bob", "first", client_msg_id="same")
    retry = await send("alice", "bob", "changed text", client_msg_id="same", now=T0 + 50)

    assert retry.duplicate
    assert retry.message == original.message
    assert retry.events == () and retry.backlog_full == ()
    assert len(await store.history(AB)) == 1
    assert (await store.events_since("bob", 0)).head == 1
    # The key is per sender: bob may use the same client id.
    assert not (await send("bob", "alice", client_msg_id="same")).duplicate


async def test_concurrent_duplicates_create_one_message(store: SqliteStore, send) -> None:
    results = []

    async def attempt() -> None:
        results.append(await send("alice", "bob", client_msg_id="once"))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(attempt)
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.message.msg_id for r in results}) == 1
    assert len(await store.history(AB)) == 1


async def test_hundreds_of_concurrent_appends_get_seq_1_to_n(store: SqliteStore, send) -> None:
    n = 400
    results = []

    async def one(i: int) -> None:
        sender, recipient = ("alice", "bob") if i % 2 else ("bob", "alice")
        results.append(await send(sender, recipient, f"m{i}", client_msg_id=f"c{i}"))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)

    assert sorted(r.message.seq for r in results) == list(range(1, n + 1))
    assert len({r.message.msg_id for r in results}) == n
    for user in ("alice", "bob"):
        seqs = sorted(e.user_seq for r in results for e in r.events if e.user == user)
        assert seqs == list(range(1, n + 1))
    stats = store.statistics()
    # Group commit really grouped: fewer transactions than requests.
    assert stats.largest_batch > 1
    assert stats.failed == 0


async def test_self_conversation_is_the_file_assistant(store: SqliteStore, send) -> None:
    result = await send("alice", "alice", "note to self")
    assert result.message.conversation == "d:alice:alice"
    assert result.events == (EventRef(user="alice", user_seq=1),)
    conversation = await store.get_conversation("d:alice:alice")
    assert conversation is not None and conversation.members == ("alice",)


async def test_append_refusals_leave_no_trace(store: SqliteStore, send) -> None:
    with pytest.raises(UnknownUser):
        await send("alice", "nobody")
    assert await store.get_conversation("d:alice:nobody") is None
    with pytest.raises(UnknownUser):
        await send("nobody", "alice")
    with pytest.raises(UnknownDevice):
        await store.append_message(
            conversation=AB,
            sender="alice",
            sender_device="phone",
            client_msg_id="x",
            kind=MessageKind.TEXT,
            content={"text": "x"},
            now=T0,
        )
    with pytest.raises(PermissionDenied):
        await store.append_message(
            conversation="d:bob:carol",
            sender="alice",
            sender_device="pc",
            client_msg_id="x",
            kind=MessageKind.TEXT,
            content={"text": "x"},
            now=T0,
        )
    with pytest.raises(UnknownConversation):
        await store.append_message(
            conversation=group_conversation_id("team"),
            sender="alice",
            sender_device="pc",
            client_msg_id="x",
            kind=MessageKind.TEXT,
            content={"text": "x"},
            now=T0,
        )
    # None of the refused attempts consumed a seq or a log entry.
    assert (await send("alice", "bob", client_msg_id="x")).message.seq == 1
    assert await store.pending_count("alice", 0) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"conversation": "d:bob:alice"},  # unsorted: each pair has one id
        {"conversation": "x:alice"},
        {"conversation": "d:alice"},
        {"sender": "al ice"},
        {"sender": ""},
        {"sender_device": "a:b"},
        {"client_msg_id": ""},
        {"client_msg_id": "x" * 129},
        {"kind": "Hologram"},  # unknown kinds are stored; malformed ones are not
        {"kind": ""},
        {"kind": "x" * 33},
        {"content": ["text"]},
        {"content": {1: "int key"}},
        {"content": {"text": object()}},
        {"now": float("nan")},
        {"flags": 1 << 10},
    ],
)
async def test_append_validates_arguments(store: SqliteStore, changes) -> None:
    arguments = {
        "conversation": AB,
        "sender": "alice",
        "sender_device": "pc",
        "client_msg_id": "c",
        "kind": MessageKind.TEXT,
        "content": {"text": "x"},
        "now": T0,
    }
    with pytest.raises(InvalidArgument):
        await store.append_message(**{**arguments, **changes})
    assert store.statistics().requests == 6  # the fixture's setup only: nothing queued


async def test_content_round_trips_for_every_kind(store: SqliteStore, send) -> None:
    content = {"name": "报告.pdf", "size": 12345, "sha256": b"\x00" * 32, "pages": [1, 2]}
    result = await send("alice", "bob", kind=MessageKind.FILE, content=content)
    assert result.message.kind is MessageKind.FILE
    stored = await store.get_message(result.message.msg_id)
    assert stored is not None and stored.content == content


async def test_history_pages_newest_first(store: SqliteStore, send) -> None:
    for i in range(120):
        await send("alice", "bob", f"m{i}", now=T0 + i)
    page = await store.history(AB, limit=50)
    assert [m.seq for m in page] == list(range(120, 70, -1))
    page = await store.history(AB, before_seq=page[-1].seq, limit=50)
    assert [m.seq for m in page] == list(range(70, 20, -1))
    page = await store.history(AB, before_seq=page[-1].seq, limit=50)
    assert [m.seq for m in page] == list(range(20, 0, -1))
    assert await store.history(AB, before_seq=1) == ()
    assert page[-1].content == {"text": "m0"}
    with pytest.raises(UnknownConversation):
        await store.history("d:alice:carol")
    with pytest.raises(InvalidArgument):
        await store.history(AB, limit=0)
    with pytest.raises(InvalidArgument):
        await store.history(AB, before_seq=0)


async def test_recall_within_window(store: SqliteStore, send) -> None:
    sent = (await send("alice", "bob", "oops", now=T0)).message
    result = await store.recall(sent.msg_id, by_user="alice", now=T0 + 120, window_seconds=120)

    assert not result.duplicate
    assert result.message.recalled and result.message.content is None
    assert result.message.recalled_at == T0 + 120
    assert result.events == (EventRef(user="alice", user_seq=2), EventRef(user="bob", user_seq=2))
    # Users see a recalled placeholder everywhere, auditors see the content.
    (shown,) = await store.history(AB)
    assert shown.recalled and shown.content is None
    page = await store.events_since("bob", 0)
    assert [e.kind for e in page.events] == [EventKind.MESSAGE, EventKind.RECALL]
    assert all(e.message is not None and e.message.content is None for e in page.events)
    audited = await store.audit_message(sent.msg_id)
    assert audited is not None and audited.content == {"text": "oops"} and audited.recalled
    # Recalling again is idempotent and adds nothing.
    again = await store.recall(sent.msg_id, by_user="alice", now=T0 + 500, window_seconds=120)
    assert again.duplicate and again.events == ()
    assert again.message.recalled_at == T0 + 120


async def test_recall_refusals(store: SqliteStore, send) -> None:
    msg_id = (await send("alice", "bob", "x", now=T0)).message.msg_id
    with pytest.raises(PermissionDenied):
        await store.recall(msg_id, by_user="bob", now=T0, window_seconds=120)
    with pytest.raises(RecallWindowExpired):
        await store.recall(msg_id, by_user="alice", now=T0 + 120.5, window_seconds=120)
    with pytest.raises(UnknownMessage):
        await store.recall(msg_id + 1, by_user="alice", now=T0, window_seconds=120)
    with pytest.raises(InvalidArgument):
        await store.recall(msg_id, by_user="alice", now=T0, window_seconds=-1)
    message = await store.get_message(msg_id)
    assert message is not None and not message.recalled
    assert await store.pending_count("bob", 0) == 1


async def test_duplicate_of_a_recalled_message_hides_content(store: SqliteStore, send) -> None:
    sent = (await send("alice", "bob", "secret plan", client_msg_id="k")).message
    await store.recall(sent.msg_id, by_user="alice", now=T0, window_seconds=120)
    retry = await send("alice", "bob", "secret plan", client_msg_id="k")
    assert retry.duplicate and retry.message.recalled and retry.message.content is None


async def test_flags_are_stored(store: SqliteStore, send) -> None:
    result = await send("alice", "bob", "sign me", flags=MessageFlags.SIGN_RECEIPT)
    assert result.message.flags is MessageFlags.SIGN_RECEIPT


async def test_direct_conversation_id_sorts_and_validates() -> None:
    assert direct_conversation_id("bob", "alice") == AB
    assert direct_conversation_id("张伟", "alice") == "d:alice:张伟"
    with pytest.raises(InvalidArgument):
        direct_conversation_id("a:b", "c")
