"""A load-generator process: thousands of sessions under one Trio loop.

The parent (``cli``) starts several of these (each under the per-process
file-descriptor limit), hands each its users, then drives them in phases
through a command pipe; each answers on a report pipe:

* ``("login", mode, rate, window, timeout)`` -- connect and log in every
  session, all at once (``storm``) or ``rate`` per second with at most
  ``window`` logins in flight (``ramp``); ``progress`` reports while it
  runs, then one ``result`` with the login latencies;
* ``("chat", step, rate, seconds, drain)`` -- one open-loop rate step over
  the process's pairs; waits up to ``drain`` seconds for the stragglers;
* ``("status",)`` -- sessions still logged in, drops, the process's CPU;
* ``("stop",)`` -- close everything and exit.

Sessions never leave the process: a pair's two users live in the same
generator, so send and receive times come from one clock.  Sessions whose
connection is turned away before login (RESOURCE_LIMIT, a refused connect,
a handshake that timed out waiting for a slot) retry with jittered
exponential backoff until the phase deadline, as a real client would; the
retries are counted and reported.  ``ramp`` logins may also be held to a
window of logins in flight, so that the measured latency is the server's
service time rather than a queue the generator built.
"""

from __future__ import annotations

import collections
import errno
import random
import resource
import time
import traceback
from array import array
from multiprocessing.connection import Connection as Pipe
from typing import Any

import trio

from elink_protocol import Config, ErrorCode

from . import sessions
from .sessions import Session

_RETRY_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EAGAIN}
PROGRESS_INTERVAL = 0.25


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StepStats:
    """What one chat step saw in this process."""

    def __init__(self, end: float) -> None:
        self.end = end
        self.latencies = array("d")
        self.seen: dict[int, int | None] = {}
        self.duplicates = 0
        self.in_window = 0
        self.last_receipt = 0.0


class Worker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.kind: str = spec["kind"]  # "elink" or "plain"
        self.password: str = spec.get("password", "")
        self.protocol_config: Config = sessions.elink_config(
            frozenset(spec.get("pin", ())), spec.get("heartbeat")
        )
        self.sessions = [Session(*row) for row in spec["sessions"]]
        by_user = {s.user: s for s in self.sessions}
        self.pairs = [
            (s, by_user[s.peer]) for s in self.sessions if s.peer in by_user and s.user < s.peer
        ]
        self.retry_codes = {
            int(ErrorCode.RESOURCE_LIMIT),
            int(ErrorCode.GOING_AWAY),
            int(ErrorCode.TIMEOUT),
        }
        self.nursery: trio.Nursery
        self.ok = 0
        self.failed = 0
        self.retries = 0
        self.dropped = 0
        self.accepted = 0
        self.pushes = 0
        self.pulls = 0
        self.confirms = 0
        self.longest_queue = 0
        self.login_latencies = array("d")
        self.reasons: collections.Counter[str] = collections.Counter()
        self.last_login_failure: dict[int, str] = {}
        self.steps: dict[int, StepStats] = {}

    # ------------------------------------------------------------ callbacks

    def count_reason(self, reason: str) -> None:
        self.reasons[reason[:120]] += 1

    def on_login_ok(self, s: Session, latency: float) -> None:
        self.ok += 1
        self.login_latencies.append(latency)

    def on_message(self, text: str, cursor: int | None) -> None:
        now = time.perf_counter()
        try:
            step_text, seq_text, sent_text, _ = text.split(":", 3)
            step, seq, scheduled = int(step_text), int(seq_text), float(sent_text)
        except ValueError:
            self.count_reason("unparsable message")
            return
        stats = self.steps.get(step)
        if stats is None:
            return  # a straggler of a step already reported
        if seq in stats.seen:
            if cursor is None or stats.seen[seq] != cursor:
                stats.duplicates += 1
            return
        stats.seen[seq] = cursor
        stats.latencies.append(now - scheduled)
        stats.last_receipt = now
        if now <= stats.end:
            stats.in_window += 1

    # --------------------------------------------------------------- phases

    async def _keep(self, s: Session, deadline: float) -> None:
        """Log ``s`` in (retrying refusals until ``deadline``) and keep it."""
        run = sessions.run_elink if self.kind == "elink" else sessions.run_plain
        s.login_started = time.perf_counter()
        attempt = 0
        while True:
            try:
                reason = await run(self, s)
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, str(exc))
                kind = "refused" if exc.errno in _RETRY_ERRNOS else "failed"
                reason = f"{kind}: connect {name}"
            if reason is None:
                return
            if reason.startswith("refused") and trio.current_time() < deadline:
                self.retries += 1
                self.count_reason(f"retried after {reason}")
                delay = min(5.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.5)
                attempt += 1
                await trio.sleep(delay)
                continue
            self.failed += 1
            self.count_reason(reason)
            return

    async def login(
        self, report: Pipe, mode: str, rate: float, window: int, timeout: float
    ) -> dict[str, Any]:
        cpu0 = cpu_seconds()
        started = time.perf_counter()
        deadline = trio.current_time() + timeout
        total = len(self.sessions)
        done = trio.Event()

        async def starter() -> None:
            t0 = trio.current_time()
            for i, s in enumerate(self.sessions):
                if mode == "ramp":
                    if rate > 0:
                        await trio.sleep_until(t0 + i / rate)
                    while window > 0 and i - self.ok - self.failed >= window:
                        await trio.sleep(0.002)
                self.nursery.start_soon(self._keep, s, deadline)

        async def reporter() -> None:
            while not done.is_set():
                report.send(("progress", self._progress()))
                await trio.sleep(PROGRESS_INTERVAL)

        async with trio.open_nursery() as phase:
            phase.start_soon(starter)
            phase.start_soon(reporter)
            while self.ok + self.failed < total and trio.current_time() < deadline:
                await trio.sleep(0.02)
            done.set()
            phase.cancel_scope.cancel()
        elapsed = time.perf_counter() - started
        unanswered = total - self.ok - self.failed
        if unanswered:
            self.reasons["no login before the deadline"] += unanswered
        last_in = max(self.login_latencies) if self.login_latencies else 0.0
        return {
            "sessions": total,
            "ok": self.ok,
            "failed": self.failed + unanswered,
            "retries": self.retries,
            "longest_queue": self.longest_queue,
            "elapsed": elapsed,
            "last_login_after": last_in,
            "latencies": self.login_latencies.tobytes(),
            "reasons": dict(self.reasons),
            "cpu_seconds": cpu_seconds() - cpu0,
        }

    def _progress(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "retries": self.retries,
            "dropped": self.dropped,
            "longest_queue": self.longest_queue,
        }

    async def chat(
        self, report: Pipe, step: int, rate: float, seconds: float, drain: float
    ) -> dict[str, Any]:
        pairs = [(a, b) for a, b in self.pairs if a.logged_in and b.logged_in]
        pairs = [(a, b) for a, b in pairs if not a.closed and not b.closed]
        cpu0 = cpu_seconds()
        accepted0 = self.accepted
        counts0 = (self.pushes, self.pulls, self.confirms)
        start = time.perf_counter()
        stats = self.steps[step] = StepStats(start + seconds)
        self.steps = {k: v for k, v in self.steps.items() if k >= step - 1}
        total = int(rate * seconds) if pairs else 0
        sent = 0
        last_report = start
        while sent < total:
            now = time.perf_counter()
            due = min(total, int((now - start) * rate) + 1)
            while sent < due:
                k = sent % len(pairs)
                a, b = pairs[k]
                if (sent // len(pairs)) % 2:
                    a, b = b, a
                text = sessions.message_text(step, sent, start + sent / rate)
                sessions.send_chat(self, a, text, f"{step}.{sent}")
                sent += 1
            if now - last_report >= PROGRESS_INTERVAL:
                last_report = now
                report.send(("progress", {"sent": sent, "received": len(stats.seen)}))
            await trio.sleep(0.0005)
        send_done = time.perf_counter()
        with trio.move_on_at(trio.current_time() + max(0.0, start + seconds - send_done) + drain):
            while len(stats.seen) < sent:
                await trio.sleep(0.01)
        return {
            "pairs": len(pairs),
            "sent": sent,
            "send_seconds": send_done - start,
            "received": len(stats.seen),
            "in_window": stats.in_window,
            "last_receipt_after": stats.last_receipt - start if stats.last_receipt else 0.0,
            "duplicates": stats.duplicates,
            "accepted": self.accepted - accepted0,
            "pushes": self.pushes - counts0[0],
            "pulls": self.pulls - counts0[1],
            "confirms": self.confirms - counts0[2],
            "latencies": stats.latencies.tobytes(),
            "cpu_seconds": cpu_seconds() - cpu0,
            "reasons": dict(self.reasons),
        }

    def status(self) -> dict[str, Any]:
        live = sum(1 for s in self.sessions if s.logged_in and not s.closed)
        return {**self._progress(), "live": live, "cpu_seconds": cpu_seconds()}

    async def serve(self, commands: Pipe, report: Pipe) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            while True:
                command = await trio.to_thread.run_sync(commands.recv, abandon_on_cancel=True)
                kind = command[0]
                if kind == "login":
                    result = await self.login(report, *command[1:])
                elif kind == "chat":
                    result = await self.chat(report, *command[1:])
                elif kind == "status":
                    result = self.status()
                elif kind == "stop":
                    nursery.cancel_scope.cancel()
                    report.send(("result", self.status()))
                    return
                else:
                    raise ValueError(f"unknown command {kind!r}")
                report.send(("result", result))


def worker_main(spec: dict[str, Any], commands: Pipe, report: Pipe) -> None:
    """Entry point of a generator process."""
    try:
        trio.run(Worker(spec).serve, commands, report)
    except BaseException:
        report.send(("error", traceback.format_exc()))
        raise
