"""Child process for test_storage_crash.py: appends messages in concurrent
bursts forever, printing ``ok <client_msg_id> <msg_id>`` (flushed) each time
an append's await returns.  The parent SIGKILLs it mid-burst.

Each client_msg_id is sent twice at once, so idempotency is under test too.

Usage: python crash_child.py DB_PATH
"""

from __future__ import annotations

import sys

import trio

from elink_server.storage import DeviceKind, MessageKind, open_sqlite_store

T0 = 1_700_000_000.0
BURST = 40


async def main(path: str) -> None:
    async with open_sqlite_store(path) as store:
        for name in ("alice", "bob"):
            await store.create_user(name, password_hash="h", now=T0)
            await store.register_device(name, "pc", kind=DeviceKind.PC, now=T0)
        print("ready", flush=True)

        async def append(client_msg_id: str) -> None:
            result = await store.append_message(
                conversation="d:alice:bob",
                sender="alice",
                sender_device="pc",
                client_msg_id=client_msg_id,
                kind=MessageKind.TEXT,
                content={"text": f"message {client_msg_id}"},
                now=T0,
            )
            print(f"ok {client_msg_id} {result.message.msg_id}", flush=True)

        burst = 0
        while True:
            async with trio.open_nursery() as nursery:
                for i in range(BURST):
                    for _ in range(2):
                        nursery.start_soon(append, f"b{burst}-{i}")
            burst += 1


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
