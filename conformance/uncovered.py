"""The requirements no case covers, each with the reason.

Every MUST and SHOULD sentence of the spec is either covered by a case or
listed here; ``tests/conformance/test_mapping.py`` checks both directions and
that no entry here is stale (names a requirement that no longer exists, or
one a case covers after all).  Keep the list as short as honesty allows:
when the server's reaction to a client breaking a rule is defined, a case
tests that reaction instead of listing the rule here.
"""

from __future__ import annotations

import enum

import attrs


class Why(enum.Enum):
    """Why a requirement has no case."""

    CLIENT = "an obligation of clients or devices, with no server reaction the spec defines"
    INTERNAL = "a property of the server's internals that does not show on the wire"
    DATAGRAM = (
        "datagram transport only: no e-Link server here listens on UDP, and the suite "
        "adds no case it cannot run against a real server"
    )
    SCHEDULER = (
        "the sender's scheduler order: a server writes what it queued as soon as the stream "
        "takes it, and a client cannot make packets of several classes wait together "
        "(the server's queue bounds are not advertised)"
    )
    UNREACHABLE = "needs a condition a conformance client cannot bring about"


@attrs.frozen
class Uncovered:
    why: Why
    note: str = ""


UNCOVERED: dict[str, Uncovered] = {
    # --- framing --------------------------------------------------------------
    "4.5-3": Uncovered(
        Why.INTERNAL,
        "frames are at most 4180 bytes, so a peer can only make a server buffer more than one "
        "frame if the server reads ahead of its processing, which a client cannot see",
    ),
    "4.6-1": Uncovered(Why.DATAGRAM),
    "4.6-2": Uncovered(Why.DATAGRAM),
    # --- the scheduler (§6.1) -------------------------------------------------
    "6.1.2-1": Uncovered(Why.SCHEDULER),
    "6.1.2-2": Uncovered(Why.SCHEDULER),
    "6.1.2-3": Uncovered(Why.SCHEDULER),
    "6.1.2-4": Uncovered(Why.SCHEDULER),
    "6.1.2-5": Uncovered(Why.SCHEDULER),
    "6.1.2-6": Uncovered(Why.SCHEDULER),
    "6.1.2-7": Uncovered(Why.SCHEDULER),
    "6.1.2-8": Uncovered(Why.SCHEDULER),
    "6.1.6-1": Uncovered(Why.SCHEDULER),
    "6.1.6-2": Uncovered(Why.SCHEDULER),
    "6.1.6-3": Uncovered(Why.SCHEDULER),
    # --- datagram acknowledgements and reliability (§6.3-§6.4, §6.6, §6.8) -----
    "6.3.2-2": Uncovered(Why.DATAGRAM, "ranges exist only above out-of-order datagrams"),
    "6.3.2-3": Uncovered(Why.DATAGRAM),
    "6.3.3-1": Uncovered(Why.DATAGRAM),
    "6.3.4-1": Uncovered(Why.DATAGRAM, "the stream counterpart is 6.5.2-4 (EL-6.5.2-4)"),
    "6.3.4-2": Uncovered(Why.DATAGRAM),
    "6.3.4-3": Uncovered(Why.DATAGRAM),
    "6.4.3-1": Uncovered(Why.DATAGRAM),
    "6.4.4-1": Uncovered(Why.DATAGRAM),
    "6.4.5-1": Uncovered(Why.DATAGRAM),
    "6.4.5-2": Uncovered(Why.DATAGRAM),
    "6.4.6-1": Uncovered(Why.DATAGRAM),
    "6.4.7-1": Uncovered(Why.DATAGRAM),
    "6.4.7-2": Uncovered(Why.DATAGRAM),
    "6.6.2-2": Uncovered(Why.DATAGRAM, "a sender never fragments on a stream (EL-4.1-1 checks)"),
    "6.8.1-1": Uncovered(Why.DATAGRAM),
    "6.8.3-1": Uncovered(Why.DATAGRAM),
    # --- resumption and security ------------------------------------------------
    "6.5.4-1": Uncovered(
        Why.CLIENT,
        "a numbered packet sent right after a resuming ClientFinished races the server's "
        "decision, so its reaction cannot be tested deterministically",
    ),
    "7.2.2-1": Uncovered(
        Why.CLIENT,
        "a verifier's rule; the suite's own verifier applies it to every RSA-PSS signature "
        "the server makes (EL-7.2.2-1)",
    ),
    "7.3.3-2": Uncovered(Why.CLIENT, "the suite pins the server key with --fingerprint"),
    "7.3.4-1": Uncovered(
        Why.CLIENT, "the suite fails any case in which the server's key share is low-order"
    ),
    "7.3.4-5": Uncovered(
        Why.INTERNAL,
        "the order of two internal steps, against a timing side channel; EL-7.3.4-4 checks "
        "that the visible outcome is the same",
    ),
    "7.6.1-2": Uncovered(Why.CLIENT),
    "7.7.1-2": Uncovered(Why.INTERNAL, "whether a private key was erased cannot be seen"),
    "7.7.2-2": Uncovered(
        Why.UNREACHABLE,
        "a server-initiated key update is due after 2^20 packets or an hour by default, and "
        "the server's thresholds are not advertised",
    ),
    "7.8.2-1": Uncovered(Why.CLIENT),
    "7.8.2-2": Uncovered(Why.CLIENT),
    "7.8.2-3": Uncovered(Why.CLIENT),
    "7.11.2-1": Uncovered(Why.INTERNAL, "advice to operators about their key files"),
    # --- the heavy bus (§9) -------------------------------------------------------
    "9.10.1-1": Uncovered(
        Why.INTERNAL,
        "whether identical content is stored once, and when it is deleted, shows only in the "
        "server's storage; a client sees the same answers either way",
    ),
    # --- application protocol -----------------------------------------------------
    "11.1.4-1": Uncovered(Why.CLIENT),
    "11.1.4-2": Uncovered(Why.CLIENT),
    "11.2.7-1": Uncovered(Why.CLIENT),
    "11.2.7-2": Uncovered(Why.CLIENT),
    "11.2.7-3": Uncovered(Why.CLIENT),
    "11.3.2-1": Uncovered(Why.CLIENT),
    "11.3.5-1": Uncovered(Why.CLIENT),
    "11.3.9-1": Uncovered(
        Why.UNREACHABLE, "needs the server to shut down, which a client cannot make it do"
    ),
    "11.3.9-2": Uncovered(Why.CLIENT),
    "11.4.1-2": Uncovered(Why.CLIENT),
    "11.5.2-1": Uncovered(Why.CLIENT),
    "11.5.2.2-1": Uncovered(
        Why.CLIENT, "the server's part, recall entries in every member's log, is EL-11.7.3-2"
    ),
    "11.5.3-1": Uncovered(Why.CLIENT, "pushes are hints; the suite never relies on them"),
    "11.5.3-2": Uncovered(Why.CLIENT),
    "11.5.6-1": Uncovered(Why.CLIENT),
    "11.10-1": Uncovered(Why.CLIENT),
}
