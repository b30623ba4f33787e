"""The hub of a node: the tables that span its workers, and the routing
between them.

Theory of operation
-------------------
The hub runs in the supervisor process.  Each worker has one
:class:`~.link.Link` to it (a Unix socketpair the supervisor made).  The hub
keeps what must be one for the whole node:

* **placements** -- which worker holds each logged-in session, by session
  id and by ``(user, device)``.  Workers report logins (``online``), ends
  (``gone``) and handovers; a resumable session whose connection was lost is
  still placed on its worker until it expires there.
* **presence** -- the :class:`~elink_server.services.presence_table.
  PresenceTable` of every device of the node.  The calls that change it
  return the PresenceUpdate to publish; the calling worker publishes it (it
  has the store, to read the followers).
* **login admission** -- :class:`~elink_server.services.login.
  LoginAdmission`: one login queue and one set of failed-login limits for
  the node.

and it forwards what one worker sends for sessions another holds:

* ``ent`` (log entries) and ``note`` (live notices) go to every *other*
  worker holding a device of the named users -- the sender delivered to its
  own devices itself;
* ``sess`` (packets for one session) goes to the worker holding it.

**Handover** (resumption on another worker, §6.5.6).  Worker B calls
``take(S)``; the hub asks the holder A with ``hand``; A closes the old
connection, takes the final state, unbinds the session and answers
``handed``.  The hub, while reading that answer and before reading anything
else from A, moves the placement to B, answers B's call and tells A
``moved``.  Until A reads ``moved`` it forwards to the session (as ``sess``)
any entry or notice the hub routed to A for that user, so nothing sent in
the meantime is lost; A's own messages sent after ``handed`` are routed to
B already.  Because every link keeps order and the hub handles one message
at a time, no entry falls between the two workers -- with one more rule:
the hub never routes a worker's own entries back to it (it delivered them
itself), but while B takes S over, B's own deliveries cannot reach S yet.
So B names the sessions it is taking in each ``ent``/``note`` it sends
meanwhile, and the hub, if S is placed on B by the time it reads that
message, sends the entries of S's user back to B for S alone (``sesse``,
``sess``).

**A worker that dies** loses its sessions (their clients log in again and
pull, §11.3.9: nothing durable is lost).  The hub removes its placements,
publishes the devices going offline through another worker, gives its login
slots back, and answers pending takes that involve it with "no".
"""

from __future__ import annotations

import collections
import functools
import itertools
from collections.abc import Sequence
from typing import Any

import attrs
import structlog
import trio

from elink_protocol.app import DeviceKind, PresenceStatus, PresenceUpdate
from elink_server.services.context import wall_clock_ms
from elink_server.services.login import LoginAdmission, LoginQueueFull, LoginRateLimited
from elink_server.services.presence_table import PresenceTable
from elink_server.settings import ServerSettings

from .codec import packet_value
from .link import Link, LinkClosed

logger = structlog.get_logger("elink_server")

#: Presence updates kept for publishing while no worker is up.
MAX_PENDING_PUBLISH = 10_000
#: Longest wait for a worker's statistics.
STATS_TIMEOUT = 5.0


@attrs.define(eq=False)
class _Placement:
    user: str
    device: str
    kind: str
    session: bytes
    worker: int


@attrs.define(eq=False)
class _Take:
    origin: int
    call_id: int
    session: bytes
    holder: int
    origin_alive: bool = True


@attrs.define(eq=False)
class WorkerLink:
    """One worker as the hub sees it."""

    index: int
    link: Link
    pid: int = 0
    ready: trio.Event = attrs.Factory(trio.Event)
    logins: dict[int, trio.CancelScope] = attrs.Factory(dict)
    nursery: trio.Nursery | None = None


@attrs.frozen(kw_only=True)
class HubStatistics:
    """An immutable snapshot of the hub's tables and traffic."""

    workers: int
    """Workers connected now."""
    sessions: int
    """Logged-in sessions placed on a worker (resumable ones included)."""
    online_users: int
    """Users with at least one device in the presence table."""
    logins_running: int
    """Logins holding one of the node's ``max_logins`` slots."""
    logins_waiting: int
    """Logins in the node's login queue."""
    logins_queued_total: int
    """Logins that had to wait, since start."""
    handovers_pending: int
    """Sessions being handed from one worker to another now."""
    handovers_total: int
    """Sessions handed from one worker to another, since start."""
    forwarded_total: int
    """Messages forwarded from one worker to another, since start."""
    dropped_total: int
    """Forwarded pushes dropped because a worker's link was full."""


class Hub:
    """The node-wide tables and routing (see the module docstring)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.presence = PresenceTable()
        self.admission = LoginAdmission(settings)
        self._workers: dict[int, WorkerLink] = {}
        self._placements: dict[bytes, _Placement] = {}
        self._by_user: dict[str, dict[str, _Placement]] = {}
        self._takes: dict[int, _Take] = {}
        self._take_ids = itertools.count(1)
        self._publish_later: collections.deque[tuple[str, PresenceUpdate]] = collections.deque(
            maxlen=MAX_PENDING_PUBLISH
        )
        self._handovers = 0
        self._forwarded = 0

    # ------------------------------------------------------------------ workers

    async def serve(
        self,
        index: int,
        stream: trio.abc.Stream,
        *,
        task_status: trio.TaskStatus[WorkerLink] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve worker ``index`` over ``stream`` until its link ends (the
        worker stopped or died), then forget what it held."""
        worker = WorkerLink(index=index, link=Link(stream, name=f"worker {index}"))
        previous = self._workers.get(index)
        if previous is not None:
            self._worker_gone(previous)
        self._workers[index] = worker
        try:
            async with trio.open_nursery() as nursery:
                worker.nursery = nursery
                task_status.started(worker)
                await worker.link.run(
                    functools.partial(self._on_message, worker),
                    functools.partial(self._on_call, worker),
                )
                nursery.cancel_scope.cancel()
        finally:
            self._worker_gone(worker)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    def workers(self) -> list[WorkerLink]:
        """The connected workers, by index."""
        return [self._workers[i] for i in sorted(self._workers)]

    async def worker_statistics(self) -> dict[int, dict[str, Any]]:
        """Every ready worker's counters (those that do not answer within
        :data:`STATS_TIMEOUT` are left out)."""
        results: dict[int, dict[str, Any]] = {}

        async def one(worker: WorkerLink) -> None:
            try:
                results[worker.index] = await worker.link.call("stats", timeout=STATS_TIMEOUT)
            except (LinkClosed, trio.TooSlowError):
                pass
            except Exception:
                logger.exception("worker statistics failed", worker=worker.index)

        async with trio.open_nursery() as nursery:
            for worker in self.workers():
                if worker.ready.is_set():
                    nursery.start_soon(one, worker)
        return results

    def locate(self, user: str) -> dict[str, int]:
        """``user``'s logged-in devices and the worker holding each."""
        return {d: p.worker for d, p in self._by_user.get(user, {}).items()}

    def statistics(self) -> HubStatistics:
        queue = self.admission.queue
        return HubStatistics(
            workers=len(self._workers),
            sessions=len(self._placements),
            online_users=len(self.presence),
            logins_running=queue.running,
            logins_waiting=queue.waiting,
            logins_queued_total=queue.queued_total,
            handovers_pending=len(self._takes),
            handovers_total=self._handovers,
            forwarded_total=self._forwarded,
            dropped_total=sum(w.link.dropped for w in self._workers.values()),
        )

    def _worker_gone(self, worker: WorkerLink) -> None:
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        worker.link.close()
        for scope in worker.logins.values():
            scope.cancel()
        for take_id, take in list(self._takes.items()):
            if take.holder == worker.index:
                del self._takes[take_id]
                self._reply(take.origin, take.call_id, None)
            elif take.origin == worker.index:
                take.origin_alive = False
        for placement in [p for p in self._placements.values() if p.worker == worker.index]:
            self._unplace(placement)
            update = self.presence.gone(
                placement.user,
                placement.device,
                kind=DeviceKind(placement.kind),
                session=placement.session,
                now_ms=_now_ms(),
            )
            if update is not None:
                self._publish(placement.user, update)

    # ----------------------------------------------------------------- messages

    def _on_message(self, worker: WorkerLink, op: str, args: list[Any]) -> None:
        if op == "ent":
            self._route_entries(worker, args[0])
            if len(args) > 1 and args[1]:
                self._bounce_entries(worker, args[0], args[1])
        elif op == "note":
            self._route_notice(worker, args[0], args[1])
            if len(args) > 2 and args[2]:
                self._bounce_notice(worker, args[0], args[1], args[2])
        elif op == "sess":
            placement = self._placements.get(args[0])
            if placement is not None and placement.worker != worker.index:
                self._send(placement.worker, "sess", args[0], args[1])
        elif op == "fail":
            self.admission.failed(str(args[0]), str(args[1]))
        elif op == "login":
            assert worker.nursery is not None
            # Registered now: an "ldone" read before the task starts cancels it.
            login = worker.logins[args[0]] = trio.CancelScope()
            worker.nursery.start_soon(
                self._login, worker, args[0], str(args[1]), str(args[2]), login
            )
        elif op == "ldone":
            done = worker.logins.get(args[0])
            if done is not None:
                done.cancel()
        elif op == "handed":
            self._handed(worker, args[0], args[1])
        elif op == "ready":
            worker.pid = int(args[0])
            worker.ready.set()
            while self._publish_later:
                self._publish(*self._publish_later.popleft())
        else:
            logger.warning("unknown message from a worker", worker=worker.index, op=op)

    def _route_entries(self, origin: WorkerLink, pairs: list[list[Any]]) -> None:
        by_worker: dict[int, list[list[Any]]] = {}
        for pair in pairs:
            devices = self._by_user.get(pair[0])
            if not devices:
                continue
            for index in {p.worker for p in devices.values()}:
                if index != origin.index:
                    by_worker.setdefault(index, []).append(pair)
        for index, items in by_worker.items():
            self._send(index, "ent", items, droppable=True)

    def _route_notice(self, origin: WorkerLink, users: Sequence[str], packet: Any) -> None:
        by_worker: dict[int, list[str]] = {}
        for user in users:
            devices = self._by_user.get(user)
            if not devices:
                continue
            for index in {p.worker for p in devices.values()}:
                if index != origin.index:
                    by_worker.setdefault(index, []).append(user)
        for index, targets in by_worker.items():
            self._send(index, "note", targets, packet, droppable=True)

    def _arrived(self, origin: WorkerLink, sessions: list[bytes]) -> list[_Placement]:
        """Of the sessions ``origin`` is taking over, those placed on it now."""
        found = []
        for session in sessions:
            placement = self._placements.get(bytes(session))
            if placement is not None and placement.worker == origin.index:
                found.append(placement)
        return found

    def _bounce_entries(
        self, origin: WorkerLink, pairs: list[list[Any]], sessions: list[bytes]
    ) -> None:
        """``origin`` delivered ``pairs`` itself while taking ``sessions``
        over; the ones placed on it now did not get them (see "Handover")."""
        for placement in self._arrived(origin, sessions):
            blobs = [blob for user, blob in pairs if user == placement.user]
            if blobs:
                self._send(origin.index, "sesse", placement.session, blobs, droppable=True)

    def _bounce_notice(
        self, origin: WorkerLink, users: Sequence[str], packet: Any, sessions: list[bytes]
    ) -> None:
        for placement in self._arrived(origin, sessions):
            if placement.user in users:
                self._send(origin.index, "sess", placement.session, [packet], droppable=True)

    def _send(self, index: int, op: str, *args: Any, droppable: bool = False) -> None:
        worker = self._workers.get(index)
        if worker is None:
            return
        try:
            if worker.link.send(op, *args, droppable=droppable):
                self._forwarded += 1
        except LinkClosed:
            pass

    def _reply(self, index: int, call_id: int, value: Any) -> None:
        worker = self._workers.get(index)
        if worker is not None:
            worker.link.reply(call_id, value)

    def _publish(self, user: str, update: PresenceUpdate) -> None:
        """Have some worker publish a change the hub made (its followers
        are in the store, which the hub does not open)."""
        for worker in self.workers():
            if worker.ready.is_set() and not worker.link.closed:
                worker.link.send("publish", user, packet_value(update))
                return
        self._publish_later.append((user, update))

    # -------------------------------------------------------------------- calls

    def _on_call(self, worker: WorkerLink, call_id: int, op: str, args: list[Any]) -> None:
        link = worker.link
        if op == "online":
            user, device, kind, session, now_ms = args
            update = self._online(
                worker, user, device, kind=kind, session=bytes(session), now_ms=now_ms
            )
            link.reply(call_id, None if update is None else packet_value(update))
        elif op == "presence":
            user, device, kind, session, status, note, now_ms = args
            update = None
            if self._owns(worker, bytes(session)):
                update = self.presence.change(
                    user,
                    device,
                    kind=DeviceKind(kind),
                    session=bytes(session),
                    status=PresenceStatus(status),
                    note=note,
                    now_ms=now_ms,
                )
            link.reply(call_id, None if update is None else packet_value(update))
        elif op == "gone":
            user, device, kind, session, now_ms = args
            update = None
            if self._owns(worker, bytes(session)):
                self._unplace(self._placements[bytes(session)])
                update = self.presence.gone(
                    user, device, kind=DeviceKind(kind), session=bytes(session), now_ms=now_ms
                )
            link.reply(call_id, None if update is None else packet_value(update))
        elif op == "query":
            link.reply(call_id, [self.presence.entry(str(u)).to_wire() for u in args[0]])
        elif op == "take":
            self._take(worker, call_id, bytes(args[0]), bytes(args[1]))
        else:
            link.fail(call_id, f"unknown call {op!r}")

    def _owns(self, worker: WorkerLink, session: bytes) -> bool:
        placement = self._placements.get(session)
        return placement is not None and placement.worker == worker.index

    def _online(
        self, worker: WorkerLink, user: str, device: str, *, kind: str, session: bytes, now_ms: int
    ) -> PresenceUpdate | None:
        devices = self._by_user.setdefault(user, {})
        old = devices.get(device)
        if old is not None and old.session != session:
            # §11.3.6 rule 4: the older session of the device ends.  On the
            # same worker the login replaced it already.
            self._placements.pop(old.session, None)
            if old.worker != worker.index:
                self._send(old.worker, "replace", old.session)
        placement = _Placement(
            user=user, device=device, kind=kind, session=session, worker=worker.index
        )
        devices[device] = placement
        self._placements[session] = placement
        return self.presence.online(
            user, device, kind=DeviceKind(kind), session=session, now_ms=now_ms
        )

    def _unplace(self, placement: _Placement) -> None:
        if self._placements.get(placement.session) is placement:
            del self._placements[placement.session]
        devices = self._by_user.get(placement.user)
        if devices is not None and devices.get(placement.device) is placement:
            del devices[placement.device]
            if not devices:
                del self._by_user[placement.user]

    # ---------------------------------------------------------------- handover

    def _take(self, origin: WorkerLink, call_id: int, session: bytes, proof: bytes) -> None:
        placement = self._placements.get(session)
        if (
            placement is None
            or placement.worker == origin.index
            or placement.worker not in self._workers
        ):
            origin.link.reply(call_id, None)
            return
        take_id = next(self._take_ids)
        self._takes[take_id] = _Take(
            origin=origin.index, call_id=call_id, session=session, holder=placement.worker
        )
        # The holder checks the proof before it touches the session (§7.9.2).
        self._send(placement.worker, "hand", session, proof, take_id)

    def _handed(self, holder: WorkerLink, take_id: int, value: Any) -> None:
        take = self._takes.pop(take_id, None)
        if take is None or take.holder != holder.index:
            return
        placement = self._placements.get(take.session)
        if value is None or placement is None:
            self._reply(take.origin, take.call_id, None)
            return
        if not take.origin_alive or take.origin not in self._workers:
            # Handed over to a worker that died meanwhile: the session ends.
            self._unplace(placement)
            update = self.presence.gone(
                placement.user,
                placement.device,
                kind=DeviceKind(placement.kind),
                session=placement.session,
                now_ms=_now_ms(),
            )
            if update is not None:
                self._publish(placement.user, update)
            self._send(holder.index, "moved", take.session)
            return
        # Read before anything else from the holder: its later messages for
        # the session are routed to the new worker.
        placement.worker = take.origin
        self._handovers += 1
        self._reply(take.origin, take.call_id, value)
        self._send(holder.index, "moved", take.session)

    # ------------------------------------------------------------------- logins

    async def _login(
        self, worker: WorkerLink, token: int, user: str, address: str, scope: trio.CancelScope
    ) -> None:
        link = worker.link

        async def notify(position: int, estimated_ms: int) -> None:
            if not link.closed:
                link.send("lpos", token, position, estimated_ms)

        try:
            with scope:
                await trio.lowlevel.checkpoint()  # given up already: leave
                try:
                    async with self.admission.slot(user, address, notify):
                        if not link.closed:
                            link.send("lgo", token)
                        await trio.sleep_forever()  # until "ldone" cancels
                except LoginRateLimited as exc:
                    if not link.closed:
                        link.send("lno", token, "rate", exc.retry_after_ms)
                except LoginQueueFull as exc:
                    if not link.closed:
                        link.send("lno", token, "full", exc.retry_after_ms)
        finally:
            if worker.logins.get(token) is scope:
                del worker.logins[token]


def _now_ms() -> int:
    return wall_clock_ms()
