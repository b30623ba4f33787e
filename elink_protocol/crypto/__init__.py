"""e-Link v1 cryptography (docs/protocol.md §7): cipher suites, the handshake,
the key schedule, record protection, key updates and server trust.

Everything here is sans-IO and deterministic given the ``random`` callable.
"""

from __future__ import annotations

from .handshake import (
    ClientHandshake,
    HandshakeResult,
    Outgoing,
    ResumeRequest,
    ServerHandshake,
)
from .identity import ServerIdentity, verify_signature
from .keyschedule import Direction, expand_label
from .record import MAX_RECORD_OVERHEAD, RecordProtection, record_protection
from .rekey import KeyUpdate, respond_to_rekey
from .suites import CipherSuite, SignatureAlgorithm
from .trust import KnownServers, TrustDecision, fingerprint, host_port

__all__ = [
    "MAX_RECORD_OVERHEAD",
    "CipherSuite",
    "ClientHandshake",
    "Direction",
    "HandshakeResult",
    "KeyUpdate",
    "KnownServers",
    "Outgoing",
    "RecordProtection",
    "ResumeRequest",
    "ServerHandshake",
    "ServerIdentity",
    "SignatureAlgorithm",
    "TrustDecision",
    "expand_label",
    "fingerprint",
    "host_port",
    "record_protection",
    "respond_to_rekey",
    "verify_signature",
]
