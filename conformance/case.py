"""Cases, their registry, and what a running case can use.

A case is an ``async def`` decorated with :func:`case`, which registers it
under an id named after the spec section it tests (``EL-4.3-1``), with a
title, a level (MUST, SHOULD or MAY) and the ids of the requirement sentences
it covers (:mod:`conformance.requirements`).  Its docstring says what it
sends and what it expects; the report prints it for a case that did not pass.

A case receives a :class:`Context`: the options, connections to the server
(closed for it when it ends), the handshake and login helpers, and fresh
names for devices and messages, so that every run stands alone even against
a server that keeps the data of earlier runs.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable

import attrs

from elink_protocol.app import LoginOk
from elink_protocol.packets import Bus

from .handshake import ClientHandshake, HandshakeInfo, Hello, Resume
from .requirements import Level
from .results import Fail, Skip
from .session import Client
from .wire import Closed, SessionState, code_name

CaseFunction = Callable[["Context"], Awaitable[None]]

_ID = re.compile(r"^EL-(\d+(?:\.\d+)*)-(\d+)$")


DEFAULT_USERS = ("conf-a", "conf-b", "conf-c", "conf-d")
"""The accounts the suite logs in with unless told otherwise (``--user``)."""


@attrs.frozen(kw_only=True)
class Options:
    """How to reach the server and what to expect of it."""

    host: str
    port: int
    users: tuple[str, ...] = DEFAULT_USERS
    """Accounts: three chat users, and a fourth that takes the failed logins."""
    password: str | None = None
    """The accounts' password (the same for all)."""
    fingerprints: frozenset[str] | None = None
    """Pinned server key fingerprints; None trusts the key the server shows."""
    wait: float = 5.0
    """Seconds to wait for an answer the server owes."""
    handshake_timeout: float = 10.0
    """The server's handshake deadline (§6.7.3; not advertised on the wire)."""
    idle_timeout: float = 60.0
    """The server's idle timeout (§6.7.2)."""
    heartbeat_interval: float = 20.0
    """The server's heartbeat interval (§6.7.1)."""
    max_wait: float = 130.0
    """Cases that would wait longer than this for a deadline are SKIPPED."""
    legacy_suites: bool = False
    """The server is configured to accept the legacy suites (§7.6)."""
    offline_cap: int = 1000
    """The server's offline cap (§11.5.7)."""
    run_id: str = attrs.field(factory=lambda: secrets.token_hex(4))
    """Makes names of this run unique (devices, client message ids)."""


@attrs.frozen(kw_only=True)
class Case:
    """One registered case."""

    id: str
    title: str
    level: Level
    covers: tuple[str, ...]
    run: CaseFunction
    users: int
    """How many of the accounts the case logs in with (0: none)."""

    @property
    def section(self) -> str:
        match = _ID.match(self.id)
        assert match, self.id
        return match.group(1)

    @property
    def doc(self) -> str:
        return " ".join((self.run.__doc__ or "").split())


CASES: dict[str, Case] = {}
"""Every case, by id, in registration order (filled by importing
:mod:`conformance.cases`; use :func:`all_cases`)."""


def all_cases() -> dict[str, Case]:
    """Every case, by id, in registration order."""
    import conformance.cases  # noqa: F401 - registers the cases

    return CASES


def case(
    case_id: str, title: str, level: Level, *, covers: Iterable[str], users: int = 0
) -> Callable[[CaseFunction], CaseFunction]:
    """Register a case (see the module docstring)."""
    if not _ID.match(case_id):
        raise ValueError(f"case id {case_id!r} is not EL-<section>-<n>")

    def register(fn: CaseFunction) -> CaseFunction:
        if case_id in CASES:
            raise ValueError(f"case {case_id} registered twice")
        covered = tuple(covers)
        if not covered:
            raise ValueError(f"case {case_id} covers no requirement")
        CASES[case_id] = Case(
            id=case_id, title=title, level=level, covers=covered, run=fn, users=users
        )
        return fn

    return register


def select(patterns: Iterable[str]) -> list[Case]:
    """The cases matching any of ``patterns``, in registration order.

    A pattern is a case id (``EL-4.3-1``), a section (``4.3``, which includes
    its subsections) or a glob over either (``4.2.*``, ``EL-11.*``); the
    ``EL-`` prefix is optional."""
    wanted = [p.strip().removeprefix("EL-") for p in patterns if p.strip()]
    chosen = []
    for item in all_cases().values():
        name = item.id.removeprefix("EL-")
        for pattern in wanted:
            prefix = pattern[:-2] if pattern.endswith(".*") else None
            if (
                fnmatch.fnmatchcase(name, pattern)
                or fnmatch.fnmatchcase(item.section, pattern)
                or item.section == pattern
                or item.section.startswith(pattern + ".")
                or (prefix is not None and (item.section == prefix))
            ):
                chosen.append(item)
                break
    return chosen


class Context:
    """What a running case uses (see the module docstring)."""

    def __init__(self, options: Options, case_id: str) -> None:
        self.options = options
        self.case_id = case_id
        self.wait = options.wait
        self.clients: list[Client] = []
        self.notes: list[str] = []
        """Lines the case adds to its report detail."""
        self._names = itertools.count(1)

    # ------------------------------------------------------------ names

    def unique(self, prefix: str) -> str:
        """A name no other case or run uses (client message ids, devices)."""
        tag = self.case_id.removeprefix("EL-").replace(".", "_")
        return f"{prefix}-{self.options.run_id}-{tag}-{next(self._names)}"

    def user(self, index: int) -> str:
        if index >= len(self.options.users):
            raise Skip(f"needs {index + 1} accounts, {len(self.options.users)} given (--user)")
        return self.options.users[index]

    @property
    def password(self) -> str:
        if self.options.password is None:
            raise Skip("needs the accounts' password (--password)")
        return self.options.password

    def note(self, line: str) -> None:
        self.notes.append(line)

    def need_wait(self, seconds: float, what: str) -> None:
        """Skip the case if it would wait longer than ``--max-wait``."""
        if seconds > self.options.max_wait:
            raise Skip(
                f"{what} would take {seconds:g} s, more than --max-wait {self.options.max_wait:g}"
            )

    # ------------------------------------------------------ connections

    async def connect(
        self, name: str | None = None, *, host: str = "", port: int | None = None
    ) -> Client:
        """A new TCP connection to the server (closed when the case ends).
        ``port`` (and ``host``, default the server's): a heavy-bus listener
        (§9.4) instead of the light bus."""
        label = name or f"conn{len(self.clients) + 1}"
        bus = Bus.LIGHT if port is None else Bus.HEAVY
        try:
            client = await Client.open(
                host or self.options.host,
                self.options.port if port is None else port,
                name=label,
                timeout=self.wait,
                bus=bus,
            )
        except OSError as exc:
            raise Fail(f"cannot connect to the server: {exc}") from None
        self.clients.append(client)
        return client

    def handshaker(self, client: Client) -> ClientHandshake:
        return ClientHandshake(client, timeout=self.wait, pinned=self.options.fingerprints)

    async def established(
        self, name: str | None = None, *, hello: Hello | None = None, resume: Resume | None = None
    ) -> tuple[Client, HandshakeInfo]:
        """A new connection with a completed handshake."""
        client = await self.connect(name)
        info = await self.handshaker(client).run(hello, resume=resume)
        return client, info

    async def heavy(
        self, port: int, host: str = "", *, name: str | None = None
    ) -> tuple[Client, HandshakeInfo]:
        """A new heavy-bus connection (§9.4) to the ticket's ``host``/``port``,
        with a completed handshake and nothing sent yet."""
        client = await self.connect(name or f"heavy{len(self.clients) + 1}", host=host, port=port)
        info = await self.handshaker(client).run(None)
        return client, info

    async def resume(
        self,
        state: SessionState,
        *,
        name: str | None = None,
        last_processed: int | None = None,
        proof: bytes | None = None,
    ) -> tuple[Client, HandshakeInfo]:
        """A new connection whose handshake asks to resume ``state``'s
        session (claiming ``last_processed`` if given).  When the server
        resumes it, the client continues the session's numbering."""
        client = await self.connect(name)
        resume = Resume(state=state, last_processed=last_processed, proof=proof)
        info = await self.handshaker(client).run(Hello(), resume=resume)
        if info.resumed:
            claimed = (
                state
                if last_processed is None
                else attrs.evolve(state, last_processed=last_processed)
            )
            client.adopt(claimed, server_last_processed=info.server_last_processed)
        return client, info

    async def logged_in(
        self, user_index: int = 0, *, name: str | None = None, device: str | None = None
    ) -> tuple[Client, LoginOk]:
        """A new connection, handshaken and logged in as account ``user_index``
        on a fresh device."""
        user, password = self.user(user_index), self.password
        client, _ = await self.established(name or user)
        ok = await client.login(user, password, device or self.unique("dev"), timeout=self.wait)
        return client, ok

    async def expect_close(
        self, client: Client, code: int, *, timeout: float | None = None, what: str = ""
    ) -> Closed:
        """The server closes ``client`` with ``code``; fail otherwise."""
        closed = await client.expect_close(self.wait if timeout is None else timeout)
        if closed.code != code:
            sent = f" after {what}" if what else ""
            raise Fail(
                f"{client.name}: expected Close {code_name(code)}{sent}, got {closed.describe()}"
            )
        return closed

    async def close_all(self) -> None:
        for client in self.clients:
            await client.close()
