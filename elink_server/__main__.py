"""``elink-server`` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"], []):
        print("usage: elink-server serve [--host HOST] [--port PORT] [--data-dir DIR]")
        return 0
    print(
        "elink-server: the network server is not built yet (the protocol library,\n"
        "storage, accounts and settings exist; the Trio host is the next issue).",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    sys.exit(main())
