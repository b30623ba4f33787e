"""An e-Link bot that echoes every message back, with two commands.

Run it against a server (the password comes from an environment variable,
never from the command line, where other users could read it)::

    export ELINK_PASSWORD=...                      # the bot account's password
    export ELINK_SERVER_FINGERPRINT=SHA256:...     # printed by `elink-server serve`
    python examples/echo_bot.py --host 127.0.0.1 --port 7420 --user echobot

Then write to ``echobot`` from any client: ``hello`` comes back as
``hello``, ``/upper make it loud`` as ``MAKE IT LOUD``, ``/ping`` as
``pong``; ``/help`` lists the commands.  Ctrl-C or SIGTERM stops the bot
gracefully (messages already taken are answered, then it logs out).

Without a pinned fingerprint the server's key is checked against the
known-servers file (``--known-servers``, default
``~/.config/elink/known_servers``) and recorded there on first use.

Exit status: 0 when stopped by a signal, 1 when the bot could not run or
its session ended (the reason is printed), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import elink_sdk
from elink_sdk.bots import Bot, Context

bot = Bot(description="I echo what you write.")


@bot.on_message
async def echo(ctx: Context) -> None:
    if ctx.text:  # emoji, links and files have no text to echo
        await ctx.reply(ctx.text)


@bot.command("upper")
async def upper(ctx: Context, *words: str) -> None:
    """Say WORDS back, loudly."""
    await ctx.reply(" ".join(words).upper() or "SAY SOMETHING")


@bot.command("ping")
async def ping(ctx: Context) -> None:
    """Check that the bot is alive."""
    await ctx.reply("pong")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="An e-Link echo bot.",
        epilog="The password is read from the environment variable named by --password-env.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=elink_sdk.DEFAULT_PORT, help="server port")
    parser.add_argument("--user", required=True, help="the bot's account")
    parser.add_argument("--device-id", default="echo-bot", help="default: %(default)s")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    password = os.environ.get(args.password_env)
    if not password:
        print(f"echo_bot: set ${args.password_env} to the bot's password", file=sys.stderr)
        return 2
    pins = args.server_fingerprint or os.environ.get("ELINK_SERVER_FINGERPRINT", "").split(",")
    pins = [pin.strip() for pin in pins if pin.strip()]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        bot.run(
            args.host,
            args.port,
            user=args.user,
            password=password,
            device_id=args.device_id,
            server_fingerprint=pins or None,
            known_servers=args.known_servers,
        )
    except elink_sdk.AuthenticationError as exc:
        print(f"echo_bot: login refused: {exc}", file=sys.stderr)
        return 1
    except elink_sdk.ElinkError as exc:  # unreachable, key mismatch, session ended...
        print(f"echo_bot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while still connecting
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
