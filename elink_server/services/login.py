"""Login, the login queue, failed-login limits and logout (docs/protocol.md
§11.3).

Theory of operation
-------------------
Verifying a password is deliberately slow (scrypt in a worker thread), so a
login storm is bounded by a **login queue**: at most ``settings.max_logins``
logins verify at once; the others wait first come, first served, each told
its position with LoginQueued (again when it moves, at most once per
``login_queue_interval``); beyond ``settings.login_queue`` waiting logins a
new one is refused with LOGIN_QUEUE_FULL.  Positions are exact without
scanning the queue: every waiting login holds a ticket, tickets are admitted
in order, and the position of ticket *t* is the tickets between the head and
*t* minus those whose clients left meanwhile (kept in a short sorted list).

The queue and the failure limits are the node's (:class:`LoginAdmission`,
reached through ``ctx.router.login_slot``): with several worker processes
the hub keeps them, so a storm is bounded and ordered for the whole node.

A Login does not hold up its connection while it waits: the handler starts
the login as a task of the peer (:meth:`Peer.start_soon`) and returns, so the
peer keeps answering heartbeats and acknowledging packets.  A second Login
meanwhile is ALREADY_LOGGED_IN; any other request is NOT_LOGGED_IN (the
application's gate, ``app.py``).

**Failed logins** are counted in a sliding window per account and per client
address; over either limit, logins of that account (or from that address)
are refused with RATE_LIMITED before any password is checked, and
``retry_after_ms`` says when the oldest failure leaves the window.  An
unknown user costs the same scrypt work as a wrong password and is answered
the same way (AUTH_FAILED), so neither timing nor answers reveal names.

A **store error** before LoginOk (reading the account, registering the
device, counting its backlog) is answered SERVER_BUSY with ``retry_after_ms``
and logged; the connection stays open so the client can log in again.  No
session was bound, so nothing is left half done: registering a device is
idempotent and invisible until the login succeeds.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
import trio

from elink_protocol import ErrorCode, Packet
from elink_protocol.app import AppErrorCode, Login, Logout
from elink_server.accounts import verify_password_async
from elink_server.peer import Peer
from elink_server.settings import ServerSettings
from elink_server.storage import DeviceKind, StorageError

from .context import DeviceSession, ServiceContext
from .routing import RETRY_AFTER_MS

logger = structlog.get_logger("elink_server")

Handler = Callable[[Peer, Packet], Awaitable[None]]

#: Most accounts and addresses whose failures are tracked at once; beyond it
#: the least recently failed are forgotten (memory stays bounded under a
#: flood of made-up names).
MAX_TRACKED_KEYS = 100_000

#: Initial estimate of one login's duration (seconds), before any is measured.
INITIAL_LOGIN_SECONDS = 0.05


class _StoreFailed(Exception):
    """The store failed before LoginOk; ``__cause__`` is its error.  A
    wrapper, so that only the store calls of the login itself are answered
    SERVER_BUSY (an error of ``on_login``, after LoginOk, is not)."""


class LoginQueueFull(Exception):
    """The login queue holds ``login_queue`` logins already."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__("login queue full")
        self.retry_after_ms = retry_after_ms


class LoginRateLimited(Exception):
    """Too many failed logins of the account or from the address."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__("too many failed logins")
        self.retry_after_ms = retry_after_ms


class LoginQueue:
    """At most ``max_running`` logins at once; the others wait in FIFO order
    (see the module docstring)."""

    def __init__(self, *, max_running: int, max_waiting: int, interval: float) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.interval = interval
        self.running = 0
        self.queued_total = 0
        """Logins that had to wait, since start."""
        self._waiters: dict[int, trio.Event] = {}  # ticket -> admitted; insertion = ticket order
        self._next_ticket = 0
        self._head = 0  # every ticket below was admitted or left
        self._left: list[int] = []  # sorted tickets >= head that left while waiting
        self._moved = trio.Event()
        self._seconds = INITIAL_LOGIN_SECONDS  # moving average of one login

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def estimate_ms(self, ahead: int) -> int:
        """Expected wait of a login with ``ahead`` logins before it."""
        return int((ahead + 1) * self._seconds / self.max_running * 1000)

    @contextlib.asynccontextmanager
    async def slot(self, notify: Callable[[int, int], Awaitable[None]]) -> AsyncIterator[None]:
        """Hold one of the ``max_running`` slots for the block.  While it
        waits, ``notify(position, estimated_wait_ms)`` reports the position.
        Raises :class:`LoginQueueFull`."""
        if self.running < self.max_running and not self._waiters:
            self.running += 1
        else:
            await self._wait(notify)
        started = trio.current_time()
        try:
            yield
        finally:
            elapsed = trio.current_time() - started
            self._seconds += (elapsed - self._seconds) / 16
            self._release()

    async def _wait(self, notify: Callable[[int, int], Awaitable[None]]) -> None:
        if len(self._waiters) >= self.max_waiting:
            raise LoginQueueFull(max(1000, self.estimate_ms(len(self._waiters))))
        ticket = self._next_ticket
        self._next_ticket += 1
        admitted = self._waiters[ticket] = trio.Event()
        self.queued_total += 1
        try:
            told: int | None = None
            while not admitted.is_set():
                position = self._position(ticket)
                if position != told:
                    await notify(position, self.estimate_ms(position))
                    told = position
                    if self.interval > 0:
                        with trio.move_on_after(self.interval):
                            await admitted.wait()
                        continue
                # Every admission sets _moved, our own included.
                await self._moved.wait()
        except BaseException:
            if admitted.is_set():
                self._release()  # admitted, but leaving: pass the slot on
            else:
                del self._waiters[ticket]
                bisect.insort(self._left, ticket)
                self._wake()  # those behind moved up
            raise

    def _position(self, ticket: int) -> int:
        gone = bisect.bisect_left(self._left, ticket)
        return ticket - self._head - gone

    def _release(self) -> None:
        self.running -= 1
        while self._waiters and self.running < self.max_running:
            ticket = next(iter(self._waiters))
            self._waiters.pop(ticket).set()
            self.running += 1
            self._head = ticket + 1
            del self._left[: bisect.bisect_left(self._left, self._head)]
        if not self._waiters:
            self._head = self._next_ticket
            self._left.clear()
        self._wake()

    def _wake(self) -> None:
        """Tell every waiting login that positions changed."""
        self._moved.set()
        self._moved = trio.Event()


class FailureLimiter:
    """Failures per key within a sliding window of ``window`` seconds."""

    def __init__(self, *, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def retry_after(self, key: str, now: float) -> float:
        """0 if ``key`` may try now, else seconds until it may."""
        times = self._prune(key, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return times[-self.limit] + self.window - now

    def fail(self, key: str, now: float) -> None:
        times = self._prune(key, now)
        if times is None:
            times = self._failures[key] = collections.deque()
            if len(self._failures) > MAX_TRACKED_KEYS:
                self._failures.popitem(last=False)
        self._failures.move_to_end(key)
        times.append(now)
        while len(times) > self.limit:
            times.popleft()  # older failures cannot matter any more

    def _prune(self, key: str, now: float) -> collections.deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times


def client_host(address: str) -> str:
    """The host part of ``host:port`` or ``[v6]:port``."""
    return address.rsplit(":", 1)[0]


class LoginAdmission:
    """The failed-login limits and the login queue of one node (one worker's
    :class:`~.router.LocalRouter`, or the hub of several workers)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.queue = LoginQueue(
            max_running=settings.max_logins,
            max_waiting=settings.login_queue,
            interval=settings.login_queue_interval,
        )
        self._by_account = FailureLimiter(
            limit=settings.max_failed_logins_per_account, window=settings.login_failure_window
        )
        self._by_address = FailureLimiter(
            limit=settings.max_failed_logins_per_address, window=settings.login_failure_window
        )

    @contextlib.asynccontextmanager
    async def slot(
        self, user: str, address: str, notify: Callable[[int, int], Awaitable[None]]
    ) -> AsyncIterator[None]:
        """Hold a login slot for the block, after the failure limits allowed
        ``user`` from ``address`` to try.  Raises :class:`LoginRateLimited`
        or :class:`LoginQueueFull`."""
        now = trio.current_time()
        wait = max(
            self._by_account.retry_after(user, now), self._by_address.retry_after(address, now)
        )
        if wait > 0:
            raise LoginRateLimited(max(1, int(wait * 1000)))
        async with self.queue.slot(notify):
            yield

    def failed(self, user: str, address: str) -> None:
        """Count a failed login of ``user`` from ``address``."""
        now = trio.current_time()
        self._by_account.fail(user, now)
        self._by_address.fail(address, now)


class LoginService:
    """Serves Login and Logout; tells the application when a login succeeds
    and when a session ends for good."""

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        on_login: Callable[[DeviceSession, DeviceSession | None], Awaitable[None]],
        on_logout: Callable[[DeviceSession], Awaitable[None]],
    ) -> None:
        self._ctx = ctx
        self._on_login = on_login
        self._on_logout = on_logout
        self._pending: set[Peer] = set()

    @property
    def queue(self) -> LoginQueue:
        """This worker's login queue, when it is the whole node (tests)."""
        admission = getattr(self._ctx.router, "admission", None)
        if not isinstance(admission, LoginAdmission):
            raise AttributeError("the login queue is the node's hub's")
        return admission.queue

    def handlers(self) -> dict[type[Packet], Handler]:
        return {Login: self._on_login_packet, Logout: self._on_logout_packet}  # type: ignore[dict-item]

    @property
    def pending(self) -> int:
        """Logins waiting for their final answer on this worker."""
        return len(self._pending)

    def is_pending(self, peer: Peer) -> bool:
        """A Login of ``peer`` waits for its final answer."""
        return peer in self._pending

    # --------------------------------------------------------------- login

    async def _on_login_packet(self, peer: Peer, packet: Login) -> None:
        if peer in self._pending or self._ctx.registry.session_of(peer) is not None:
            await peer.send(packet.failed(AppErrorCode.ALREADY_LOGGED_IN))
            return
        self._pending.add(peer)

        async def run() -> None:
            try:
                await self._login(peer, packet)
            except _StoreFailed as exc:
                # Expected (storage unavailable): the client is told to retry
                # and keeps its connection; the cause is logged, not swallowed.
                peer.log.error(
                    "login failed: storage error", user=packet.user, exc_info=exc.__cause__
                )
                await peer.send(
                    packet.failed(
                        AppErrorCode.SERVER_BUSY,
                        "storage unavailable",
                        retry_after_ms=RETRY_AFTER_MS,
                    )
                )
            finally:
                self._pending.discard(peer)

        peer.start_soon(run, "login")

    async def _login(self, peer: Peer, packet: Login) -> None:
        address = client_host(peer.address)
        router = self._ctx.router

        async def notify(position: int, estimated_ms: int) -> None:
            await peer.send(packet.queued(position=position, estimated_wait_ms=estimated_ms))

        try:
            async with router.login_slot(packet.user, address, notify):
                try:
                    user = await self._ctx.store.get_user(packet.user)
                except StorageError as exc:
                    raise _StoreFailed from exc
                good = await verify_password_async(
                    packet.password, user.password_hash if user is not None else None
                )
        except LoginRateLimited as exc:
            peer.log.warning("login refused: too many failures", user=packet.user)
            await peer.send(
                packet.failed(
                    AppErrorCode.RATE_LIMITED,
                    "too many failed logins",
                    retry_after_ms=exc.retry_after_ms,
                )
            )
            return
        except LoginQueueFull as exc:
            peer.log.warning("login refused: queue full", user=packet.user)
            await peer.send(
                packet.failed(
                    AppErrorCode.LOGIN_QUEUE_FULL,
                    "too many logins waiting",
                    retry_after_ms=exc.retry_after_ms,
                )
            )
            return
        if not good or user is None:
            router.login_failed(packet.user, address)
            peer.log.warning("login failed", user=packet.user, device=packet.device_id)
            await peer.send(packet.failed(AppErrorCode.AUTH_FAILED, "wrong user or password"))
            return
        if user.disabled:
            peer.log.warning("login refused: account disabled", user=user.name)
            await peer.send(packet.failed(AppErrorCode.ACCOUNT_DISABLED, "account disabled"))
            return
        await self._admit(peer, packet)

    async def _admit(self, peer: Peer, packet: Login) -> None:
        ctx = self._ctx
        try:
            device = await ctx.store.register_device(
                packet.user,
                packet.device_id,
                kind=DeviceKind(packet.device_kind.value),
                now=ctx.now_ms() / 1000,
            )
            pending = await ctx.store.pending_count(packet.user, device.cursor)
        except StorageError as exc:
            raise _StoreFailed from exc
        # From the bind to LoginOk nothing awaits, so no push can overtake
        # LoginOk and no other login of the device can slip in between.
        replaced = ctx.registry.bind(
            peer, user=packet.user, device_id=packet.device_id, kind=packet.device_kind.value
        )
        session = ctx.registry.session_of(peer)
        assert session is not None
        # The device pulls up to the head it is told; pushes go on from there.
        ctx.router.outboxes.start(peer, device.cursor + pending)
        peer.send_nowait(
            packet.ok(
                pending=pending,
                cursor=device.cursor,
                recall_window_s=round(ctx.settings.recall_window),
                server_time_ms=ctx.now_ms(),
                heartbeat_s=max(1, int(ctx.settings.heartbeat_interval)),
            )
        )
        await peer.flush()
        peer.log.info(
            "logged in",
            user=packet.user,
            device=packet.device_id,
            kind=packet.device_kind.value,
            version=packet.client_version or None,
            replaced=replaced is not None,
        )
        await self._on_login(session, replaced)

    # -------------------------------------------------------------- logout

    async def _on_logout_packet(self, peer: Peer, packet: Logout) -> None:
        session = self._ctx.registry.session_of(peer)
        assert session is not None  # the application's gate checked it
        await peer.send(packet.ok())
        await self._on_logout(session)
        peer.log.info("logged out", user=session.user, device=session.device_id)
        peer.close_nowait(ErrorCode.NO_ERROR, "logged out")
