"""Child processes in tests: reading their output line by line, and making
sure none outlives its test."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child that imports the project and the tests."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


class LineReader:
    """Whole lines from a child's pipe."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def line(self) -> bytes:
        """The next line without its newline; EOFError at the end."""
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some()
            if not chunk:
                raise EOFError(f"end of output; partial line {self._buffer!r}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line


@contextlib.asynccontextmanager
async def reaped(processes: list[trio.Process]) -> AsyncIterator[list[trio.Process]]:
    """On exit, SIGKILL every process of ``processes`` still running (and
    its process group, for a supervisor's workers) and wait for it."""
    try:
        yield processes
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            with trio.move_on_after(30):
                for process in processes:
                    await process.wait()
