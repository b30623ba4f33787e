"""Child process for test_store_processes.py: opens the store, prints
``ready``, waits for a line on standard input, then appends COUNT messages
to the conversation of alice and bob as SENDER's DEVICE, BURST at a time,
and prints ``done`` (flushed).

Usage: python append_child.py DB_PATH SENDER DEVICE COUNT BURST
"""

from __future__ import annotations

import sys

import trio

from elink_server.storage import MessageKind, open_sqlite_store

T0 = 1_700_000_000.0


async def main(path: str, sender: str, device: str, count: int, burst: int) -> None:
    async with open_sqlite_store(path) as store:
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)

        async def append(i: int) -> None:
            await store.append_message(
                conversation="d:alice:bob",
                sender=sender,
                sender_device=device,
                client_msg_id=f"{device}-{i}",
                kind=MessageKind.TEXT,
                content={"text": f"{sender}/{device} {i}"},
                now=T0,
            )

        for start in range(0, count, burst):
            async with trio.open_nursery() as nursery:
                for i in range(start, min(count, start + burst)):
                    nursery.start_soon(append, i)
    print("done", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
