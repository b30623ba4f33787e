"""The SQLite schema, and opening a database file with the right settings.

The DDL below is the reference for docs/architecture.md.  ``PRAGMA
user_version`` holds :data:`SCHEMA_VERSION`; a database written by a newer
server is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_utils import Database

from .base import StorageError

SCHEMA_VERSION = 1

# Names are TEXT primary keys in WITHOUT ROWID tables: lookups by name are the
# common case and the clustered key saves a second index.
SCHEMA = """
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    -- newest user_seq of this user's event log (0: empty).  Kept here so
    -- assigning the next one and computing the backlog cost one row update.
    event_head    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE devices (
    user       TEXT NOT NULL REFERENCES users(name),
    device_id  TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('pc', 'mobile', 'web', 'bot')),
    created_at REAL NOT NULL,
    last_seen  REAL NOT NULL,
    cursor     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, device_id)
) WITHOUT ROWID;

CREATE TABLE follows (
    follower   TEXT NOT NULL REFERENCES users(name),
    followee   TEXT NOT NULL REFERENCES users(name),
    created_at REAL NOT NULL,
    PRIMARY KEY (follower, followee)
) WITHOUT ROWID;
CREATE INDEX follows_by_followee ON follows (followee, follower);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    -- seq the next message gets; read and bumped inside the append transaction
    next_seq   INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
) WITHOUT ROWID;

-- Direct conversations have their one or two users here too, so search and
-- (later) groups of 5,000 members use the same membership join.
CREATE TABLE conversation_members (
    conversation TEXT NOT NULL REFERENCES conversations(id),
    user         TEXT NOT NULL REFERENCES users(name),
    role         TEXT NOT NULL DEFAULT 'member',
    joined_at    REAL NOT NULL,
    PRIMARY KEY (conversation, user)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON conversation_members (user, conversation);

-- AUTOINCREMENT: msg_id is never reused, even after rows are deleted (secret
-- chat will delete them), so a stale id can never name a newer message.
CREATE TABLE messages (
    msg_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation  TEXT NOT NULL REFERENCES conversations(id),
    seq           INTEGER NOT NULL,
    sender        TEXT NOT NULL REFERENCES users(name),
    sender_device TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    kind          TEXT NOT NULL,
    content       BLOB NOT NULL,    -- msgpack map
    text          TEXT,             -- searchable text; NULL: not indexed
    created_at    REAL NOT NULL,
    recalled_at   REAL,
    flags         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (conversation, seq),
    UNIQUE (sender, client_msg_id)
);

-- External-content FTS5 index over messages.text.  The trigram tokenizer
-- matches any substring of >= 3 characters, which is what Chinese (no spaces
-- between words) needs; shorter queries use LIKE on messages.text.
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    text, content = 'messages', content_rowid = 'msg_id', tokenize = 'trigram'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
WHEN new.text IS NOT NULL BEGIN
    INSERT INTO messages_fts (rowid, text) VALUES (new.msg_id, new.text);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
WHEN old.text IS NOT NULL BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.msg_id, old.text);
END;

-- Per-user event log for multi-device pull sync: user_seq is 1, 2, 3...
-- with no gaps, so "how many are waiting" is a subtraction.
CREATE TABLE user_events (
    user         TEXT NOT NULL REFERENCES users(name),
    user_seq     INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('message', 'recall', 'read')),
    conversation TEXT NOT NULL,
    msg_id       INTEGER NOT NULL REFERENCES messages(msg_id),
    actor        TEXT NOT NULL,
    created_at   REAL NOT NULL,
    PRIMARY KEY (user, user_seq)
) WITHOUT ROWID;

-- kind 'delivered' is per device; kind 'read' is per user (device_id '').
CREATE TABLE receipts (
    msg_id    INTEGER NOT NULL REFERENCES messages(msg_id),
    kind      TEXT NOT NULL CHECK (kind IN ('delivered', 'read')),
    user      TEXT NOT NULL REFERENCES users(name),
    device_id TEXT NOT NULL,
    at        REAL NOT NULL,
    PRIMARY KEY (msg_id, kind, user, device_id)
) WITHOUT ROWID;
"""


class SchemaError(StorageError):
    """The database file has a schema this code does not understand."""


def _connect(path: Path) -> Database:
    # check_same_thread=False: Trio's worker threads are pooled, so one
    # connection is used from several threads -- never two at once, which the
    # store's capacity limiters guarantee.  isolation_level=None: the store
    # issues BEGIN / SAVEPOINT / COMMIT itself instead of the driver guessing.
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    return Database(conn, execute_plugins=False)


def open_writer(path: Path) -> Database:
    """Open (creating if needed) the database for the single writer.

    WAL lets readers run while the writer commits.  ``synchronous = FULL``:
    in WAL mode ``NORMAL`` skips the fsync at commit and only syncs at
    checkpoints, so a power cut could lose transactions whose callers were
    already told "stored"; FULL fsyncs the WAL at every commit, and group
    commit pays for that once per batch.
    """
    db = _connect(path)
    try:
        db.enable_wal()
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        _ensure_schema(db)
    except BaseException:
        db.close()
        raise
    return db


def open_reader(path: Path) -> Database:
    """Open a read-only connection (the writer must have created the file)."""
    db = _connect(path)
    db.execute("PRAGMA query_only = ON")
    return db


def _ensure_schema(db: Database) -> None:
    if _schema_present(db):
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process (a worker of the same node) may have created it
        # while we waited for the write lock.
        if _schema_present(db):
            db.conn.execute("COMMIT")
            return
        # executescript() would COMMIT first; run statement by statement so the
        # whole schema and its version appear atomically.
        for statement in _split_statements(SCHEMA):
            db.conn.execute(statement)
        db.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.conn.execute("COMMIT")
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise


def _schema_present(db: Database) -> bool:
    """True for our schema, False for an empty database; raises
    :class:`SchemaError` for anything else."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return True
    if version != 0:
        raise SchemaError(
            f"database schema version {version} is not {SCHEMA_VERSION} (written by another"
            " version of the server?)"
        )
    if db.table_names():
        raise SchemaError("database has tables but no e-Link schema version: not ours")
    return False


def _split_statements(script: str) -> list[str]:
    """Split the DDL into statements, keeping trigger bodies whole."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
