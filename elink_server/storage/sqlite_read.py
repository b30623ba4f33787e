"""Synchronous queries of the SQLite store, and rows -> records.

These functions take a sqlite-utils :class:`Database` and run in a worker
thread: on a reader connection for the public read API, or on the writer
connection (inside the open transaction, so they see its uncommitted rows)
when a write needs to look something up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import msgpack
from sqlite_utils import Database

from .base import (
    ConversationKind,
    ConversationRecord,
    DeviceKind,
    DeviceReceipt,
    DeviceRecord,
    EventKind,
    EventPage,
    EventRecord,
    InvalidArgument,
    MessageFlags,
    MessageRecord,
    MessageState,
    MessageStatus,
    ReadReceipt,
    UnknownConversation,
    UnknownMessage,
    UnknownUser,
    UserRecord,
    message_kind,
)

MESSAGE_COLUMNS = (
    "msg_id, conversation, seq, sender, sender_device, client_msg_id, kind, content,"
    " created_at, recalled_at, flags"
)


def _prefixed(prefix: str) -> str:
    return ", ".join(f"{prefix}.{column.strip()}" for column in MESSAGE_COLUMNS.split(","))


@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[None]:
    """Run several SELECTs against one consistent state of the database.

    Reader connections are in autocommit mode, where each statement sees the
    newest commit; a deferred transaction pins one WAL snapshot instead.
    Inside the writer's open transaction this is a no-op.
    """
    if db.conn.in_transaction:
        yield
        return
    db.conn.execute("BEGIN")
    try:
        yield
    finally:
        db.conn.execute("COMMIT")


def message_from_row(row: dict[str, Any], *, reveal: bool) -> MessageRecord:
    """Build a record from a ``messages`` row.  ``reveal=False`` is the users'
    view: a recalled message has no content."""
    recalled_at = row["recalled_at"]
    content = None
    if reveal or recalled_at is None:
        content = msgpack.unpackb(row["content"], raw=False)
    return MessageRecord(
        msg_id=row["msg_id"],
        conversation=row["conversation"],
        seq=row["seq"],
        sender=row["sender"],
        sender_device=row["sender_device"],
        client_msg_id=row["client_msg_id"],
        kind=message_kind(row["kind"]),
        content=content,
        created_at=row["created_at"],
        recalled_at=recalled_at,
        flags=MessageFlags(row["flags"]),
    )


def query_one(db: Database, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The first row as a dict, or ``None``.  Unlike ``Database.query`` this
    adds no savepoint around the statement: it is on the append path."""
    cursor = db.execute(sql, params)
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip((column[0] for column in cursor.description), row, strict=True))


def get_user(db: Database, name: str) -> UserRecord | None:
    row = query_one(
        db,
        "SELECT name, password_hash, disabled, created_at FROM users WHERE name = :name",
        {"name": name},
    )
    if row is None:
        return None
    return UserRecord(
        name=row["name"],
        password_hash=row["password_hash"],
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
    )


def event_head(db: Database, user: str) -> int:
    """The newest ``user_seq`` of the user's log; :class:`UnknownUser` if none."""
    row = db.execute("SELECT event_head FROM users WHERE name = ?", (user,)).fetchone()
    if row is None:
        raise UnknownUser(f"no user {user!r}")
    head: int = row[0]
    return head


def device_from_row(row: dict[str, Any]) -> DeviceRecord:
    return DeviceRecord(
        user=row["user"],
        device_id=row["device_id"],
        kind=DeviceKind(row["kind"]),
        created_at=row["created_at"],
        last_seen=row["last_seen"],
        cursor=row["cursor"],
    )


def list_devices(db: Database, user: str) -> tuple[DeviceRecord, ...]:
    with snapshot(db):
        event_head(db, user)
        rows = db.query(
            "SELECT * FROM devices WHERE user = :user ORDER BY device_id", {"user": user}
        )
        return tuple(device_from_row(row) for row in rows)


def followers(db: Database, user: str) -> tuple[str, ...]:
    rows = db.execute("SELECT follower FROM follows WHERE followee = ? ORDER BY follower", (user,))
    return tuple(row[0] for row in rows)


def following(db: Database, user: str) -> tuple[str, ...]:
    rows = db.execute("SELECT followee FROM follows WHERE follower = ? ORDER BY followee", (user,))
    return tuple(row[0] for row in rows)


def members(db: Database, conversation: str) -> tuple[str, ...]:
    rows = db.execute(
        "SELECT user FROM conversation_members WHERE conversation = ? ORDER BY user",
        (conversation,),
    )
    return tuple(row[0] for row in rows)


def _conversation_from_row(db: Database, row: dict[str, Any]) -> ConversationRecord:
    return ConversationRecord(
        id=row["id"],
        kind=ConversationKind(row["kind"]),
        members=members(db, row["id"]),
        last_seq=row["next_seq"] - 1,
        created_at=row["created_at"],
    )


def get_conversation(db: Database, conversation: str) -> ConversationRecord | None:
    with snapshot(db):
        row = query_one(db, "SELECT * FROM conversations WHERE id = :id", {"id": conversation})
        return None if row is None else _conversation_from_row(db, row)


def list_conversations(db: Database, user: str) -> tuple[ConversationRecord, ...]:
    with snapshot(db):
        event_head(db, user)
        rows = list(
            db.query(
                "SELECT c.* FROM conversation_members cm"
                " JOIN conversations c ON c.id = cm.conversation"
                " WHERE cm.user = :user ORDER BY c.id",
                {"user": user},
            )
        )
        return tuple(_conversation_from_row(db, row) for row in rows)


def get_message(db: Database, msg_id: int, *, reveal: bool) -> MessageRecord | None:
    row = query_one(
        db, f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE msg_id = :id", {"id": msg_id}
    )
    return None if row is None else message_from_row(row, reveal=reveal)


def history(
    db: Database, conversation: str, before_seq: int | None, limit: int
) -> tuple[MessageRecord, ...]:
    with snapshot(db):
        if (
            query_one(db, "SELECT 1 AS x FROM conversations WHERE id = :id", {"id": conversation})
            is None
        ):
            raise UnknownConversation(f"no conversation {conversation!r}")
        rows = db.query(
            f"SELECT {MESSAGE_COLUMNS} FROM messages"
            " WHERE conversation = :conversation AND seq < :before"
            " ORDER BY seq DESC LIMIT :limit",
            {
                "conversation": conversation,
                # seqs start at 1 and are far below 2**62
                "before": (1 << 62) if before_seq is None else before_seq,
                "limit": limit,
            },
        )
        return tuple(message_from_row(row, reveal=False) for row in rows)


#: Shortest query the trigram index can answer; shorter ones scan with LIKE.
TRIGRAM = 3


def _like_pattern(query: str) -> str:
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search(
    db: Database, user: str, query: str, limit: int, conversation: str | None
) -> tuple[MessageRecord, ...]:
    params: dict[str, Any] = {"user": user, "limit": limit, "conversation": conversation}
    scope = "AND (:conversation IS NULL OR m.conversation = :conversation)"
    if len(query) >= TRIGRAM:
        # A double-quoted FTS5 string is a phrase; with the trigram tokenizer a
        # phrase matches exactly the texts containing it as a substring.
        params["match"] = '"' + query.replace('"', '""') + '"'
        sql = (
            f"SELECT {_prefixed('m')} FROM messages_fts f"
            " JOIN messages m ON m.msg_id = f.rowid"
            " JOIN conversation_members cm"
            "   ON cm.conversation = m.conversation AND cm.user = :user"
            f" WHERE messages_fts MATCH :match AND m.recalled_at IS NULL {scope}"
            " ORDER BY m.msg_id DESC LIMIT :limit"
        )
    else:
        # Trigrams cannot index 1-2 character queries ("会议"): scan the user's
        # conversations instead.  LIKE folds ASCII case, as the index does.
        params["pattern"] = _like_pattern(query)
        sql = (
            f"SELECT {_prefixed('m')} FROM conversation_members cm"
            " JOIN messages m ON m.conversation = cm.conversation"
            " WHERE cm.user = :user AND m.text LIKE :pattern ESCAPE '\\'"
            f" AND m.recalled_at IS NULL {scope}"
            " ORDER BY m.msg_id DESC LIMIT :limit"
        )
    return tuple(message_from_row(row, reveal=False) for row in db.query(sql, params))


def message_status(db: Database, msg_id: int) -> MessageStatus:
    with snapshot(db):
        if get_message(db, msg_id, reveal=False) is None:
            raise UnknownMessage(f"no message {msg_id}")
        rows = list(
            db.query(
                "SELECT kind, user, device_id, at FROM receipts WHERE msg_id = :id"
                " ORDER BY at, user, device_id",
                {"id": msg_id},
            )
        )
    delivered = tuple(
        DeviceReceipt(user=r["user"], device_id=r["device_id"], at=r["at"])
        for r in rows
        if r["kind"] == "delivered"
    )
    read = tuple(ReadReceipt(user=r["user"], at=r["at"]) for r in rows if r["kind"] == "read")
    state = (
        MessageState.READ if read else MessageState.DELIVERED if delivered else MessageState.SENT
    )
    return MessageStatus(msg_id=msg_id, state=state, delivered=delivered, read=read)


def events_since(db: Database, user: str, cursor: int, limit: int) -> EventPage:
    with snapshot(db):
        head = event_head(db, user)
        if cursor > head:
            # Only possible if the database went back in time (restored from a
            # backup): the device must resynchronise, not silently skip.
            raise InvalidArgument(f"cursor {cursor} is ahead of {user!r}'s log head {head}")
        rows = db.query(
            "SELECT e.user_seq AS e_seq, e.kind AS e_kind, e.conversation AS e_conversation,"
            " e.msg_id AS e_msg_id, e.actor AS e_actor, e.created_at AS e_at,"
            f" {_prefixed('m')}"
            " FROM user_events e"
            " LEFT JOIN messages m ON m.msg_id = e.msg_id AND e.kind != 'read'"
            " WHERE e.user = :user AND e.user_seq > :cursor"
            " ORDER BY e.user_seq LIMIT :limit",
            {"user": user, "cursor": cursor, "limit": limit},
        )
        events = tuple(
            EventRecord(
                user=user,
                user_seq=row["e_seq"],
                kind=EventKind(row["e_kind"]),
                conversation=row["e_conversation"],
                msg_id=row["e_msg_id"],
                actor=row["e_actor"],
                created_at=row["e_at"],
                message=None if row["msg_id"] is None else message_from_row(row, reveal=False),
            )
            for row in rows
        )
    return EventPage(
        events=events, next_cursor=events[-1].user_seq if events else cursor, head=head
    )


def pending_count(db: Database, user: str, cursor: int) -> int:
    return max(0, event_head(db, user) - cursor)
