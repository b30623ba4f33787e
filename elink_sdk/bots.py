"""Bots: programs that answer commands and messages, in a few lines.

::

    from elink_sdk.bots import Bot

    bot = Bot(description="I deploy builds.")

    @bot.command("deploy")
    async def deploy(ctx, env: str):
        \"\"\"Deploy the current build to ENV.\"\"\"
        await ctx.reply(f"deploying {env}")

    @bot.on_message                     # every message that is not a command
    async def echo(ctx):
        await ctx.reply(ctx.text)

    bot.run("127.0.0.1", 7420, user="deploybot", password=pw)  # Ctrl-C stops it

Inside an async program, ``await bot.serve(client)`` with a client from
:func:`elink_sdk.connect`.

Commands
--------
A message whose text starts with ``/`` and a letter or digit is a command:
``/deploy "eu west" 3`` calls the ``deploy`` handler with the arguments split
as a shell would (quotes group words).  The handler's parameters after the
context say what it takes: annotated ``int`` or ``float`` arguments are
converted, parameters with defaults are optional, ``*args`` takes the rest.
A wrong number of arguments, a bad number or an unknown command is answered
with a short, helpful reply; ``/help`` (built in) lists the commands with
the first line of each handler's docstring.

Theory of operation
-------------------
:meth:`Bot.serve` reads the client's events and queues each message for its
conversation.  A conversation's messages are handled one at a time, in
order; different conversations run concurrently, at most ``concurrency``
handlers at once.  At most ``4 * concurrency`` messages are taken and not yet
handled: past that the bot stops reading events, and the rest waits in the
client and on the server (nothing is lost, memory stays bounded).

The bot never answers messages sent by its own user (from any device), so
two devices of a bot cannot talk to each other forever; list other bots in
``ignore`` for the same reason.  A handler's exception is logged and
answered with a one-line apology, and the bot carries on.

:meth:`Bot.stop` (or SIGINT/SIGTERM under :meth:`Bot.run`) stops gracefully:
no more messages are taken, the ones taken are handled within
``grace_period`` seconds, after which handlers still running are cancelled.
:meth:`Bot.run` then logs out.  A message counts as delivered once the bot
took it (the client confirms it to the server), so one being handled when
the process dies is not handed over again.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import re
import shlex
import signal
import threading
import types
import typing
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import attrs

from elink_protocol.app import Message

from .client import DEFAULT_PORT, Client, connect
from .errors import ElinkError
from .events import Disconnected, MessageReceived, Reconnected
from .results import SentMessage

__all__ = ["Bot", "Context"]

logger = logging.getLogger("elink_sdk.bots")

CommandHandler = Callable[..., Awaitable[object]]
"""``async def handler(ctx, arg1, arg2, ...)``."""

MessageHandler = Callable[["Context"], Awaitable[object]]
"""``async def handler(ctx)``."""

H = TypeVar("H", bound=CommandHandler)
M = TypeVar("M", bound=MessageHandler)

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

#: Messages taken from the client but not handled yet, per handler slot.
_BACKLOG_PER_SLOT = 4


@attrs.frozen(kw_only=True)
class Context:
    """What a handler gets: the message, who sent it, and a way to answer."""

    client: Client
    """The bot's client, for anything beyond :meth:`reply`."""
    event: MessageReceived
    """The event that carried the message (its ``cursor``, say)."""
    command: str | None
    """The command's name (``"deploy"`` for ``/deploy prod``), or ``None``."""
    args: tuple[str, ...]
    """The command's arguments as typed (``("prod",)``); empty for messages."""

    @property
    def message(self) -> Message:
        """The message being handled (``msg_id``, ``kind``, ``content``...)."""
        return self.event.message

    @property
    def sender(self) -> str:
        """The user who sent the message."""
        return self.event.message.sender

    @property
    def conversation(self) -> str:
        """Where the message was sent (``d:alice:deploybot``, ``g:ops``...)."""
        return self.event.message.conversation

    @property
    def text(self) -> str:
        """The message's text; ``""`` when it has none (an emoji, a link...)."""
        return self.event.message.text or ""

    async def reply(self, text: str, *, timeout: float | None = None) -> SentMessage:
        """Send ``text`` to the conversation the message came from."""
        return await self.client.send_text(self.conversation, text, timeout=timeout)


class _Usage(Exception):
    """A command used wrongly: the text is the reply."""


@attrs.frozen
class _Param:
    name: str
    convert: Callable[[str], object]
    optional: bool
    rest: bool
    """``*args``: takes every remaining argument."""

    def usage(self) -> str:
        word = self.name.upper()
        if self.rest:
            return f"[{word}...]"
        return f"[{word}]" if self.optional else word

    def value(self, text: str) -> object:
        try:
            return self.convert(text)
        except ValueError:
            kind = "a whole number" if self.convert is int else "a number"
            raise _Usage(f"{self.name.upper()} must be {kind}, not {text!r}.") from None


@attrs.frozen
class _Command:
    name: str
    handler: CommandHandler
    params: tuple[_Param, ...]
    help: str
    prefix: str

    @property
    def usage(self) -> str:
        return " ".join([self.prefix + self.name, *(param.usage() for param in self.params)])

    @property
    def summary(self) -> str:
        return self.help.strip().splitlines()[0] if self.help.strip() else ""

    def bind(self, args: list[str]) -> list[object]:
        """The handler's arguments after the context, converted."""
        values: list[object] = []
        rest = list(args)
        for param in self.params:
            if param.rest:
                values.extend(param.value(arg) for arg in rest)
                rest = []
            elif rest:
                values.append(param.value(rest.pop(0)))
            elif not param.optional:
                raise _Usage(f"Usage: {self.usage}")
        if rest:
            raise _Usage(f"Too many arguments. Usage: {self.usage}")
        return values


def _converter(annotation: object, where: str) -> Callable[[str], object]:
    if annotation is inspect.Parameter.empty or annotation is str:
        return str
    if annotation is int or annotation is float:
        return typing.cast(Callable[[str], object], annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(options) == 1:
            return _converter(options[0], where)
    raise TypeError(f"{where}: command arguments may be str, int or float, not {annotation!r}")


def _check_async(handler: object) -> None:
    if not inspect.iscoroutinefunction(handler):
        name = getattr(handler, "__qualname__", repr(handler))
        raise TypeError(f"{name} must be an async function (async def)")


def _params(handler: CommandHandler) -> tuple[_Param, ...]:
    """What a command handler takes after its context (checked at once, so
    a mistake shows when the bot starts, not when a user types it)."""
    _check_async(handler)
    name = getattr(handler, "__qualname__", repr(handler))
    signature = inspect.signature(handler)
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # unresolvable annotations: treat the arguments as text
        hints = {}
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = list(signature.parameters.values())
    if not parameters or parameters[0].kind not in positional:
        raise TypeError(f"{name} must take the context as its first argument")
    params: list[_Param] = []
    for parameter in parameters[1:]:
        where = f"{name}({parameter.name})"
        convert = _converter(hints.get(parameter.name, parameter.annotation), where)
        if parameter.kind in positional:
            optional = parameter.default is not inspect.Parameter.empty
            params.append(_Param(parameter.name, convert, optional, rest=False))
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            params.append(_Param(parameter.name, convert, optional=True, rest=True))
        elif parameter.default is inspect.Parameter.empty and parameter.kind is not (
            inspect.Parameter.VAR_KEYWORD
        ):
            raise TypeError(f"{where}: keyword-only arguments need a default")
    return tuple(params)


class Bot:
    """Handlers for commands and messages; :meth:`run` or :meth:`serve` it.

    ``description`` heads the ``/help`` answer.  ``concurrency`` bounds the
    handlers running at once (messages of one conversation are always
    handled one at a time, in order).  ``grace_period`` is how long
    :meth:`stop` lets taken messages finish.  Messages from users in
    ``ignore`` (other bots, say) are not answered, nor are the bot's own."""

    def __init__(
        self,
        *,
        description: str = "",
        concurrency: int = 8,
        grace_period: float = 10.0,
        ignore: typing.Iterable[str] = (),
        prefix: str = "/",
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not prefix:
            raise ValueError("the command prefix cannot be empty")
        self.description = description
        self.concurrency = concurrency
        self.grace_period = grace_period
        self.ignore = frozenset(ignore)
        self.prefix = prefix
        self._commands: dict[str, _Command] = {}
        self._on_message: MessageHandler | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._intake: anyio.CancelScope | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self.command("help", help=f"List the commands, or explain one: {prefix}help COMMAND.")(
            self._help
        )

    # ------------------------------------------------------------ registering

    @overload
    def command(self, name: H, /) -> H: ...
    @overload
    def command(
        self, name: str | None = None, /, *, help: str | None = None
    ) -> Callable[[H], H]: ...
    def command(
        self, name: str | H | None = None, /, *, help: str | None = None
    ) -> H | Callable[[H], H]:
        """Register a command handler: ``@bot.command("deploy")``, or
        ``@bot.command()`` to use the function's name.  ``help`` defaults to
        the handler's docstring; its first line is what ``/help`` lists."""
        if callable(name):
            return self.command()(name)

        def register(handler: H) -> H:
            command = (name or handler.__name__).lower()
            if not _NAME.fullmatch(command):
                raise ValueError(
                    f"command names are 1-32 of a-z 0-9 _ - (starting with a letter "
                    f"or digit), not {command!r}"
                )
            self._commands[command] = _Command(
                command,
                handler,
                _params(handler),
                help or inspect.getdoc(handler) or "",
                self.prefix,
            )
            return handler

        return register

    def on_message(self, handler: M) -> M:
        """Register the handler of every message that is not a command::

        @bot.on_message
        async def echo(ctx):
            await ctx.reply(ctx.text)
        """
        _check_async(handler)
        if self._on_message is not None:
            raise ValueError(f"on_message is already {self._on_message.__qualname__}")
        self._on_message = handler
        return handler

    @property
    def commands(self) -> list[str]:
        """The commands' names, ``help`` included, sorted."""
        return sorted(self._commands)

    # ------------------------------------------------------------ running

    def run(self, host: str, port: int = DEFAULT_PORT, **options: Any) -> None:
        """Connect, serve until stopped, log out.  Blocks.

        ``options`` are those of :func:`elink_sdk.connect` (``user``,
        ``password``, ``server_fingerprint``...).  In the main thread,
        SIGINT (Ctrl-C) and SIGTERM stop the bot gracefully; a second signal
        stops it at once.  Raises what :func:`elink_sdk.connect` raises and
        the error that ended the session, if one did."""
        anyio.run(self._run, host, port, options, backend="trio")

    async def _run(self, host: str, port: int, options: dict[str, Any]) -> None:
        failure: Exception | None = None
        async with connect(host, port, **options) as client, anyio.create_task_group() as tasks:
            if threading.current_thread() is threading.main_thread():
                tasks.start_soon(self._stop_on_signals, tasks.cancel_scope)
            try:
                await self.serve(client)
            except Exception as exc:  # carried out of the task group as itself
                failure = exc
            tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _stop_on_signals(self, everything: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self._stopping:
                    logger.warning("%s again: stopping at once", signal.Signals(signum).name)
                    everything.cancel()
                    return
                logger.info("%s: stopping", signal.Signals(signum).name)
                self.stop()

    def stop(self) -> None:
        """Stop gracefully: take no more messages, give the ones taken
        ``grace_period`` seconds, then return from :meth:`serve` (and
        :meth:`run`, which logs out).  Safe from any thread.  Called before
        the bot serves, it makes the next :meth:`serve` return at once."""
        with self._lock:
            self._stopping = True
            token, loop_thread = self._token, self._loop_thread
        if token is None:
            return  # serve() sees _stopping when it starts
        if threading.get_ident() == loop_thread:
            self._stop_intake()
        else:
            # A loop that already ended has nothing left to stop.
            with contextlib.suppress(anyio.RunFinishedError):
                anyio.from_thread.run_sync(self._stop_intake, token=token)

    def _stop_intake(self) -> None:
        if self._intake is not None:
            self._intake.cancel()

    async def serve(
        self, client: Client, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer ``client``'s messages until :meth:`stop` is called or the
        client closes; raises the error that ended the session, if one did.
        The caller owns the client (``serve`` does not log out) and must not
        read its events meanwhile: the bot does.  Signals ``task_status``
        once it takes messages (for ``task_group.start``)."""
        intake = anyio.CancelScope()
        with self._lock:
            if self._intake is not None:
                raise RuntimeError("this bot is already serving")
            self._intake = intake
            self._token = anyio.lowlevel.current_token()
            self._loop_thread = threading.get_ident()
            if self._stopping:
                intake.cancel()
        failure: ElinkError | None = None
        try:
            with anyio.CancelScope() as grace:
                async with anyio.create_task_group() as workers:
                    with intake:
                        logger.info("serving as %s; commands: %s", client.user, self._listing())
                        task_status.started()
                        try:
                            await self._take_messages(client, workers)
                        except ElinkError as exc:  # carried out of the task group as itself
                            failure = exc
                    # Taking no more: let what was taken finish, within the grace.
                    grace.deadline = anyio.current_time() + self.grace_period
        finally:
            with self._lock:
                self._intake = self._token = self._loop_thread = None
                self._stopping = False
        if grace.cancelled_caught:
            logger.warning(
                "handlers still running after the %s s grace period were cancelled",
                self.grace_period,
            )
        logger.info("stopped")
        if failure is not None:
            raise failure

    # ------------------------------------------------------------ dispatch

    async def _take_messages(self, client: Client, workers: anyio.abc.TaskGroup) -> None:
        """Queue each message for its conversation; one worker task per
        conversation with messages waiting."""
        slots = anyio.CapacityLimiter(self.concurrency)
        backlog = anyio.Semaphore(self.concurrency * _BACKLOG_PER_SLOT)
        queues: dict[str, deque[MessageReceived]] = {}
        events = client.events()

        async def drain(conversation: str, queue: deque[MessageReceived]) -> None:
            try:
                while queue:
                    event = queue.popleft()
                    try:
                        async with slots:
                            await self._handle(client, event)
                    finally:
                        backlog.release()
            finally:
                dropped = len(queue)
                if dropped:
                    logger.warning("%d messages of %s not handled", dropped, conversation)
                del queues[conversation]

        while True:
            # Room first, then the event: a cancelled wait for room loses nothing.
            await backlog.acquire()
            queued = False
            try:
                event = await events.__anext__()
                if isinstance(event, MessageReceived) and self._wanted(client, event):
                    conversation = event.conversation
                    queue = queues.get(conversation)
                    if queue is None:
                        queue = queues[conversation] = deque()
                        workers.start_soon(drain, conversation, queue)
                    queue.append(event)
                    queued = True
                elif isinstance(event, Disconnected):
                    logger.warning("connection lost (%s); reconnecting", event.reason)
                elif isinstance(event, Reconnected):
                    logger.info("reconnected")
            except StopAsyncIteration:
                return  # the client closed
            finally:
                if not queued:
                    backlog.release()

    def _wanted(self, client: Client, event: MessageReceived) -> bool:
        sender = event.sender
        return sender != client.user and sender not in self.ignore and not event.message.recalled

    async def _handle(self, client: Client, event: MessageReceived) -> None:
        """Run the handler the message calls for; answer mistakes and failures."""
        ctx = Context(client=client, event=event, command=None, args=())
        what = "your message"
        try:
            parsed = self._parse(event.message.text or "")
            if parsed is None:
                if self._on_message is not None:
                    await self._on_message(ctx)
                elif ctx.text and ctx.conversation.startswith("d:"):
                    await ctx.reply(
                        f"I answer commands only: {self._listing()}. "
                        f"Send {self.prefix}help for details."
                    )
                return
            name, args = parsed
            command = self._commands.get(name)
            if command is None:
                raise _Usage(self._unknown(name))
            ctx = attrs.evolve(ctx, command=name, args=tuple(args))
            what = f"{self.prefix}{name}"
            values = command.bind(args)
            await command.handler(ctx, *values)
        except _Usage as usage:
            await self._answer(ctx, str(usage))
        except Exception as exc:
            logger.exception("handling %s from %s in %s failed", what, ctx.sender, ctx.conversation)
            await self._answer(
                ctx, f"Sorry, {what} failed ({type(exc).__name__}). The error was logged."
            )

    async def _answer(self, ctx: Context, text: str) -> None:
        try:
            await ctx.reply(text)
        except ElinkError as exc:
            logger.warning("could not answer %s in %s: %s", ctx.sender, ctx.conversation, exc)

    # ------------------------------------------------------------ commands

    def _parse(self, text: str) -> tuple[str, list[str]] | None:
        """``("deploy", ["prod"])`` for ``/deploy prod``; None for a message
        that is not a command."""
        text = text.strip()
        body = text[len(self.prefix) :]
        if not text.startswith(self.prefix) or not body[:1].isalnum():
            return None
        try:
            words = shlex.split(body)
        except ValueError as exc:  # an unclosed quote
            raise _Usage(f"I could not read that command: {exc}.") from None
        return words[0].lower(), words[1:]

    def _listing(self) -> str:
        return ", ".join(f"{self.prefix}{name}" for name in self.commands)

    def _unknown(self, name: str) -> str:
        text = f"I don't know {self.prefix}{name}."
        close = difflib.get_close_matches(name, self.commands, n=1)
        if close:
            text += f" Did you mean {self.prefix}{close[0]}?"
        return f"{text} Commands: {self._listing()}."

    async def _help(self, ctx: Context, command: str | None = None) -> None:
        if command is not None:
            found = self._commands.get(command.lower().removeprefix(self.prefix))
            if found is None:
                raise _Usage(self._unknown(command.lower()))
            await ctx.reply("\n".join(filter(None, [found.usage, found.help.strip()])))
            return
        lines = [self.description] if self.description else []
        lines.append("Commands:")
        for name in self.commands:
            found = self._commands[name]
            usage = found.usage
            lines.append(f"{usage} - {found.summary}" if found.summary else usage)
        await ctx.reply("\n".join(lines))
