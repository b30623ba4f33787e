"""Memory and CPU of processes and of the kernel, read from /proc (Linux).

Read directly rather than through psutil so that the bench (and its smoke
test) needs nothing beyond the project's own dependencies.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import attrs

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    """``pid`` and all its descendants that are still alive."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        for task in _list(f"/proc/{current}/task"):
            text = _read(f"/proc/{current}/task/{task}/children")
            found.extend(int(child) for child in text.split())
    return [p for p in dict.fromkeys(found) if Path(f"/proc/{p}").exists()]


@attrs.frozen
class Usage:
    """A snapshot of a set of processes."""

    rss: int
    """Resident bytes, summed (shared pages counted once per process)."""
    pss: int
    """Proportional set size, summed: shared pages split between sharers,
    so forked workers are not counted twice.  Equals ``rss`` for one process."""
    cpu_seconds: float
    """User + system CPU time consumed so far, summed."""


def usage(pids: Iterable[int]) -> Usage:
    rss = pss = 0
    cpu = 0.0
    for pid in pids:
        for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
        stat = _read(f"/proc/{pid}/stat")
        if stat:
            # Field 2 (comm) may hold spaces: split after its closing paren.
            fields = stat.rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / _TICKS
    return Usage(rss=rss, pss=pss, cpu_seconds=cpu)


@attrs.frozen
class KernelMemory:
    """What the kernel holds for sockets, machine-wide."""

    tcp_buffers: int
    """Bytes of TCP socket buffers (``/proc/net/sockstat`` TCP mem)."""
    slab: int
    """Bytes of kernel slab (socket structures live there); machine-wide, so
    other programs' activity shows up as noise."""
    tcp_sockets: int
    """TCP sockets in use."""


def kernel_memory() -> KernelMemory:
    tcp_mem = tcp_inuse = 0
    for line in _read("/proc/net/sockstat").splitlines():
        if line.startswith("TCP:"):
            parts = line.split()
            values = dict(zip(parts[1::2], parts[2::2], strict=False))
            tcp_mem = int(values.get("mem", 0)) * _PAGE
            tcp_inuse = int(values.get("inuse", 0))
    slab = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("Slab:"):
            slab = int(line.split()[1]) * 1024
    return KernelMemory(tcp_buffers=tcp_mem, slab=slab, tcp_sockets=tcp_inuse)


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def time_wait_sockets() -> int:
    """TCP sockets in TIME_WAIT (they hold ports: wait for them between runs)."""
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in _read(name).splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "06":
                count += 1
    return count


def machine() -> dict[str, object]:
    """What the results were measured on."""
    model = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_total = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
    uname = os.uname()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_total / 2**30, 1),
        "kernel": f"{uname.sysname} {uname.release}",
        "fd_limit": _fd_limit(),
    }


def _fd_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _list(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
