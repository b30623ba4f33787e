"""Send one e-Link notification and exit: for cron jobs and shell scripts.

::

    export ELINK_PASSWORD=...                      # the sending account's password
    export ELINK_SERVER_FINGERPRINT=SHA256:...     # printed by `elink-server serve`
    python examples/notify_from_cron.py --host 127.0.0.1 --user backups --to ops \\
        --deadline 30 "nightly backup finished"
    df -h | python examples/notify_from_cron.py --user backups --to ops -   # text from stdin

It uses the blocking client (:mod:`elink_sdk.blocking`): no async code.
Everything (connecting, logging in, sending, and with ``--wait-delivered``
the delivery receipt) must finish within ``--deadline`` seconds.

Exit status, for the script that runs it:

* 0: the server stored the message (and, with ``--wait-delivered``, a
  device of the recipient has it);
* 1: refused for good: wrong password, unknown recipient, server key
  mismatch...; retrying will not help;
* 2: usage error;
* 75 (EX_TEMPFAIL): the server was unreachable, busy, or the deadline
  passed (with ``--wait-delivered``: stored but not delivered yet); try
  again later.  Give ``--id`` a key of your own (say, the date)
  and a retry never sends the message twice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import elink_sdk
from elink_sdk import blocking

EX_TEMPFAIL = 75

#: Failures worth retrying later (a DeadlineExceeded is one too).
TEMPORARY = (elink_sdk.ServerUnavailable, elink_sdk.RateLimited, elink_sdk.DeadlineExceeded)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Send one e-Link message and exit (0 sent, 1 refused, 75 try again later).",
        epilog="The password is read from the environment variable named by --password-env.",
    )
    parser.add_argument("text", nargs="+", help="the message ('-' reads it from stdin)")
    parser.add_argument("--to", required=True, help="the recipient (a user name)")
    parser.add_argument("--host", default="127.0.0.1", help="server host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=elink_sdk.DEFAULT_PORT, help="server port")
    parser.add_argument("--user", required=True, help="the sending account")
    parser.add_argument("--device-id", default="cron-notify", help="default: %(default)s")
    parser.add_argument(
        "--deadline", type=float, default=30.0, help="seconds for everything (default: 30)"
    )
    parser.add_argument(
        "--wait-delivered",
        action="store_true",
        help="also wait until a device of the recipient has the message",
    )
    parser.add_argument("--id", help="idempotency key: a retry with the same key sends nothing")
    parser.add_argument(
        "--password-env",
        default="ELINK_PASSWORD",
        metavar="NAME",
        help="environment variable holding the password (default: %(default)s)",
    )
    parser.add_argument(
        "--server-fingerprint",
        action="append",
        metavar="SHA256:...",
        help="pin the server's key (repeatable; default: $ELINK_SERVER_FINGERPRINT, "
        "comma-separated)",
    )
    parser.add_argument("--known-servers", metavar="PATH", help="the known-servers file to use")
    return parser.parse_args(argv)


def notify(args: argparse.Namespace, password: str, text: str) -> elink_sdk.DeliveryState:
    """Send ``text``; returns the message's delivery state (``sent`` when
    ``--wait-delivered`` ran out of time).  Raises the SDK's errors."""
    deadline = time.monotonic() + float(args.deadline)

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise elink_sdk.DeadlineExceeded(f"the {args.deadline} s deadline passed")
        return remaining

    pins = args.server_fingerprint or os.environ.get("ELINK_SERVER_FINGERPRINT", "").split(",")
    pins = [pin.strip() for pin in pins if pin.strip()]
    with blocking.connect(
        args.host,
        args.port,
        user=args.user,
        password=password,
        device_id=args.device_id,
        server_fingerprint=pins or None,
        known_servers=args.known_servers,
        connect_timeout=left(),
    ) as client:
        sent = client.send_text(args.to, text, client_msg_id=args.id, timeout=left())
        if args.wait_delivered:
            # Stored already: past the deadline, the caller sees status "sent".
            with contextlib.suppress(elink_sdk.DeadlineExceeded):
                sent.wait_delivered(timeout=left())
        return sent.status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    password = os.environ.get(args.password_env)
    if not password:
        print(f"notify: set ${args.password_env} to the password of {args.user}", file=sys.stderr)
        return 2
    text = sys.stdin.read() if args.text == ["-"] else " ".join(args.text)
    if not text.strip():
        print("notify: the message is empty", file=sys.stderr)
        return 2
    try:
        status = notify(args, password, text)
    except TEMPORARY as exc:
        print(f"notify: not sent, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except elink_sdk.AuthenticationError as exc:
        print(f"notify: login refused: {exc}", file=sys.stderr)
        return 1
    except elink_sdk.ElinkError as exc:  # not found, key mismatch, session ended...
        print(f"notify: not sent: {exc}", file=sys.stderr)
        return 1
    if args.wait_delivered and status is elink_sdk.DeliveryState.SENT:
        print("notify: stored, but not delivered before the deadline", file=sys.stderr)
        return EX_TEMPFAIL
    print(f"notify: {status.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
