"""The generator processes, seen from the parent: start them, send every one
a command, gather their answers while showing progress, stop them."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from typing import Any

from .targets import Target, user_name

#: Sessions one generator process may hold: each is one descriptor, and the
#: box allows 20,000 per process (FACTS.md); leave room for the rest.
MAX_SESSIONS_PER_PROCESS = 18_000
#: One source address per this many sessions (ephemeral ports are counted per
#: source, destination pair; FACTS.md measures 28,232).
SESSIONS_PER_SOURCE = 10_000


def default_processes(sessions: int) -> int:
    if sessions < 1000:
        return 1
    return max(2, math.ceil(sessions / 7500))


def plan(sessions: int, processes: int) -> list[list[tuple[int, str, str, str]]]:
    """Each process's sessions as (index, user, peer, source address): pairs
    (2k, 2k + 1) stay in one process; sources rotate over 127.0.0.2, .3..."""
    if processes < 1:
        raise ValueError("at least one generator process is needed")
    if math.ceil(sessions / processes) > MAX_SESSIONS_PER_PROCESS:
        raise ValueError(
            f"{sessions} sessions over {processes} processes exceeds "
            f"{MAX_SESSIONS_PER_PROCESS} per process (the descriptor limit): add --processes"
        )
    sources = max(2, math.ceil(sessions / SESSIONS_PER_SOURCE))
    pairs = math.ceil(sessions / 2)
    per_process = math.ceil(pairs / processes)
    chunks: list[list[tuple[int, str, str, str]]] = []
    for p in range(processes):
        rows = []
        for i in range(2 * p * per_process, min(sessions, 2 * (p + 1) * per_process)):
            peer = i + 1 if i % 2 == 0 else i - 1
            peer_name = user_name(peer) if peer < sessions else ""
            rows.append((i, user_name(i), peer_name, f"127.0.0.{2 + i % sources}"))
        if rows:
            chunks.append(rows)
    return chunks


class GeneratorError(RuntimeError):
    """A generator process failed or did not answer."""


class Fleet:
    def __init__(
        self,
        target: Target,
        sessions: int,
        processes: int,
        password: str,
        heartbeat: float | None = None,
    ) -> None:
        self.target = target
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._commands: list[Pipe] = []
        self._reports: list[Pipe] = []
        context = multiprocessing.get_context("spawn")
        from .generator import worker_main

        for rows in plan(sessions, processes):
            spec = {
                "host": target.host,
                "port": target.port,
                "kind": target.kind,
                "pin": list(target.pin),
                "password": password,
                "sessions": rows,
                "heartbeat": heartbeat,
            }
            command_out, command_in = context.Pipe(duplex=False)
            report_out, report_in = context.Pipe(duplex=False)
            process = context.Process(
                target=worker_main, args=(spec, command_out, report_in), daemon=True
            )
            process.start()
            command_out.close()
            report_in.close()
            self._processes.append(process)
            self._commands.append(command_in)
            self._reports.append(report_out)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def __len__(self) -> int:
        return len(self._processes)

    def command(
        self,
        command: tuple[Any, ...] | Sequence[tuple[Any, ...]],
        *,
        timeout: float,
        progress: Callable[[dict[str, float]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Send ``command`` (one for all, or one per process); return each
        process's result, in process order."""
        commands = command if isinstance(command, list) else [command] * len(self)
        for pipe, item in zip(self._commands, commands, strict=True):
            pipe.send(item)
        results: dict[int, dict[str, Any]] = {}
        latest: dict[int, dict[str, float]] = {}
        deadline = time.monotonic() + timeout
        while len(results) < len(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise GeneratorError(f"generators did not answer {commands[0][0]!r} in time")
            for ready in wait(self._reports, timeout=min(left, 0.25)):
                index = self._reports.index(ready)  # type: ignore[arg-type]
                try:
                    kind, payload = self._reports[index].recv()
                except EOFError:
                    raise GeneratorError(f"generator {index} exited") from None
                if kind == "progress":
                    latest[index] = payload
                elif kind == "result":
                    results[index] = payload
                else:
                    raise GeneratorError(f"generator {index} failed:\n{payload}")
            if progress is not None and latest:
                total: dict[str, float] = {}
                for values in latest.values():
                    for key, value in values.items():
                        total[key] = total.get(key, 0) + value
                progress(total)
        return [results[i] for i in range(len(self))]

    def close(self) -> None:
        with contextlib.suppress(GeneratorError, OSError):
            self.command(("stop",), timeout=60)
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in (*self._commands, *self._reports):
            pipe.close()
