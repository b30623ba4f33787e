"""Random operation sequences against a plain-Python model of the store."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from elink_server.storage import (
    DeviceKind,
    EventKind,
    MessageKind,
    PermissionDenied,
    RecallWindowExpired,
    direct_conversation_id,
    open_sqlite_store,
)

USERS = ("ann", "ben", "cat")
WINDOW = 10.0

user = st.sampled_from(USERS)
operation = st.one_of(
    st.tuples(st.just("send"), user, user, st.sampled_from("abcdef")),
    st.tuples(st.just("recall"), st.integers(0, 30), user, st.integers(0, 15)),
    st.tuples(st.just("read"), st.integers(0, 30), user),
)


async def check(operations: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with open_sqlite_store(Path(directory) / "m.db") as store:
            for name in USERS:
                await store.create_user(name, password_hash="h", now=0.0)
                await store.register_device(name, "pc", kind=DeviceKind.PC, now=0.0)

            by_key: dict[tuple[str, str], int] = {}  # (sender, client id) -> msg_id
            messages: list[dict] = []  # in msg_id order
            next_seq: dict[str, int] = {}
            log: dict[str, list[tuple[EventKind, int]]] = {name: [] for name in USERS}
            read: set[tuple[int, str]] = set()
            now = 0.0

            for op in operations:
                now += 1.0
                if op[0] == "send":
                    _, sender, recipient, key = op
                    conversation = direct_conversation_id(sender, recipient)
                    result = await store.append_message(
                        conversation=conversation,
                        sender=sender,
                        sender_device="pc",
                        client_msg_id=key,
                        kind=MessageKind.TEXT,
                        content={"text": f"{sender}:{key}"},
                        now=now,
                    )
                    if (sender, key) in by_key:
                        assert result.duplicate
                        assert result.message.msg_id == by_key[sender, key]
                        continue
                    assert not result.duplicate
                    seq = next_seq.get(conversation, 1)
                    next_seq[conversation] = seq + 1
                    assert result.message.seq == seq
                    by_key[sender, key] = result.message.msg_id
                    members = sorted({sender, recipient})
                    messages.append(
                        {
                            "id": result.message.msg_id,
                            "sender": sender,
                            "members": members,
                            "at": now,
                            "recalled": False,
                        }
                    )
                    for member in members:
                        log[member].append((EventKind.MESSAGE, result.message.msg_id))
                elif op[0] == "recall" and messages:
                    _, index, by_user, age = op
                    target = messages[index % len(messages)]
                    at = target["at"] + age
                    try:
                        result = await store.recall(
                            target["id"], by_user=by_user, now=at, window_seconds=WINDOW
                        )
                    except RecallWindowExpired:
                        assert by_user == target["sender"] and age > WINDOW
                        assert not target["recalled"]
                    except PermissionDenied:
                        assert by_user != target["sender"]
                    else:
                        assert by_user == target["sender"]
                        assert result.duplicate == target["recalled"]
                        if not target["recalled"]:
                            assert age <= WINDOW
                            target["recalled"] = True
                            for member in target["members"]:
                                log[member].append((EventKind.RECALL, target["id"]))
                elif op[0] == "read" and messages:
                    _, index, reader = op
                    target = messages[index % len(messages)]
                    members = target["members"]
                    allowed = reader in members and (
                        reader != target["sender"] or members == [reader]
                    )
                    try:
                        result = await store.mark_read(target["id"], user=reader, now=now)
                    except PermissionDenied:
                        assert not allowed
                    else:
                        assert allowed
                        assert result.recorded == ((target["id"], reader) not in read)
                        if result.recorded:
                            read.add((target["id"], reader))
                            for who in dict.fromkeys((reader, target["sender"])):
                                log[who].append((EventKind.READ, target["id"]))

            for name in USERS:
                page = await store.events_since(name, 0, limit=1000)
                assert [(e.kind, e.msg_id) for e in page.events] == log[name]
                assert [e.user_seq for e in page.events] == list(range(1, len(log[name]) + 1))
            for conversation, following in next_seq.items():
                history = await store.history(conversation, limit=500)
                assert [m.seq for m in history] == list(range(following - 1, 0, -1))
            for target in messages:
                shown = await store.get_message(target["id"])
                assert shown is not None and shown.recalled == target["recalled"]
                assert (shown.content is None) == target["recalled"]


@settings(max_examples=30, deadline=None)
@given(st.lists(operation, max_size=40))
def test_store_matches_model(operations: list[tuple]) -> None:
    trio.run(check, operations)
