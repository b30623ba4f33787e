"""Packet-id (PID) arithmetic.

PIDs are unsigned 32-bit sequence numbers that wrap around (docs/protocol.md
§4.3).  They are compared with serial-number arithmetic (RFC 1982): ``a`` is
*after* ``b`` when ``(a - b) mod 2**32`` lies in ``1 .. 2**31 - 1``.  No two
PIDs that a receiver must tell apart are ever 2**31 or more apart, because the
receive window (§6.4) is far smaller than that.
"""

from __future__ import annotations

PID_BITS = 32
PID_MODULUS = 1 << PID_BITS
PID_MASK = PID_MODULUS - 1
_HALF = 1 << (PID_BITS - 1)


def pid_add(pid: int, n: int) -> int:
    """``pid + n`` modulo 2**32."""
    return (pid + n) & PID_MASK


def pid_distance(a: int, b: int) -> int:
    """Signed distance ``a - b`` in serial arithmetic, in ``-2**31 .. 2**31-1``."""
    d = (a - b) & PID_MASK
    return d - PID_MODULUS if d >= _HALF else d


def pid_after(a: int, b: int) -> bool:
    """True when ``a`` comes strictly after ``b``."""
    return 0 < ((a - b) & PID_MASK) < _HALF
