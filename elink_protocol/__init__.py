"""e-Link protocol library: a pure, sans-IO implementation of e-Link v1
(docs/protocol.md).  Bytes in, events out; no sockets, no clock."""

from __future__ import annotations

from . import app as app  # registers the application packets (§11)
from .config import MAX_HEAVY_PAYLOAD, MAX_LIGHT_PAYLOAD, Config, heavy_bus_config
from .connection import Connection, ConnectionStatistics, Transport
from .crypto.identity import ServerIdentity
from .crypto.suites import CipherSuite, SignatureAlgorithm
from .crypto.trust import KnownServers, TrustDecision, fingerprint
from .errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    UntrustedServerKey,
)
from .events import (
    NEED_DATA,
    ConnectionClosed,
    Event,
    HandshakeComplete,
    KeyUpdated,
    ResumeRequested,
)
from .frame import PROTOCOL_VERSION, Priority
from .packets import (
    PACKET_TYPES,
    Ack,
    Bus,
    ClientFinished,
    ClientHello,
    Close,
    Packet,
    Ping,
    Pong,
    Rekey,
    RekeyAck,
    ServerAuth,
    ServerFinished,
    ServerHello,
    UnknownPacket,
)
from .resumption import ResumptionState, SentPacket
from .scheduler import PriorityScheduler, SchedulerStatistics
from .state import ConnectionState, Role

__all__ = [
    "MAX_HEAVY_PAYLOAD",
    "MAX_LIGHT_PAYLOAD",
    "NEED_DATA",
    "PACKET_TYPES",
    "PROTOCOL_VERSION",
    "Ack",
    "Bus",
    "CipherSuite",
    "ClientFinished",
    "ClientHello",
    "Close",
    "Config",
    "Connection",
    "ConnectionClosed",
    "ConnectionState",
    "ConnectionStatistics",
    "ErrorCode",
    "Event",
    "HandshakeComplete",
    "KeyUpdated",
    "KnownServers",
    "LocalProtocolError",
    "Packet",
    "Ping",
    "Pong",
    "Priority",
    "PriorityScheduler",
    "ProtocolError",
    "Rekey",
    "RekeyAck",
    "RemoteProtocolError",
    "ResumeRequested",
    "ResumptionState",
    "Role",
    "SchedulerStatistics",
    "SentPacket",
    "ServerAuth",
    "ServerFinished",
    "ServerHello",
    "ServerIdentity",
    "SignatureAlgorithm",
    "Transport",
    "TrustDecision",
    "UnknownPacket",
    "UntrustedServerKey",
    "fingerprint",
    "heavy_bus_config",
]
