"""The server host: listeners, admission, shutdown and statistics.

Theory of operation
-------------------
:func:`open_server` opens the store and the server key, starts TCP listeners
and the UDP endpoint (``udp.py``, which validates client addresses and hands
each new UDP connection to :meth:`Server._serve`, as TCP does) and yields a
:class:`Server`.  Each accepted connection becomes a
:class:`~elink_server.peer.Peer` (one reader and one timer task, see
``peer.py``) after passing **admission**:

1. Over ``max_connections`` open connections, or with ``handshake_queue``
   connections already waiting, the new one is refused at once with a
   plaintext Close(RESOURCE_LIMIT).
2. Otherwise it waits (reading nothing) for one of ``max_handshakes`` slots
   of a :class:`trio.CapacityLimiter`.  The handshake deadline runs from the
   moment of acceptance (§6.7.3), so a connection that waits too long gets
   Close(TIMEOUT) instead of a slot.
3. The slot is held until the handshake completes or the connection ends:
   the expensive part of a login storm (key exchange and signatures) is
   bounded, and established sessions never compete with it.

**Workers.**  With ``settings.workers`` above one, :func:`open_server` runs
a node instead: a supervisor (this process) and that many worker processes,
each a server of this module given a :class:`WorkerSpec` (its hub link and
the listening sockets it inherited); see :mod:`elink_server.node`.  A worker
admits handshakes within its share of ``max_handshakes`` and
``handshake_queue`` (they bound CPU work, which is per process), holds up to
``max_connections`` connections (file descriptors are per process), and
stops accepting while it is full so that the other workers take the new
connections.

**Shutdown** (the context manager exits, or :meth:`Server.shutdown`): the
listeners close first, so nothing new arrives; every peer is told with
Close(GOING_AWAY) -- waiting ones in plaintext, established ones encrypted
after what was queued for them -- and given ``shutdown_grace`` seconds to
take it; then the remaining tasks are cancelled and the store is closed
(which commits its queued writes).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from elink_protocol import CipherSuite, Config, ErrorCode, Packet, ServerIdentity
from elink_protocol.connection import Connection
from elink_protocol.state import Role

from .identity_store import load_or_create_identity, primary_fingerprint
from .limits import RequestRateLimiter
from .node.control import Rates, totals
from .node.link import Link, LinkBroken
from .node.worker_router import HubRouter
from .peer import Handler, Peer, PeerTransport, Phase, SessionHooks, StreamTransport
from .services.app import Application, build_application
from .services.context import ServiceContext
from .settings import ServerSettings
from .storage import SqliteStore, open_sqlite_store
from .udp import UdpEndpoint, open_udp_socket

if TYPE_CHECKING:
    from .node.supervisor import Node

DATABASE_FILE_NAME = "elink.db"

MODERN_SUITES = (
    CipherSuite.ECDHE_X25519_AES_256_GCM_SHA256,
    CipherSuite.ECDHE_X25519_CHACHA20_POLY1305_SHA256,
)
LEGACY_SUITES = (
    CipherSuite.RSA_AES_256_CBC_HMAC_SHA256,
    CipherSuite.RSA_3DES_EDE_CBC_HMAC_SHA256,
    CipherSuite.RSA_DES_CBC_HMAC_SHA256,
)

logger = structlog.get_logger("elink_server")


@attrs.frozen(kw_only=True)
class ServerStatistics:
    """An immutable snapshot of a server's counters (``Server.statistics()``)."""

    connections: int
    """TCP connections open now (waiting, in handshake and established)."""
    handshakes_waiting: int
    """Connections waiting for a handshake slot (the admission queue)."""
    handshakes_in_progress: int
    """Connections holding a handshake slot."""
    sessions: int
    """Connections whose handshake completed and that are still open."""
    accepted_total: int
    """Connections accepted since start."""
    refused_total: int
    """Connections refused at once (RESOURCE_LIMIT) or shut out while waiting."""
    waited_total: int
    """Connections that had to wait for a handshake slot."""
    handshakes_completed: int
    """Handshakes that completed since start."""
    handshake_failures: int
    """Connections that ended during their handshake (error, deadline, loss)."""
    protocol_errors: int
    """Connections closed because the peer broke the protocol."""
    packets_in: int
    """Numbered packets received, over all connections since start."""
    packets_out: int
    """Numbered packets sent, over all connections since start."""
    bytes_in: int
    """Bytes received, over all connections since start."""
    bytes_out: int
    """Bytes sent, over all connections since start."""


_COUNTERS = ("packets_in", "packets_out", "bytes_in", "bytes_out")

# Codes that mean "the peer broke the protocol", for the statistics.
_NOT_PEER_FAULTS = frozenset(
    {ErrorCode.NO_ERROR, ErrorCode.TIMEOUT, ErrorCode.GOING_AWAY, ErrorCode.INTERNAL_ERROR}
)


def connection_config(settings: ServerSettings, identity: ServerIdentity) -> Config:
    """The protocol library configuration for this server's connections."""
    suites: tuple[int, ...] = MODERN_SUITES
    if settings.allow_legacy_suites:
        suites += LEGACY_SUITES if identity.has_rsa else ()
    return Config(
        identity=identity,
        suites=suites,
        allow_legacy_suites=settings.allow_legacy_suites,
        handshake_timeout=settings.handshake_timeout,
        heartbeat_interval=settings.heartbeat_interval,
        idle_timeout=settings.idle_timeout,
        max_unacked_packets=settings.max_unacked_packets,
        min_rto=settings.min_rto,
        max_rto=settings.max_rto,
        max_retransmissions=settings.max_retransmissions,
    )


@attrs.frozen(kw_only=True)
class WorkerSpec:
    """This server is one worker of a node (``elink_server.node``)."""

    index: int
    """Its number in the node, 0 to ``count - 1``."""
    count: int
    """How many workers the node has."""
    hub: trio.abc.Stream
    """Its link to the node's hub (closed when the server stops)."""
    listeners: tuple[trio.SocketListener, ...] = ()
    """Listening sockets shared with the other workers; none: listen on
    ``settings.host``/``settings.port`` itself (tests)."""
    files_listeners: tuple[trio.SocketListener, ...] = ()
    """The heavy bus's listening sockets, shared likewise (none: the file
    service binds its own)."""


def worker_share(total: int, count: int, *, least: int = 1) -> int:
    """One worker's share of a node-wide limit."""
    return max(least, math.ceil(total / count))


#: How long a full worker leaves new connections to the other workers before
#: it accepts one anyway (and refuses it with RESOURCE_LIMIT: the node is full).
FULL_WORKER_PAUSE = 1.0


class _GatedListener(trio.abc.Listener[trio.SocketStream]):
    """Accepts only while ``server`` has room (see the module docstring)."""

    def __init__(self, inner: trio.SocketListener, server: Server) -> None:
        self._inner = inner
        self._server = server

    async def accept(self) -> trio.SocketStream:
        await self._server._wait_room(FULL_WORKER_PAUSE)
        return await self._inner.accept()

    async def aclose(self) -> None:
        await self._inner.aclose()


class Server:
    """A running server.  Obtain one from :func:`open_server`."""

    def __init__(
        self,
        *,
        settings: ServerSettings,
        identity: ServerIdentity,
        store: SqliteStore,
        services: Mapping[type[Packet], Handler],
        hooks: SessionHooks | None = None,
        context: ServiceContext | None = None,
        worker: WorkerSpec | None = None,
    ) -> None:
        self.settings = settings
        self.worker = worker
        """Which worker of a node this is (None: the whole node)."""
        self.identity = identity
        self.fingerprint = primary_fingerprint(identity)
        """``SHA256:<hex>`` of the server's Ed25519 key, for clients to pin."""
        self.store = store
        self.services = dict(services)
        self.hooks = hooks or SessionHooks()
        self.context = context
        """The services' shared state (None when the caller passed its own
        ``services``)."""
        self.listeners: list[trio.SocketListener] = []
        self.udp: UdpEndpoint | None = None
        """The UDP endpoint (§6.9), unless ``settings.udp`` is off."""
        self._config = connection_config(settings, identity)
        count = 1 if worker is None else worker.count
        self._max_handshakes = worker_share(settings.max_handshakes, count)
        self._handshake_queue = worker_share(settings.handshake_queue, count, least=0)
        self._limiter = trio.CapacityLimiter(self._max_handshakes)
        self._room = trio.Event()
        self._rates = Rates()
        self._started_at = trio.current_time()
        self._peers: set[Peer] = set()
        self._numbers = itertools.count(1)
        self._waiting = 0
        self._closing = False
        self._shutdown_requested = trio.Event()
        self._closed_counts = dict.fromkeys(_COUNTERS, 0)
        self._counts = dict.fromkeys(
            (
                "accepted",
                "refused",
                "waited",
                "handshakes_completed",
                "handshake_failures",
                "protocol_errors",
            ),
            0,
        )

    # ------------------------------------------------------------- public

    @property
    def port(self) -> int:
        """The TCP port of the first listener (the real one when 0 was asked)."""
        return int(self.listeners[0].socket.getsockname()[1])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every listener."""
        return [(str(s[0]), int(s[1])) for s in (x.socket.getsockname() for x in self.listeners)]

    def statistics(self) -> ServerStatistics:
        totals = dict(self._closed_counts)
        phases = dict.fromkeys(Phase, 0)
        for peer in self._peers:
            phases[peer.phase] += 1
            for name, value in peer.statistics().items():
                totals[name] += value
        return ServerStatistics(
            connections=len(self._peers),
            handshakes_waiting=self._waiting,
            handshakes_in_progress=self._limiter.borrowed_tokens,
            sessions=phases[Phase.ESTABLISHED],
            accepted_total=self._counts["accepted"],
            refused_total=self._counts["refused"],
            waited_total=self._counts["waited"],
            handshakes_completed=self._counts["handshakes_completed"],
            handshake_failures=self._counts["handshake_failures"],
            protocol_errors=self._counts["protocol_errors"],
            **totals,
        )

    def counters(self) -> dict[str, Any]:
        """:meth:`statistics` and the services' and store's counters, as the
        status of a node lists them per worker (docs/operators.md)."""
        values: dict[str, Any] = attrs.asdict(self.statistics())
        application = self.hooks
        if isinstance(application, Application):
            values.update(application.statistics())
        store = self.store.statistics()
        values["store_queue"] = store.queued
        values["store_batches"] = store.batches
        values["pid"] = os.getpid()
        values["rss_bytes"] = _rss_bytes()
        return values

    async def status(self, rates: bool = True) -> dict[str, Any]:
        """What ``elink-server status`` prints, for a one-process server:
        the node's layout with this process as its only worker."""

        async def fetch() -> dict[int, dict[str, Any]]:
            return {0: self.counters()}

        stats = await self._rates.collect(fetch, rates=rates)
        uptime = trio.current_time() - self._started_at
        worker = {"index": 0, "state": "running", "restarts": 0, "last_exit": None}
        worker.update(uptime_s=uptime, **stats[0])
        return {
            "node": {
                "pid": os.getpid(),
                "uptime_s": uptime,
                "workers": 1,
                "addresses": [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses],
                "fingerprint": self.fingerprint,
                "data_dir": str(self.settings.data_dir),
            },
            "hub": None,
            "workers": [worker],
            "totals": totals([worker]),
        }

    def locate(self, user: str) -> dict[str, int]:
        """``user``'s logged-in devices here (all on worker 0)."""
        if self.context is None:
            return {}
        return {d.device_id: 0 for d in self.context.registry.devices(user)}

    def shutdown(self) -> None:
        """Ask the server to shut down (what SIGTERM does in ``serve``);
        :meth:`wait_shutdown_requested` returns, and the owner exits the
        context manager."""
        self._shutdown_requested.set()

    async def wait_shutdown_requested(self) -> None:
        """Return once :meth:`shutdown` was called."""
        await self._shutdown_requested.wait()

    # ---------------------------------------------------------- connections

    async def _handle(self, stream: trio.SocketStream) -> None:
        accepted_at = trio.current_time()
        await self._serve(
            StreamTransport(stream),
            Connection(role=Role.SERVER, config=self._config, now=accepted_at),
            accepted_at,
        )

    async def _serve(
        self, transport: PeerTransport, connection: Connection, accepted_at: float
    ) -> None:
        """Admit and serve one connection, TCP or UDP."""
        peer = Peer(
            transport=transport,
            connection=connection,
            number=next(self._numbers),
            services=self.services,
            write_timeout=self.settings.idle_timeout,
            on_established=self._on_established,
            hooks=self.hooks,
            rate_limiter=RequestRateLimiter(
                rate=self.settings.max_requests_per_second,
                burst=self.settings.request_burst,
                now=accepted_at,
            ),
        )
        self._counts["accepted"] += 1
        if self._closing:
            await peer.refuse(ErrorCode.GOING_AWAY, "server shutting down")
            return
        self._peers.add(peer)
        peer.log.info("connection opened")
        try:
            if await self._admit(peer, deadline=accepted_at + self.settings.handshake_timeout):
                await peer.run()
        finally:
            self._release(peer)
            self._peers.discard(peer)
            self._account(peer)
            self._room.set()

    async def _wait_room(self, pause: float) -> None:
        """Wait (at most ``pause`` seconds) until the server holds fewer than
        ``max_connections`` connections."""
        with trio.move_on_after(pause):
            while len(self._peers) >= self.settings.max_connections:
                self._room = trio.Event()
                await self._room.wait()

    async def _admit(self, peer: Peer, *, deadline: float) -> bool:
        """Wait for a handshake slot.  False when refused (the peer was told)."""
        settings = self.settings
        if len(self._peers) > settings.max_connections:
            await self._refuse(peer, ErrorCode.RESOURCE_LIMIT, "too many connections")
            return False
        try:
            self._limiter.acquire_on_behalf_of_nowait(peer)
        except trio.WouldBlock:
            pass
        else:
            peer.holds_handshake_slot = True
            return True
        if self._waiting >= self._handshake_queue:
            await self._refuse(peer, ErrorCode.RESOURCE_LIMIT, "server busy, try later")
            return False
        self._waiting += 1
        self._counts["waited"] += 1
        try:
            with peer.wait_scope, trio.move_on_at(deadline):
                await self._limiter.acquire_on_behalf_of(peer)
                peer.holds_handshake_slot = True
        finally:
            self._waiting -= 1
        if peer.holds_handshake_slot:
            return True
        if peer.going_away:
            await self._refuse(peer, ErrorCode.GOING_AWAY, "server shutting down")
        else:
            await self._refuse(peer, ErrorCode.TIMEOUT, "no handshake slot in time")
        return False

    async def _refuse(self, peer: Peer, code: ErrorCode, reason: str) -> None:
        self._counts["refused"] += 1
        peer.log.warning("connection refused", code=code.name, reason=reason)
        await peer.refuse(code, reason)

    def _release(self, peer: Peer) -> None:
        if peer.holds_handshake_slot:
            peer.holds_handshake_slot = False
            self._limiter.release_on_behalf_of(peer)

    def _on_established(self, peer: Peer) -> None:
        self._counts["handshakes_completed"] += 1
        self._release(peer)

    def _account(self, peer: Peer) -> None:
        for name, value in peer.statistics().items():
            self._closed_counts[name] += value
        code = peer.close_code
        if peer.session_id == b"":
            self._counts["handshake_failures"] += 1
        if code is not None and not peer.closed_by_peer and code not in _NOT_PEER_FAULTS:
            self._counts["protocol_errors"] += 1
        peer.log.info(
            "connection closed",
            code=_code_name(code),
            reason=peer.close_reason,
            by_peer=peer.closed_by_peer,
            session=peer.session_id.hex() or None,
        )

    # ------------------------------------------------------------- shutdown

    async def _go_away(self) -> None:
        self._closing = True
        peers = list(self._peers)
        if peers:
            logger.info("telling connections the server is going away", connections=len(peers))
        with trio.move_on_after(self.settings.shutdown_grace):
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(peer.go_away)
            # Wait until the peers' own tasks closed their transports.
            while self._peers:
                await trio.sleep(0.01)


def _code_name(code: int | None) -> str | None:
    if code is None:
        return None
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"{code:#06x}"


@contextlib.asynccontextmanager
async def open_server(
    settings: ServerSettings,
    *,
    identity: ServerIdentity | None = None,
    services: Mapping[type[Packet], Handler] | None = None,
    worker: WorkerSpec | None = None,
) -> AsyncIterator[Server | Node]:
    """Run an e-Link server inside the caller's Trio program.

    Opens (creating on first use) the data directory's database and server
    key, listens on ``settings.host``/``settings.port`` and serves until the
    block exits, then shuts down gracefully (see the module docstring).
    ``identity`` overrides the stored key (tests); ``services`` maps
    application packet classes to handlers instead of the full application
    (tests of the host); without it the server serves every service of
    :mod:`elink_server.services.app`.

    Yields a :class:`Server`, or with ``settings.workers`` above one a
    :class:`~elink_server.node.supervisor.Node`: this process supervises
    that many worker processes (each runs this function with ``worker``).
    """
    if worker is None and settings.worker_count() > 1:
        if services is not None:
            raise ValueError("services= replaces the application of one process; use workers=1")
        from .node.supervisor import open_node  # the node imports this module

        async with open_node(settings, identity=identity) as node:
            yield node
        return
    async with _open_process_server(settings, identity, services, worker) as server:
        yield server


@contextlib.asynccontextmanager
async def _open_process_server(
    settings: ServerSettings,
    identity: ServerIdentity | None,
    services: Mapping[type[Packet], Handler] | None,
    worker: WorkerSpec | None,
) -> AsyncIterator[Server]:
    log = logger.bind()
    if identity is None:
        stored, created = await trio.to_thread.run_sync(load_or_create_identity, settings.data_dir)
        if created:
            log.info("server key generated", path=str(settings.data_dir))
        identity = stored
    else:
        await trio.to_thread.run_sync(
            lambda: settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        )
    # Listen before opening anything that runs tasks, so that an address in
    # use surfaces as a plain OSError rather than inside an exception group.
    if worker is not None and worker.listeners:
        listeners = list(worker.listeners)
    else:
        listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
    udp_socket: trio.socket.SocketType | None = None
    try:
        # In a node only the first worker serves UDP: its sessions reach the
        # others through the hub like any other (docs/architecture.md).
        if settings.udp and (worker is None or worker.index == 0):
            udp_socket = await _open_udp(settings, listeners)
        async with open_sqlite_store(
            settings.data_dir / DATABASE_FILE_NAME, offline_cap=settings.offline_cap
        ) as store:
            application: Application | None = None
            router: HubRouter | None = None
            if services is None:
                context = ServiceContext(
                    store=store,
                    settings=settings,
                    identity=identity,
                    files_listeners=worker.files_listeners if worker is not None else (),
                )
                if worker is not None:
                    router = HubRouter(context, Link(worker.hub, name="hub"))
                    context.install_router(router)
                application = build_application(context)
                server = Server(
                    settings=settings,
                    identity=identity,
                    store=store,
                    services=application.handlers,
                    hooks=application,
                    context=application.context,
                    worker=worker,
                )
            else:
                server = Server(
                    settings=settings,
                    identity=identity,
                    store=store,
                    services=services,
                    worker=worker,
                )
            server.listeners = listeners
            async with trio.open_nursery() as nursery:
                if application is not None:
                    # The services' background tasks (outboxes, presence
                    # changes the node asks for) end with the server, before
                    # the store closes.
                    application.context.spawn = _spawner(nursery)
                    nursery.start_soon(application.run)
                if router is not None and application is not None:
                    router.attach(application)
                    router.stats = _worker_statistics(server, router)
                    nursery.start_soon(_serve_hub, server, router)
                listen_scope = trio.CancelScope()
                accepting_stopped = trio.Event()
                gated: list[trio.abc.Listener[trio.SocketStream]] = (
                    [_GatedListener(x, server) for x in listeners]
                    if worker is not None
                    else list(listeners)
                )

                async def accept_loop() -> None:
                    try:
                        with listen_scope:
                            await trio.serve_listeners(
                                server._handle, gated, handler_nursery=nursery
                            )
                    finally:
                        accepting_stopped.set()

                nursery.start_soon(accept_loop)
                if udp_socket is not None:
                    server.udp = UdpEndpoint(
                        socket=udp_socket, config=server._config, serve=server._serve
                    )
                    await nursery.start(server.udp.run)
                log.info(
                    "listening",
                    addresses=[f"{h}:{p}" for h, p in server.addresses],
                    fingerprint=server.fingerprint,
                    worker=None if worker is None else worker.index,
                )
                if router is not None:
                    router.link.send("ready", os.getpid())
                try:
                    yield server
                finally:
                    with trio.CancelScope(shield=True):
                        listen_scope.cancel()
                        # Closing a listener under a pending accept() would
                        # raise in the accept task: let it leave first.
                        await accepting_stopped.wait()
                        for listener in listeners:
                            await listener.aclose()
                        if server.udp is not None:
                            server.udp.stop_accepting()
                        await server._go_away()
                    nursery.cancel_scope.cancel()
            log.info("server stopped", **_summary(server.statistics()))
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()  # idempotent
            if udp_socket is not None:
                udp_socket.close()
            if worker is not None:
                await trio.aclose_forcefully(worker.hub)


async def _open_udp(
    settings: ServerSettings, listeners: list[trio.SocketListener]
) -> trio.socket.SocketType:
    """The UDP socket: on ``udp_port``, or on the TCP port's number."""
    if settings.udp_port >= 0:
        return await open_udp_socket(settings.host, settings.udp_port)
    tcp_port = int(listeners[0].socket.getsockname()[1])
    try:
        return await open_udp_socket(settings.host, tcp_port)
    except OSError:
        if settings.port != 0:
            raise
        return await open_udp_socket(settings.host, 0)  # any free port, as asked


def _spawner(nursery: trio.Nursery) -> Callable[[Callable[[], Awaitable[Any]]], None]:
    """Start background tasks in ``nursery``; an exception is logged and ends
    only its own task."""

    async def guarded(fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            await fn()
        except Exception:
            logger.exception("background task failed")

    def spawn(fn: Callable[[], Awaitable[Any]]) -> None:
        nursery.start_soon(guarded, fn)

    return spawn


async def _serve_hub(server: Server, router: HubRouter) -> None:
    """Serve the hub link; once it ends the node is gone: shut down."""
    try:
        await router.run()
    except LinkBroken:
        logger.exception("the link to the hub broke")
    logger.warning("the node's hub is gone: shutting down")
    server.shutdown()


def _worker_statistics(server: Server, router: HubRouter) -> Callable[[], dict[str, Any]]:
    def statistics() -> dict[str, Any]:
        values = server.counters()
        values["hub_queued_bytes"] = router.link.queued_bytes
        values["hub_dropped"] = router.link.dropped
        return values

    return statistics


def _rss_bytes() -> int:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _summary(stats: ServerStatistics) -> dict[str, Any]:
    return {
        "accepted": stats.accepted_total,
        "handshakes": stats.handshakes_completed,
        "protocol_errors": stats.protocol_errors,
    }
