"""Synchronous write operations of the SQLite store.

Each public method of :class:`Writer` is one group-commit request: it runs in
the writer thread, inside the batch transaction and its own savepoint
(:mod:`.group_commit`), so it either takes full effect or none.  Arguments
were validated by the async facade; what is checked here is what depends on
the database state (existence, membership, the sender, the clock window).

Because a single writer runs requests one after another, "read a counter, then
bump it" cannot race: that is how message ``seq`` and event-log ``user_seq``
values come out gap-free and unique.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgpack
from sqlite_utils import Database

from . import sqlite_read as read
from .base import (
    AppendResult,
    ConversationKind,
    DeviceKind,
    DeviceRecord,
    EventKind,
    EventRef,
    InvalidArgument,
    MessageFlags,
    MessageRecord,
    PermissionDenied,
    RecallResult,
    RecallWindowExpired,
    ReceiptResult,
    UnknownConversation,
    UnknownDevice,
    UnknownMessage,
    UnknownUser,
    UserExists,
    UserRecord,
    parse_conversation_id,
)


def _returning(cursor: sqlite3.Cursor) -> Any:
    # Fetch every row so the statement finishes now; an unfinished statement
    # would make the following RELEASE of the request's savepoint fail.
    rows = cursor.fetchall()
    return rows[0][0] if rows else None


class Writer:
    """The write operations, bound to the writer connection."""

    def __init__(self, db: Database, *, offline_cap: int) -> None:
        self._db = db
        self._offline_cap = offline_cap

    # --- users, devices, follows ---------------------------------------------

    def create_user(self, name: str, password_hash: str, now: float) -> UserRecord:
        if read.get_user(self._db, name) is not None:
            raise UserExists(f"user {name!r} already exists")
        self._db.execute(
            "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)",
            (name, password_hash, now),
        )
        return UserRecord(name=name, password_hash=password_hash, disabled=False, created_at=now)

    def _update_user(self, name: str, sql: str, value: object) -> None:
        if self._db.execute(sql, (value, name)).rowcount == 0:
            raise UnknownUser(f"no user {name!r}")

    def set_user_disabled(self, name: str, disabled: bool) -> None:
        self._update_user(name, "UPDATE users SET disabled = ? WHERE name = ?", int(disabled))

    def set_password_hash(self, name: str, password_hash: str) -> None:
        self._update_user(name, "UPDATE users SET password_hash = ? WHERE name = ?", password_hash)

    def register_device(
        self, user: str, device_id: str, kind: DeviceKind, now: float
    ) -> DeviceRecord:
        read.event_head(self._db, user)  # raises UnknownUser
        self._db.execute(
            "INSERT INTO devices (user, device_id, kind, created_at, last_seen)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user, device_id)"
            " DO UPDATE SET kind = excluded.kind, last_seen = excluded.last_seen",
            (user, device_id, kind.value, now, now),
        )
        row = read.query_one(
            self._db,
            "SELECT * FROM devices WHERE user = :user AND device_id = :device",
            {"user": user, "device": device_id},
        )
        assert row is not None
        return read.device_from_row(row)

    def set_device_cursor(self, user: str, device_id: str, cursor: int) -> int:
        head = read.event_head(self._db, user)
        if cursor > head:
            raise InvalidArgument(f"cursor {cursor} is beyond {user!r}'s log head {head}")
        stored = _returning(
            self._db.execute(
                "UPDATE devices SET cursor = max(cursor, ?) WHERE user = ? AND device_id = ?"
                " RETURNING cursor",
                (cursor, user, device_id),
            )
        )
        if stored is None:
            raise UnknownDevice(f"user {user!r} has no device {device_id!r}")
        return int(stored)

    def _require_users(self, *names: str) -> None:
        for name in names:
            read.event_head(self._db, name)

    def follow(self, follower: str, followee: str, now: float) -> bool:
        self._require_users(follower, followee)
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO follows (follower, followee, created_at) VALUES (?, ?, ?)",
            (follower, followee, now),
        )
        return cursor.rowcount == 1

    def unfollow(self, follower: str, followee: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM follows WHERE follower = ? AND followee = ?", (follower, followee)
        )
        return cursor.rowcount == 1

    # --- the event log ---------------------------------------------------------

    def _add_event(
        self, user: str, kind: EventKind, *, conversation: str, msg_id: int, actor: str, now: float
    ) -> EventRef:
        user_seq = _returning(
            self._db.execute(
                "UPDATE users SET event_head = event_head + 1 WHERE name = ? RETURNING event_head",
                (user,),
            )
        )
        self._db.execute(
            "INSERT INTO user_events"
            " (user, user_seq, kind, conversation, msg_id, actor, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user, user_seq, kind.value, conversation, msg_id, actor, now),
        )
        return EventRef(user=user, user_seq=user_seq)

    def _backlog(self, user: str, head: int) -> int:
        """Entries no device of ``user`` has pulled yet (see the offline cap)."""
        pulled = self._db.execute(
            "SELECT coalesce(max(cursor), 0) FROM devices WHERE user = ?", (user,)
        ).fetchone()[0]
        return head - int(pulled)

    # --- messages --------------------------------------------------------------

    def _open_conversation(self, conversation: str, now: float) -> tuple[int, tuple[str, ...]]:
        """Return (next seq, members), creating a direct conversation on first
        use.  Group conversations must already exist."""
        row = self._db.execute(
            "SELECT next_seq FROM conversations WHERE id = ?", (conversation,)
        ).fetchone()
        if row is not None:
            return row[0], read.members(self._db, conversation)
        kind, names = parse_conversation_id(conversation)
        if kind is not ConversationKind.DIRECT:
            raise UnknownConversation(f"no conversation {conversation!r}")
        self._require_users(*names)
        self._db.execute(
            "INSERT INTO conversations (id, kind, created_at) VALUES (?, ?, ?)",
            (conversation, kind.value, now),
        )
        for name in names:
            self._db.execute(
                "INSERT INTO conversation_members (conversation, user, joined_at) VALUES (?, ?, ?)",
                (conversation, name, now),
            )
        return 1, names

    def append_message(
        self,
        *,
        conversation: str,
        sender: str,
        sender_device: str,
        client_msg_id: str,
        kind: str,
        content: bytes,
        text: str | None,
        now: float,
        flags: MessageFlags,
    ) -> AppendResult:
        original = read.query_one(
            self._db,
            f"SELECT {read.MESSAGE_COLUMNS} FROM messages"
            " WHERE sender = :sender AND client_msg_id = :client_msg_id",
            {"sender": sender, "client_msg_id": client_msg_id},
        )
        if original is not None:
            # Idempotent retry: hand back what the first attempt stored.
            return AppendResult(
                message=read.message_from_row(original, reveal=False),
                duplicate=True,
                events=(),
                backlog_full=(),
            )
        if (
            self._db.execute(
                "SELECT 1 FROM devices WHERE user = ? AND device_id = ?", (sender, sender_device)
            ).fetchone()
            is None
        ):
            read.event_head(self._db, sender)  # UnknownUser first, if that is the problem
            raise UnknownDevice(f"user {sender!r} has no device {sender_device!r}")
        seq, members = self._open_conversation(conversation, now)
        if sender not in members:
            raise PermissionDenied(f"{sender!r} is not a member of {conversation!r}")
        self._db.execute(
            "UPDATE conversations SET next_seq = ? WHERE id = ?", (seq + 1, conversation)
        )
        msg_id = _returning(
            self._db.execute(
                "INSERT INTO messages (conversation, seq, sender, sender_device, client_msg_id,"
                " kind, content, text, created_at, flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING msg_id",
                (
                    conversation,
                    seq,
                    sender,
                    sender_device,
                    client_msg_id,
                    str(kind),  # a MessageKind member stores as its plain value
                    content,
                    text,
                    now,
                    int(flags),
                ),
            )
        )
        events = []
        full = []
        for member in members:
            ref = self._add_event(
                member,
                EventKind.MESSAGE,
                conversation=conversation,
                msg_id=msg_id,
                actor=sender,
                now=now,
            )
            events.append(ref)
            if member != sender and self._backlog(member, ref.user_seq) > self._offline_cap:
                full.append(member)
        message = MessageRecord(
            msg_id=msg_id,
            conversation=conversation,
            seq=seq,
            sender=sender,
            sender_device=sender_device,
            client_msg_id=client_msg_id,
            kind=kind,
            content=msgpack.unpackb(content),  # a private copy for the caller
            created_at=now,
            recalled_at=None,
            flags=flags,
        )
        return AppendResult(
            message=message, duplicate=False, events=tuple(events), backlog_full=tuple(full)
        )

    def recall(self, msg_id: int, by_user: str, now: float, window_seconds: float) -> RecallResult:
        message = read.get_message(self._db, msg_id, reveal=False)
        if message is None:
            raise UnknownMessage(f"no message {msg_id}")
        if message.sender != by_user:
            raise PermissionDenied(f"only the sender may recall message {msg_id}")
        if message.recalled:
            return RecallResult(message=message, duplicate=True, events=())
        if now - message.created_at > window_seconds:
            raise RecallWindowExpired(
                f"message {msg_id} is {now - message.created_at:.0f} s old; the recall window"
                f" is {window_seconds:g} s"
            )
        self._db.execute("UPDATE messages SET recalled_at = ? WHERE msg_id = ?", (now, msg_id))
        events = tuple(
            self._add_event(
                member,
                EventKind.RECALL,
                conversation=message.conversation,
                msg_id=msg_id,
                actor=by_user,
                now=now,
            )
            for member in read.members(self._db, message.conversation)
        )
        recalled = read.get_message(self._db, msg_id, reveal=False)
        assert recalled is not None
        return RecallResult(message=recalled, duplicate=False, events=events)

    # --- receipts ----------------------------------------------------------------

    def _check_recipient(self, msg_id: int, user: str) -> tuple[str, str]:
        """Return (sender, conversation) if ``user`` may send receipts for the
        message: a member other than the sender, or the sender itself in a
        conversation with oneself (the file assistant)."""
        row = self._db.execute(
            "SELECT sender, conversation FROM messages WHERE msg_id = ?", (msg_id,)
        ).fetchone()
        if row is None:
            raise UnknownMessage(f"no message {msg_id}")
        sender, conversation = row
        members = read.members(self._db, conversation)
        if user not in members or (user == sender and members != (sender,)):
            raise PermissionDenied(f"{user!r} is not a recipient of message {msg_id}")
        return sender, conversation

    def _insert_receipt(self, msg_id: int, kind: str, user: str, device_id: str, at: float) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO receipts (msg_id, kind, user, device_id, at)"
            " VALUES (?, ?, ?, ?, ?)",
            (msg_id, kind, user, device_id, at),
        )
        return cursor.rowcount == 1

    def mark_delivered(self, msg_id: int, user: str, device_id: str, now: float) -> ReceiptResult:
        self._check_recipient(msg_id, user)
        if (
            self._db.execute(
                "SELECT 1 FROM devices WHERE user = ? AND device_id = ?", (user, device_id)
            ).fetchone()
            is None
        ):
            raise UnknownDevice(f"user {user!r} has no device {device_id!r}")
        return ReceiptResult(
            recorded=self._insert_receipt(msg_id, "delivered", user, device_id, now), events=()
        )

    def mark_read(self, msg_id: int, user: str, now: float) -> ReceiptResult:
        sender, conversation = self._check_recipient(msg_id, user)
        if not self._insert_receipt(msg_id, "read", user, "", now):
            return ReceiptResult(recorded=False, events=())
        # The reader's other devices clear the unread mark; the sender's
        # devices show "read".  dict.fromkeys: once when reading one's own note.
        events = tuple(
            self._add_event(
                who, EventKind.READ, conversation=conversation, msg_id=msg_id, actor=user, now=now
            )
            for who in dict.fromkeys((user, sender))
        )
        return ReceiptResult(recorded=True, events=events)
