"""The bot framework against a real server: commands, messages, help,
mistakes, failing handlers, ordering and concurrency, shutdown."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

import elink_sdk
from elink_sdk import blocking
from elink_sdk.bots import Bot, Context
from elink_server.host import Server
from tests.helpers.sdk import USERS, ServerThread, client_options, sdk_client, sdk_server
from tests.helpers.server import WAIT

BOT = "deploybot"
BOT_DEVICE = f"{BOT}-dev"


@contextlib.asynccontextmanager
async def bot_server(tmp_path: Path) -> AsyncIterator[Server]:
    async with sdk_server(tmp_path, users=(*USERS, BOT)) as server:
        yield server


@contextlib.asynccontextmanager
async def serving(bot: Bot, port: int) -> AsyncIterator[elink_sdk.Client]:
    """``bot`` serving as deploybot; stopped (and drained) on exit."""
    async with sdk_client(port, BOT) as client, trio.open_nursery() as nursery:
        await nursery.start(bot.serve, client)
        yield client
        bot.stop()


async def replies(client: elink_sdk.Client, count: int) -> list[str]:
    """The next ``count`` messages the bot's serving device sent ``client``."""
    texts: list[str] = []
    with trio.fail_after(WAIT):
        async for event in client.events():
            if (
                isinstance(event, elink_sdk.MessageReceived)
                and event.message.sender_device == BOT_DEVICE
            ):
                texts.append(event.text or "")
                if len(texts) == count:
                    return texts
    raise AssertionError("the client closed")


async def ask(client: elink_sdk.Client, *texts: str) -> list[str]:
    """Send each text to the bot; its answers, one per text."""
    for text in texts:
        await client.send_text(BOT, text)
    return await replies(client, len(texts))


def deploy_bot(**options: object) -> Bot:
    bot = Bot(description="I deploy builds.", **options)  # type: ignore[arg-type]

    @bot.command("deploy")
    async def deploy(ctx: Context, env: str, region: str = "eu") -> None:
        """Deploy the current build to ENV.

        REGION defaults to eu."""
        await ctx.reply(f"deploying {env} in {region} for {ctx.sender} {list(ctx.args)}")

    @bot.command()
    async def scale(ctx: Context, service: str, replicas: int) -> None:
        """Run REPLICAS copies of SERVICE."""
        await ctx.reply(f"{service}: {replicas + 1} with the spare")

    @bot.command("tag")
    async def tag(ctx: Context, *labels: str) -> None:
        await ctx.reply(",".join(labels) or "no labels")

    @bot.command("fail")
    async def fail(ctx: Context) -> None:
        raise RuntimeError("the database is on fire")

    return bot


async def test_commands_and_other_messages(tmp_path: Path) -> None:
    bot = deploy_bot()

    @bot.on_message
    async def echo(ctx: Context) -> None:
        assert ctx.command is None
        await ctx.reply(f"echo: {ctx.text}")

    async with (
        bot_server(tmp_path) as server,
        serving(bot, server.port),
        sdk_client(server.port, "bob") as bob,
    ):
        assert await ask(
            bob,
            "/deploy prod",
            '/Deploy "eu west" us',
            "/scale web 3",
            "/tag a 'b c'",
            "/tag",
            "hello there",
            "/ not a command",
        ) == [
            "deploying prod in eu for bob ['prod']",
            "deploying eu west in us for bob ['eu west', 'us']",
            "web: 4 with the spare",
            "a,b c",
            "no labels",
            "echo: hello there",
            "echo: / not a command",
        ]
        await bob.send_emoji(BOT, "👍")
        assert await replies(bob, 1) == ["echo: "]


async def test_help_and_mistakes_get_helpful_answers(tmp_path: Path) -> None:
    async with (
        bot_server(tmp_path) as server,
        serving(deploy_bot(), server.port),
        sdk_client(server.port, "bob") as bob,
    ):
        help_text, help_scale, *mistakes = await ask(
            bob,
            "/help",
            "/help scale",
            "/deplyo prod",
            "/deploy",
            "/deploy a b c",
            "/scale web three",
            '/deploy "unclosed',
            "/help nothing",
            "just chatting",
        )
    assert help_text.splitlines() == [
        "I deploy builds.",
        "Commands:",
        "/deploy ENV [REGION] - Deploy the current build to ENV.",
        "/fail",
        "/help [COMMAND] - List the commands, or explain one: /help COMMAND.",
        "/scale SERVICE REPLICAS - Run REPLICAS copies of SERVICE.",
        "/tag [LABELS...]",
    ]
    assert help_scale == "/scale SERVICE REPLICAS\nRun REPLICAS copies of SERVICE."
    assert mistakes == [
        "I don't know /deplyo. Did you mean /deploy? Commands: /deploy, /fail, /help, "
        "/scale, /tag.",
        "Usage: /deploy ENV [REGION]",
        "Too many arguments. Usage: /deploy ENV [REGION]",
        "REPLICAS must be a whole number, not 'three'.",
        "I could not read that command: No closing quotation.",
        "I don't know /nothing. Commands: /deploy, /fail, /help, /scale, /tag.",
        "I answer commands only: /deploy, /fail, /help, /scale, /tag. Send /help for details.",
    ]


async def test_a_failing_handler_is_logged_answered_and_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="elink_sdk.bots")
    async with (
        bot_server(tmp_path) as server,
        serving(deploy_bot(), server.port),
        sdk_client(server.port, "bob") as bob,
    ):
        assert await ask(bob, "/fail", "/deploy prod") == [
            "Sorry, /fail failed (RuntimeError). The error was logged.",
            "deploying prod in eu for bob ['prod']",
        ]
    [record] = [r for r in caplog.records if r.name == "elink_sdk.bots"]
    assert "/fail from bob" in record.getMessage()
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "the database is on fire"


async def test_the_bot_never_answers_its_own_user_nor_ignored_users(tmp_path: Path) -> None:
    bot = deploy_bot(ignore={"carol"})
    async with bot_server(tmp_path) as server:
        async with (
            serving(bot, server.port),
            sdk_client(server.port, BOT, device_id="deploybot-phone") as phone,
            sdk_client(server.port, "carol") as carol,
            sdk_client(server.port, "bob") as bob,
        ):
            await carol.send_text(BOT, "/deploy carol")
            # The bot's other device writes in bob's conversation: were it
            # answered, that answer would come before bob's (one
            # conversation is handled in order).
            await phone.send_text("bob", "/deploy mine")
            assert await ask(bob, "/deploy bob") == ["deploying bob in eu for bob ['bob']"]
        # serving() drained every message taken: carol's was taken before bob's.
        async with sdk_client(server.port, "carol") as carol:
            page = await carol.history(BOT)
        assert [m.text for m in page.messages] == ["/deploy carol"]


async def test_one_conversation_in_order_and_bounded_concurrency(tmp_path: Path) -> None:
    bot = Bot(concurrency=2)
    running: list[str] = []
    started = trio.Event()
    release = trio.Event()

    @bot.command("slow")
    async def slow(ctx: Context, delay: float) -> None:
        await trio.sleep(delay)
        await ctx.reply(f"slept {delay}")

    @bot.command("hold")
    async def hold(ctx: Context) -> None:
        running.append(ctx.sender)
        if len(running) == 2:
            started.set()
        await release.wait()
        await ctx.reply("released")

    async with (
        bot_server(tmp_path) as server,
        serving(bot, server.port),
        sdk_client(server.port, "bob") as bob,
    ):
        # Were they handled at once, the shortest sleep would answer first.
        assert await ask(bob, "/slow 0.2", "/slow 0.1", "/slow 0") == [
            "slept 0.2",
            "slept 0.1",
            "slept 0.0",
        ]
        async with (
            sdk_client(server.port, "alice") as alice,
            sdk_client(server.port, "carol") as carol,
        ):
            for user in (alice, bob, carol):
                await user.send_text(BOT, "/hold")
            with trio.fail_after(WAIT):
                await started.wait()  # two conversations at once...
            await trio.sleep(0.2)
            assert len(running) == 2  # ...but not a third
            release.set()
            for user in (alice, bob, carol):
                assert await replies(user, 1) == ["released"]
        assert len(running) == 3


async def test_stop_finishes_running_handlers_and_takes_no_more(tmp_path: Path) -> None:
    bot = Bot()
    started = trio.Event()
    release = trio.Event()

    @bot.command("slow")
    async def slow(ctx: Context) -> None:
        started.set()
        await release.wait()
        await ctx.reply("slow done")

    @bot.command("late")
    async def late(ctx: Context) -> None:
        await ctx.reply("too late to answer")

    async with (
        bot_server(tmp_path) as server,
        sdk_client(server.port, BOT) as client,
        sdk_client(server.port, "bob") as bob,
    ):
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(bot.serve, client)
                await bob.send_text(BOT, "/slow")
                await started.wait()
                bot.stop()
                await bob.send_text(BOT, "/late")
                release.set()
        # serve() returned once the running handler finished.
        assert await replies(bob, 1) == ["slow done"]
        page = await bob.history(BOT)
        assert [m.text for m in page.messages] == ["slow done", "/late", "/slow"]


async def test_stop_cancels_handlers_that_outlive_the_grace_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bot = Bot(grace_period=0.1)
    started = trio.Event()
    cancelled = trio.Event()

    @bot.command("stuck")
    async def stuck(ctx: Context) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with (
        bot_server(tmp_path) as server,
        sdk_client(server.port, BOT) as client,
        sdk_client(server.port, "bob") as bob,
    ):
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(bot.serve, client)
                await bob.send_text(BOT, "/stuck")
                await started.wait()
                bot.stop()
    assert cancelled.is_set()
    assert "grace period" in caplog.text


@pytest.fixture
def server_thread(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path, users=(*USERS, BOT)) as running:
        yield running


def test_run_blocks_until_stopped_from_another_thread_then_logs_out(
    server_thread: ServerThread,
) -> None:
    port = server_thread.port
    bot = deploy_bot()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            bot.run("127.0.0.1", port, **client_options(port, BOT))
        except BaseException as exc:
            failures.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    with blocking.connect("127.0.0.1", port, **client_options(port, "bob")) as bob:
        runner.start()
        bob.send_text(BOT, "/deploy prod")
        answers = (e for e in bob.events(timeout=WAIT) if isinstance(e, elink_sdk.MessageReceived))
        assert next(answers).text == "deploying prod in eu for bob ['prod']"
        assert bob.presence(BOT)[BOT].status is elink_sdk.PresenceStatus.ONLINE
        bot.stop()
        runner.join(WAIT)
        assert not runner.is_alive()
        assert failures == []
        assert bob.presence(BOT)[BOT].status is elink_sdk.PresenceStatus.OFFLINE


def test_run_raises_the_sdks_errors(server_thread: ServerThread) -> None:
    port = server_thread.port
    with pytest.raises(elink_sdk.AuthenticationError):
        deploy_bot().run("127.0.0.1", port, **client_options(port, BOT, password="wrong"))


def test_handlers_are_checked_when_registered() -> None:
    bot = Bot()
    with pytest.raises(TypeError, match="async"):
        bot.command("sync")(lambda ctx: None)

    async def typed(ctx: Context, when: list[str]) -> None:
        pass

    with pytest.raises(TypeError, match="str, int or float"):
        bot.command("typed")(typed)
    with pytest.raises(ValueError, match="command names"):
        bot.command("Two Words")(typed)

    async def echo(ctx: Context) -> None:
        pass

    bot.on_message(echo)
    with pytest.raises(ValueError, match="already"):
        bot.on_message(echo)
