"""The storage interface the server is written against, and the values it returns.

:class:`Store` is a :class:`typing.Protocol`: the embedded SQLite store
(:mod:`elink_server.storage.sqlite`) implements it today; a clustered engine
(Redis, PostgreSQL) can implement it later without touching the services.
Everything a store returns is a frozen, slotted, keyword-only record, so a
value handed to one session can never be changed under another.

Conventions shared by every implementation:

* Times are ``float`` seconds on the server's clock, passed in as ``now``:
  the store never reads a clock, so tests are deterministic.
* Every mutating call returns only after its effect is durable (committed to
  stable storage).  A caller that is cancelled while waiting may or may not see
  its write applied; the idempotency key of :meth:`Store.append_message`
  (``sender``, ``client_msg_id``) makes the retry safe.
* Failures raise a subclass of :class:`StorageError`; a failed call has no
  effect.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

#: Longest user name, device id, client message id or group id, in characters.
MAX_NAME_LENGTH = 64
#: Longest client message id, in characters.
MAX_CLIENT_MSG_ID_LENGTH = 128
#: Lower bound of the per-user offline cap (REQUIREMENTS: at least 1,000 kept).
MIN_OFFLINE_CAP = 1000
#: The syntax of a message kind (docs/protocol.md §11.4.1): a lowercase ASCII
#: letter followed by at most 31 of ``a-z 0-9 _ . -``.
_MESSAGE_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,31}")


# --- errors ------------------------------------------------------------------


class StorageError(Exception):
    """Base of every error a store raises on purpose."""


class InvalidArgument(StorageError, ValueError):
    """An argument is malformed (bad name, negative cursor, empty query...)."""


class NotFound(StorageError):
    """Base of the "no such thing" errors."""


class UnknownUser(NotFound):
    """The named user does not exist."""


class UnknownDevice(NotFound):
    """The user has no device with that id."""


class UnknownConversation(NotFound):
    """The conversation does not exist (group conversations are never created
    implicitly)."""


class UnknownMessage(NotFound):
    """No message has that ``msg_id``."""


class UserExists(StorageError):
    """:meth:`Store.create_user` was given a name already taken."""


class PermissionDenied(StorageError):
    """The acting user may not do this (not a member, not the sender, not a
    recipient...)."""


class RecallWindowExpired(PermissionDenied):
    """The sender tried to recall a message after the recall window closed."""


class WriteFailed(StorageError):
    """The transaction holding this write could not be committed (I/O error,
    full disk, database locked by another process); nothing was written.
    ``__cause__`` is the underlying error.  Retrying may succeed."""


class ReadFailed(StorageError):
    """A read could not be carried out (I/O error, corrupt or locked database);
    nothing was changed.  ``__cause__`` is the underlying error.  Retrying may
    succeed."""


class StoreClosed(StorageError):
    """The store was closed (or its writer failed) before the call completed."""


# --- enums -------------------------------------------------------------------


class DeviceKind(enum.StrEnum):
    """What kind of terminal a device is; stored as its value."""

    PC = "pc"
    MOBILE = "mobile"
    WEB = "web"
    BOT = "bot"


class ConversationKind(enum.StrEnum):
    """Conversation kinds.  The id prefix names the kind: ``d:`` direct,
    ``g:`` group."""

    DIRECT = "direct"
    GROUP = "group"


class MessageKind(enum.StrEnum):
    """The kinds docs/protocol.md §11.4.1 names.  The set is open: the store
    keeps any kind of valid syntax (see :func:`check_message_kind`), so that a
    kind this server does not know is stored and relayed unchanged.  A known
    kind comes back as its member here (a ``str`` equal to the kind)."""

    TEXT = "text"
    EMOJI = "emoji"
    IMAGE = "image"
    VOICE = "voice"
    VIDEO = "video"
    FILE = "file"
    FOLDER = "folder"
    CARD = "card"
    LINK = "link"
    SYSTEM = "system"


class MessageFlags(enum.IntFlag):
    """Per-message flags.  Reserved for features built later; the store
    already honours ``SECRET`` by never indexing the text for search."""

    NONE = 0
    SECRET = 1
    SIGN_RECEIPT = 2


class EventKind(enum.StrEnum):
    """Entries of a user's event log (multi-device pull sync)."""

    MESSAGE = "message"
    """A message was appended to one of the user's conversations."""
    RECALL = "recall"
    """A message in one of the user's conversations was recalled."""
    READ = "read"
    """A message was read: by the user (on some device) or by its recipient."""


class MessageState(enum.StrEnum):
    """Summary state of a message, for the sender and for integrations."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"


# --- records -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class UserRecord:
    """An account."""

    name: str
    """The unique user name (see :func:`check_name`)."""
    password_hash: str
    """Self-describing password hash (:mod:`elink_server.accounts`)."""
    disabled: bool
    """A disabled account keeps its data but may not log in."""
    created_at: float
    """When the account was created."""


@attrs.frozen(kw_only=True)
class DeviceRecord:
    """One terminal of a user."""

    user: str
    """The owning user."""
    device_id: str
    """The client-chosen id, unique per user."""
    kind: DeviceKind
    """PC, mobile, web or bot."""
    created_at: float
    """When the device first registered."""
    last_seen: float
    """The last time :meth:`Store.register_device` was called for it."""
    cursor: int
    """The highest ``user_seq`` of the user's event log this device has
    confirmed pulling (0: nothing).  Never moves backwards."""


@attrs.frozen(kw_only=True)
class ConversationRecord:
    """A conversation and its members."""

    id: str
    """``d:<a>:<b>`` (sorted names) for a direct conversation, ``g:<id>`` for
    a group."""
    kind: ConversationKind
    """Direct or group."""
    members: tuple[str, ...]
    """Member names, sorted.  A direct conversation with oneself (the file
    assistant) has one member."""
    last_seq: int
    """The ``seq`` of the newest message (0: no messages yet)."""
    created_at: float
    """When the conversation was created."""


@attrs.frozen(kw_only=True)
class MessageRecord:
    """A message as stored.  Records handed to users hide recalled content."""

    msg_id: int
    """Server-assigned id, unique across the store and never reused."""
    conversation: str
    """The conversation id."""
    seq: int
    """Position in the conversation: 1, 2, 3... with no gaps and no repeats."""
    sender: str
    """The sending user."""
    sender_device: str
    """The device it was sent from."""
    client_msg_id: str
    """The sender's idempotency key; unique per sender."""
    kind: str
    """What the message carries: any kind of valid syntax, as sent; a known
    kind is its :class:`MessageKind` member."""
    content: dict[str, Any] | None
    """Kind-specific fields (``{"text": ...}`` for text).  ``None`` when the
    message was recalled and this record is a user's view (see
    :meth:`Store.audit_message`).  Treat as read-only."""
    created_at: float
    """When the server accepted it."""
    recalled_at: float | None
    """When the sender recalled it, or ``None``."""
    flags: MessageFlags
    """Reserved feature flags."""

    @property
    def recalled(self) -> bool:
        return self.recalled_at is not None


@attrs.frozen(kw_only=True)
class EventRef:
    """Names one new entry of a user's event log, so the server can tell that
    user's online devices there is something to pull."""

    user: str
    """Whose log."""
    user_seq: int
    """The entry's position in that log."""


@attrs.frozen(kw_only=True)
class AppendResult:
    """What :meth:`Store.append_message` did."""

    message: MessageRecord
    """The stored message (for a duplicate: the original one)."""
    duplicate: bool
    """The ``(sender, client_msg_id)`` pair was already stored: nothing new was
    created and ``message`` is the original."""
    events: tuple[EventRef, ...]
    """Event-log entries created, one per member (empty for a duplicate)."""
    backlog_full: tuple[str, ...]
    """Recipients whose unpulled backlog now exceeds the offline cap.  The
    message is stored and in their log anyway; the server should tell the
    sender.  Never contains the sender."""

    @property
    def recipient_backlog_full(self) -> bool:
        return bool(self.backlog_full)


@attrs.frozen(kw_only=True)
class RecallResult:
    """What :meth:`Store.recall` did."""

    message: MessageRecord
    """The recalled message, as users now see it (no content)."""
    duplicate: bool
    """It had already been recalled; nothing new was recorded."""
    events: tuple[EventRef, ...]
    """Event-log entries created (empty for a duplicate)."""


@attrs.frozen(kw_only=True)
class ReceiptResult:
    """What :meth:`Store.mark_delivered` or :meth:`Store.mark_read` did."""

    recorded: bool
    """``False`` if this receipt was already stored (the call was a no-op)."""
    events: tuple[EventRef, ...]
    """Event-log entries created (read receipts only)."""


@attrs.frozen(kw_only=True)
class EventRecord:
    """One entry of a user's event log."""

    user: str
    """Whose log."""
    user_seq: int
    """Position in the log: 1, 2, 3... gap-free per user."""
    kind: EventKind
    """What happened."""
    conversation: str
    """The conversation concerned."""
    msg_id: int
    """The message concerned."""
    actor: str
    """Who caused it: the sender, the recaller or the reader."""
    created_at: float
    """When it happened."""
    message: MessageRecord | None
    """For MESSAGE and RECALL entries, the message as users now see it (a
    later recall hides the content of an earlier MESSAGE entry too); ``None``
    for READ entries."""


@attrs.frozen(kw_only=True)
class EventPage:
    """A page of :meth:`Store.events_since`."""

    events: tuple[EventRecord, ...]
    """Entries with ``user_seq > cursor``, ascending, at most ``limit``."""
    next_cursor: int
    """Pass this as the next ``cursor``; store it with
    :meth:`Store.set_device_cursor` once the page is applied."""
    head: int
    """The newest ``user_seq`` of the log when the page was read."""

    @property
    def more(self) -> bool:
        return self.next_cursor < self.head


@attrs.frozen(kw_only=True)
class DeviceReceipt:
    """A delivery to one device."""

    user: str
    """The recipient."""
    device_id: str
    """The device that received the message."""
    at: float
    """When it was delivered."""


@attrs.frozen(kw_only=True)
class ReadReceipt:
    """A user read a message (on any device)."""

    user: str
    """The reader."""
    at: float
    """When it was first read."""


@attrs.frozen(kw_only=True)
class MessageStatus:
    """Answer of :meth:`Store.message_status`."""

    msg_id: int
    """The message."""
    state: MessageState
    """READ if any recipient read it, else DELIVERED if any recipient device
    received it, else SENT."""
    delivered: tuple[DeviceReceipt, ...]
    """Deliveries, ordered by time."""
    read: tuple[ReadReceipt, ...]
    """Read receipts, ordered by time."""


@attrs.frozen(kw_only=True)
class StoreStatistics:
    """A snapshot of the write path, for monitoring and benchmarks."""

    batches: int
    """Transactions committed (or attempted) by the writer."""
    requests: int
    """Write requests completed, successfully or not."""
    failed: int
    """Write requests that raised."""
    largest_batch: int
    """Most requests seen in one transaction."""
    queued: int
    """Write requests waiting for the writer right now."""


# --- names and ids -----------------------------------------------------------


def check_name(value: object, what: str = "user name", *, max_length: int = MAX_NAME_LENGTH) -> str:
    """Return ``value`` if it is a valid user name / device id / group id.

    Valid: a non-empty ``str`` of at most ``max_length`` printable characters,
    none of them whitespace or ``:`` (which separates the parts of a
    conversation id).  Any script is allowed (``张伟`` is a fine name).
    """
    if (
        type(value) is not str
        or not 0 < len(value) <= max_length
        or not value.isprintable()
        or ":" in value
        or any(c.isspace() for c in value)
    ):
        raise InvalidArgument(f"invalid {what}: {value!r}")
    return value


def message_kind(value: str) -> str:
    """``value`` as the :class:`MessageKind` member it names, or unchanged if
    it is a kind this revision does not name."""
    try:
        return MessageKind(value)
    except ValueError:
        return value


def check_message_kind(value: object) -> str:
    """Return ``value`` (see :func:`message_kind`) if it is a message kind of
    valid syntax (§11.4.1), known or not; else raise :class:`InvalidArgument`."""
    if not isinstance(value, str) or not _MESSAGE_KIND.fullmatch(value):
        raise InvalidArgument(f"invalid message kind: {value!r}")
    return message_kind(value)


def direct_conversation_id(a: str, b: str) -> str:
    """The id of the direct conversation between ``a`` and ``b`` (in either
    order; ``a == b`` is the user's file assistant)."""
    first, second = sorted((check_name(a), check_name(b)))
    return f"d:{first}:{second}"


def group_conversation_id(group_id: str) -> str:
    """The id of a group conversation (groups are created by a later API)."""
    return f"g:{check_name(group_id, 'group id')}"


def parse_conversation_id(conversation: object) -> tuple[ConversationKind, tuple[str, ...]]:
    """Split a conversation id into its kind and, for a direct conversation, its
    sorted member names (one name for a self conversation).  Raises
    :class:`InvalidArgument` for anything malformed, including unsorted direct
    ids, so each pair of users has exactly one direct conversation."""
    if type(conversation) is not str:
        raise InvalidArgument(f"invalid conversation id: {conversation!r}")
    prefix, _, rest = conversation.partition(":")
    if prefix == "g":
        check_name(rest, "group id")
        return ConversationKind.GROUP, ()
    if prefix == "d":
        a, sep, b = rest.partition(":")
        if sep and check_name(a) <= check_name(b):
            return ConversationKind.DIRECT, (a,) if a == b else (a, b)
    raise InvalidArgument(f"invalid conversation id: {conversation!r}")


# --- the interface -----------------------------------------------------------


class Store(Protocol):
    """Durable state of one e-Link server.  All methods are Trio-async."""

    # users, devices, follows

    async def create_user(self, name: str, *, password_hash: str, now: float) -> UserRecord:
        """Create an account; :class:`UserExists` if the name is taken."""
        ...

    async def get_user(self, name: str) -> UserRecord | None:
        """The account, or ``None``."""
        ...

    async def set_user_disabled(self, name: str, disabled: bool) -> None:
        """Disable or re-enable an account."""
        ...

    async def set_password_hash(self, name: str, password_hash: str) -> None:
        """Replace the stored password hash."""
        ...

    async def register_device(
        self, user: str, device_id: str, *, kind: DeviceKind, now: float
    ) -> DeviceRecord:
        """Create the device (cursor 0) or update its kind and ``last_seen``."""
        ...

    async def list_devices(self, user: str) -> tuple[DeviceRecord, ...]:
        """The user's devices, by device id."""
        ...

    async def set_device_cursor(self, user: str, device_id: str, cursor: int) -> int:
        """Record that the device pulled the log up to ``cursor``; returns the
        stored cursor, which never moves backwards.  ``cursor`` above the log
        head is :class:`InvalidArgument`."""
        ...

    async def follow(self, follower: str, followee: str, *, now: float) -> bool:
        """``follower`` wants presence notices about ``followee``; ``False`` if
        already following."""
        ...

    async def unfollow(self, follower: str, followee: str) -> bool:
        """Stop following; ``False`` if not following."""
        ...

    async def followers(self, user: str) -> tuple[str, ...]:
        """Who follows ``user`` (to notify when ``user`` comes online)."""
        ...

    async def following(self, user: str) -> tuple[str, ...]:
        """Whom ``user`` follows."""
        ...

    # conversations and messages

    async def get_conversation(self, conversation: str) -> ConversationRecord | None:
        """The conversation, or ``None`` (a direct one exists after its first
        message)."""
        ...

    async def list_conversations(self, user: str) -> tuple[ConversationRecord, ...]:
        """The conversations ``user`` is a member of, by id."""
        ...

    async def append_message(
        self,
        *,
        conversation: str,
        sender: str,
        sender_device: str,
        client_msg_id: str,
        kind: str,
        content: Mapping[str, Any],
        now: float,
        flags: MessageFlags = MessageFlags.NONE,
    ) -> AppendResult:
        """Store a message durably, idempotently per ``(sender,
        client_msg_id)``, and add it to every member's event log.  ``kind``
        may be any kind of valid syntax (:func:`check_message_kind`); only
        ``content["text"]`` is indexed for search, whatever the kind."""
        ...

    async def recall(
        self, msg_id: int, *, by_user: str, now: float, window_seconds: float
    ) -> RecallResult:
        """Recall a message: only its sender, only within the window."""
        ...

    async def get_message(self, msg_id: int) -> MessageRecord | None:
        """A message as users see it (no content if recalled)."""
        ...

    async def audit_message(self, msg_id: int) -> MessageRecord | None:
        """A message with its content even if recalled.  For auditors only."""
        ...

    async def history(
        self, conversation: str, *, before_seq: int | None = None, limit: int = 50
    ) -> tuple[MessageRecord, ...]:
        """Messages newest first: those with ``seq < before_seq`` (all when
        ``None``), at most ``limit``.  Recalled content hidden."""
        ...

    async def search(
        self, user: str, query: str, *, limit: int = 50, conversation: str | None = None
    ) -> tuple[MessageRecord, ...]:
        """Messages whose text contains ``query`` as a substring (case-folded
        for ASCII), in the user's conversations, newest first.  Recalled and
        secret messages are never found."""
        ...

    # receipts

    async def mark_delivered(
        self, msg_id: int, *, user: str, device_id: str, now: float
    ) -> ReceiptResult:
        """Record delivery of a message to one device of a recipient."""
        ...

    async def mark_read(self, msg_id: int, *, user: str, now: float) -> ReceiptResult:
        """Record that a recipient read a message."""
        ...

    async def message_status(self, msg_id: int) -> MessageStatus:
        """Sent / delivered to which devices / read by whom."""
        ...

    # multi-device sync

    async def events_since(self, user: str, cursor: int, *, limit: int = 100) -> EventPage:
        """A page of the user's event log after ``cursor``."""
        ...

    async def pending_count(self, user: str, cursor: int) -> int:
        """How many log entries follow ``cursor`` (what a device has to pull)."""
        ...

    def statistics(self) -> StoreStatistics:
        """A snapshot of the write path."""
        ...
