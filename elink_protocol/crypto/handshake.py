"""The e-Link v1 handshake state machines (docs/protocol.md §7.3).

Theory of operation
-------------------
Five plaintext packets, one and a half round trips::

    client                                   server
    ClientHello   ------------------------->
                  <-------------------------  ServerHello + ServerAuth
    ClientFinished ------------------------>  (the server may now send encrypted data)
                  <-------------------------  ServerFinished

Both sides hash every handshake packet into a transcript as it is sent or
received (``u16 type || u32 length || payload``).  ``T1`` (after SH) is what
the server signs, so a man in the middle who edits the ClientHello -- to strip
the modern suites, say -- makes the client's own ``T1`` differ from the
signed one and the signature fails: that is the downgrade protection.  ``T2``
(after SA) and ``T3`` (after CF) key and feed the finished MACs, so neither
side completes unless both saw the same bytes.  The finished MACs also cover
the other fields of their own packet (resumption request, session id), which
the transcript cannot (a packet cannot hash itself).

The objects here never touch the network: :meth:`receive` takes a decoded
packet *and* the exact payload bytes it came in, and returns the packets to
send, each with the exact payload bytes to put on the wire (the transcript
is over those bytes).  Randomness comes from the ``random`` callable, so a
fixed one gives reproducible handshakes (the test vectors do that).

Resumption rides in the handshake: the client's CF names an old session and
proves it holds that session's resumption secret; the server's state machine
stops after verifying CF so the host can look the session up, and continues
with :meth:`ServerHandshake.accept_resume` or
:meth:`ServerHandshake.reject_resume`.
"""

from __future__ import annotations

import abc
import enum
import hmac
import os
from collections.abc import Callable

import attrs
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from elink_protocol.config import Config
from elink_protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    UntrustedServerKey,
)
from elink_protocol.packets import (
    ClientFinished,
    ClientHello,
    Packet,
    ServerAuth,
    ServerFinished,
    ServerHello,
)
from elink_protocol.payload import encode_payload

from .identity import ServerIdentity, rsa_encrypt, verify_signature
from .keyschedule import (
    HASH_LEN,
    Transcript,
    client_finished_binding,
    derive_master,
    derive_prk,
    derive_resumption_secret,
    finished_mac,
    resume_proof,
    server_finished_binding,
)
from .record import RecordProtection, record_protection
from .suites import (
    CipherSuite,
    SignatureAlgorithm,
    is_known_suite,
    suite_params,
)
from .trust import fingerprint

__all__ = [
    "CLIENT_SIGNATURE_ALGORITHMS",
    "SUPPORTED_VERSIONS",
    "ClientHandshake",
    "HandshakeResult",
    "Outgoing",
    "RecordProtection",
    "ResumeRequest",
    "ServerHandshake",
    "record_protection",
]

#: Protocol versions this implementation speaks, most preferred first.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

#: What a client offers in ``ClientHello.signature_algorithms``.
CLIENT_SIGNATURE_ALGORITHMS: tuple[SignatureAlgorithm, ...] = (
    SignatureAlgorithm.ED25519,
    SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
)

#: Prefix of the data the server signs (§7.3.3); a context string keeps the
#: signature from being valid in any other protocol.
SIGNATURE_CONTEXT = b"e-Link v1 server signature\x00"

#: Length of the legacy suites' pre-master secret (§7.3.4).
PREMASTER_LENGTH = 48
RANDOM_LENGTH = 32
SESSION_ID_LENGTH = 16
RESUMPTION_SECRET_LENGTH = 32

Outgoing = list[tuple[Packet, bytes]]
"""Packets to send, each with its exact payload bytes."""


def _out(packet: Packet) -> tuple[Packet, bytes]:
    return (packet, encode_payload(packet.to_payload()))


def _failure(message: str, code: ErrorCode = ErrorCode.HANDSHAKE_FAILURE) -> RemoteProtocolError:
    return RemoteProtocolError(message, code)


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise LocalProtocolError(f"{name} must be a u32, got {value!r}")


def _config_suites(config: Config) -> tuple[CipherSuite, ...]:
    unknown = [s for s in config.suites if not is_known_suite(s)]
    if unknown or not config.suites:
        raise LocalProtocolError(
            f"config.suites must list known cipher suites, got {config.suites!r}"
        )
    return tuple(CipherSuite(s) for s in config.suites)


@attrs.frozen(kw_only=True)
class HandshakeResult:
    """Everything a completed handshake established."""

    version: int
    """The protocol version (1)."""
    suite: CipherSuite
    """The negotiated cipher suite."""
    features: tuple[str, ...]
    """Optional features both sides support (§5.4)."""
    master_secret: bytes = attrs.field(repr=False)
    """Master secret of key epoch 0; feed it to :func:`record_protection`."""
    resumption_secret: bytes = attrs.field(repr=False)
    """The secret that proves ownership of this session in a later resumption:
    fresh for a new session, the session's existing secret when resumed."""
    session_id: bytes
    """16-byte session id: fresh for a new session, the old one when resumed."""
    resumed: bool
    """True when an existing session was resumed."""
    peer_last_processed: int
    """Resumed sessions: the last of *our* PIDs that the peer says it processed.
    0 when not resumed."""
    server_fingerprint: str
    """``SHA256:<hex>`` of the server public key used (§7.8)."""
    signature_algorithm: SignatureAlgorithm
    """The algorithm the server signed with."""
    transcript_hash: bytes
    """T3: the transcript hash through ClientFinished."""


@attrs.frozen(kw_only=True)
class ResumeRequest:
    """A client asked to resume a session (the client's side of the story)."""

    session_id: bytes
    """The 16-byte id of the session to resume."""
    last_processed: int
    """The last of the server's PIDs that the client processed."""


class _State(enum.Enum):
    START = "start"
    WAIT_SERVER_HELLO = "wait ServerHello"
    WAIT_SERVER_AUTH = "wait ServerAuth"
    WAIT_SERVER_FINISHED = "wait ServerFinished"
    WAIT_CLIENT_HELLO = "wait ClientHello"
    WAIT_CLIENT_FINISHED = "wait ClientFinished"
    RESUME_REQUESTED = "resume requested"
    COMPLETE = "complete"
    FAILED = "failed"


class _Handshake(abc.ABC):
    """What both sides share: the transcript, the state, failure handling."""

    _EXPECTED: dict[_State, type[Packet]] = {}

    def __init__(self, config: Config, random: Callable[[int], bytes], state: _State) -> None:
        self._config = config
        self._random = random
        self._state = state
        self._transcript = Transcript()
        self._suite: CipherSuite | None = None
        self._master: bytes | None = None
        self._result: HandshakeResult | None = None

    @property
    def complete(self) -> bool:
        return self._state is _State.COMPLETE

    @property
    def result(self) -> HandshakeResult | None:
        """Set once :attr:`complete`."""
        return self._result

    @property
    def suite(self) -> CipherSuite | None:
        """The negotiated suite, once known."""
        return self._suite

    @property
    def master_secret(self) -> bytes | None:
        """The epoch-0 master secret as soon as this side has it -- the client
        once it has built CF, the server once CF verified (while a resumption
        decision may still be pending) -- else ``None``.  When the keys may be
        used is the connection's business (spec §3.4, §6.5.4)."""
        return self._master

    def _send(self, packet: Packet) -> tuple[Packet, bytes]:
        out = _out(packet)
        self._transcript.add(packet.TYPE, out[1])
        return out

    def receive(self, packet: Packet, payload: bytes) -> Outgoing:
        """Process one inbound handshake packet and its exact payload bytes."""
        if self._state is _State.FAILED:
            raise LocalProtocolError("the handshake already failed")
        if self._state is _State.START:
            raise LocalProtocolError("call start() before receiving")
        expected = self._EXPECTED.get(self._state)
        if expected is None or type(packet) is not expected:
            error = _failure(
                f"unexpected {type(packet).__name__} in state {self._state.value!r}",
                ErrorCode.UNEXPECTED_PACKET,
            )
            if self._state is not _State.COMPLETE:  # a finished result stays valid
                self._state = _State.FAILED
                self._master = None
            raise error
        try:
            return self._handle(packet, payload)
        except RemoteProtocolError:
            self._state = _State.FAILED
            self._master = None
            raise

    @abc.abstractmethod
    def _handle(self, packet: Packet, payload: bytes) -> Outgoing:
        """Process a packet of the type ``_EXPECTED`` names for the state."""


class ClientHandshake(_Handshake):
    """The client side: ``start()``, then ``receive()`` SH, SA (returns CF), SF."""

    _EXPECTED = {
        _State.WAIT_SERVER_HELLO: ServerHello,
        _State.WAIT_SERVER_AUTH: ServerAuth,
        _State.WAIT_SERVER_FINISHED: ServerFinished,
    }

    def __init__(self, config: Config, *, random: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__(config, random, _State.START)
        self._offered = _config_suites(config)
        if config.trusted_server_keys is None and not config.trust_on_first_use:
            raise LocalProtocolError(
                "a client needs trusted_server_keys, or trust_on_first_use=True",
                ErrorCode.INSUFFICIENT_SECURITY,
            )
        self._hello: ClientHello | None = None
        self._server_hello: ServerHello | None = None
        self._ephemeral: X25519PrivateKey | None = None
        self._resume: tuple[bytes, bytes, int] | None = None
        self._prk = b""
        self._t3 = b""
        self._resumption_secret = b""
        self._fingerprint = ""
        self._signature_algorithm = SignatureAlgorithm.ED25519

    def start(self) -> Outgoing:
        """The ClientHello to send first."""
        if self._state is not _State.START:
            raise LocalProtocolError("start() was already called")
        client_random = self._random(RANDOM_LENGTH)
        key_share = b""
        if any(not suite_params(s).legacy for s in self._offered):
            self._ephemeral = X25519PrivateKey.from_private_bytes(self._random(32))
            key_share = self._ephemeral.public_key().public_bytes_raw()
        self._hello = ClientHello(
            versions=SUPPORTED_VERSIONS,
            suites=tuple(int(s) for s in self._offered),
            signature_algorithms=tuple(int(a) for a in CLIENT_SIGNATURE_ALGORITHMS),
            random=client_random,
            key_share=key_share,
            features=self._config.features,
        )
        self._state = _State.WAIT_SERVER_HELLO
        return [self._send(self._hello)]

    def request_resume(
        self, *, session_id: bytes, resumption_secret: bytes, last_processed: int
    ) -> None:
        """Ask to resume a session.  Call before ServerAuth is received (CF,
        which carries the request, is built then)."""
        if self._state not in (_State.START, _State.WAIT_SERVER_HELLO, _State.WAIT_SERVER_AUTH):
            raise LocalProtocolError("request_resume() must come before ServerAuth is received")
        if (
            len(session_id) != SESSION_ID_LENGTH
            or len(resumption_secret) != RESUMPTION_SECRET_LENGTH
        ):
            raise LocalProtocolError("session_id must be 16 bytes, resumption_secret 32 bytes")
        _check_u32("last_processed", last_processed)
        self._resume = (session_id, resumption_secret, last_processed)

    def _handle(self, packet: Packet, payload: bytes) -> Outgoing:
        if isinstance(packet, ServerHello):
            self._on_server_hello(packet, payload)
            return []
        if isinstance(packet, ServerAuth):
            return [self._on_server_auth(packet, payload)]
        assert isinstance(packet, ServerFinished)
        self._on_server_finished(packet)
        return []

    def _on_server_hello(self, sh: ServerHello, payload: bytes) -> None:
        if sh.version not in SUPPORTED_VERSIONS:
            raise _failure(f"server chose version {sh.version}", ErrorCode.UNSUPPORTED_VERSION)
        if sh.suite not in self._offered:
            raise _failure(f"server chose suite {sh.suite:#06x}, which was not offered")
        suite = CipherSuite(sh.suite)
        if len(sh.key_share) != (0 if suite_params(suite).legacy else 32):
            raise _failure("server key share does not fit the chosen suite")
        if not set(sh.features) <= set(self._config.features):
            raise _failure("server chose a feature that was not offered")
        self._suite = suite
        self._server_hello = sh
        self._transcript.add(sh.TYPE, payload)
        self._state = _State.WAIT_SERVER_AUTH

    def _on_server_auth(self, sa: ServerAuth, payload: bytes) -> tuple[Packet, bytes]:
        assert self._hello is not None and self._server_hello is not None
        assert self._suite is not None
        legacy = suite_params(self._suite).legacy
        if sa.signature_algorithm not in CLIENT_SIGNATURE_ALGORITHMS or (
            legacy and sa.signature_algorithm != SignatureAlgorithm.RSA_PSS_RSAE_SHA256
        ):
            raise _failure(f"server chose signature algorithm {sa.signature_algorithm:#06x}")
        algorithm = SignatureAlgorithm(sa.signature_algorithm)
        presented = fingerprint(sa.public_key)
        trusted = self._config.trusted_server_keys
        if trusted is not None and presented not in trusted:
            raise UntrustedServerKey(presented)
        t1 = self._transcript.digest()
        verify_signature(algorithm, sa.public_key, sa.signature, SIGNATURE_CONTEXT + t1)
        self._transcript.add(sa.TYPE, payload)
        t2 = self._transcript.digest()

        key_transport = b""
        if legacy:
            premaster = self._random(PREMASTER_LENGTH)
            key_transport = rsa_encrypt(sa.public_key, premaster)
        else:
            assert self._ephemeral is not None
            try:
                peer = X25519PublicKey.from_public_bytes(self._server_hello.key_share)
                premaster = self._ephemeral.exchange(peer)
            except ValueError:  # all-zero / low-order share
                raise _failure("invalid server X25519 key share") from None
        self._ephemeral = None
        self._prk = derive_prk(self._hello.random, self._server_hello.random, premaster)

        session, proof, last_processed = b"", b"", 0
        if self._resume is not None:
            session, secret, last_processed = self._resume
            proof = resume_proof(secret, t2)
        binding = client_finished_binding(
            key_transport=key_transport,
            resume_session=session,
            resume_last_processed=last_processed,
            resume_proof=proof,
        )
        finished = ClientFinished(
            verify=finished_mac(self._prk, "c finished", t2, binding),
            key_transport=key_transport,
            resume_session=session,
            resume_last_processed=last_processed,
            resume_proof=proof,
        )
        out = self._send(finished)
        self._t3 = self._transcript.digest()
        self._master = derive_master(self._prk, self._t3)
        self._resumption_secret = derive_resumption_secret(self._master, self._t3)
        self._fingerprint = presented
        self._signature_algorithm = algorithm
        self._state = _State.WAIT_SERVER_FINISHED
        return out

    def _on_server_finished(self, sf: ServerFinished) -> None:
        assert self._server_hello is not None and self._suite is not None
        assert self._master is not None
        binding = server_finished_binding(
            session_id=sf.session_id,
            resumed=sf.resumed,
            resume_last_processed=sf.resume_last_processed,
        )
        expected = finished_mac(self._prk, "s finished", self._t3, binding)
        if not hmac.compare_digest(expected, sf.verify):
            raise _failure("server finished MAC does not verify")
        resumption_secret = self._resumption_secret
        if sf.resumed:
            if self._resume is None or sf.session_id != self._resume[0]:
                raise _failure("server resumed a session that was not requested")
            resumption_secret = self._resume[1]
        elif sf.resume_last_processed != 0 or (
            self._resume is not None and sf.session_id == self._resume[0]
        ):
            raise _failure("a new session must have a fresh id and no resume position")
        self._result = HandshakeResult(
            version=self._server_hello.version,
            suite=self._suite,
            features=self._server_hello.features,
            master_secret=self._master,
            resumption_secret=resumption_secret,
            session_id=sf.session_id,
            resumed=sf.resumed,
            peer_last_processed=sf.resume_last_processed if sf.resumed else 0,
            server_fingerprint=self._fingerprint,
            signature_algorithm=self._signature_algorithm,
            transcript_hash=self._t3,
        )
        self._prk = b""
        self._state = _State.COMPLETE


class ServerHandshake(_Handshake):
    """The server side: ``receive()`` CH (returns SH, SA), then CF (returns SF,
    or nothing while a resumption request waits for the host)."""

    _EXPECTED = {
        _State.WAIT_CLIENT_HELLO: ClientHello,
        _State.WAIT_CLIENT_FINISHED: ClientFinished,
    }

    def __init__(self, config: Config, *, random: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__(config, random, _State.WAIT_CLIENT_HELLO)
        if config.identity is None:
            raise LocalProtocolError("a server needs config.identity")
        self._identity: ServerIdentity = config.identity
        self._accepted = _config_suites(config)
        self._hello: ClientHello | None = None
        self._server_hello: ServerHello | None = None
        self._premaster = b""
        self._algorithm = SignatureAlgorithm.ED25519
        self._finished: ClientFinished | None = None
        self._prk = b""
        self._t2 = b""
        self._t3 = b""
        self._resumption_secret = b""
        self._resume_request: ResumeRequest | None = None

    @property
    def resume_request(self) -> ResumeRequest | None:
        """Set while the handshake waits for :meth:`accept_resume` or
        :meth:`reject_resume`."""
        return self._resume_request if self._state is _State.RESUME_REQUESTED else None

    def _handle(self, packet: Packet, payload: bytes) -> Outgoing:
        if isinstance(packet, ClientHello):
            return self._on_client_hello(packet, payload)
        assert isinstance(packet, ClientFinished)
        return self._on_client_finished(packet, payload)

    def _signature_algorithm_for(
        self, hello: ClientHello, legacy: bool
    ) -> SignatureAlgorithm | None:
        """Ed25519 when both sides can, else RSA-PSS; legacy suites always RSA."""
        mine = self._identity.algorithms
        preference = (
            (SignatureAlgorithm.RSA_PSS_RSAE_SHA256,)
            if legacy
            else (SignatureAlgorithm.ED25519, SignatureAlgorithm.RSA_PSS_RSAE_SHA256)
        )
        for algorithm in preference:
            if algorithm in mine and algorithm in hello.signature_algorithms:
                return algorithm
        return None

    def _choose(self, hello: ClientHello) -> tuple[CipherSuite, SignatureAlgorithm]:
        """The first suite in *our* order that the client offered and that we
        can serve (§7.6)."""
        for suite in self._accepted:
            if suite not in hello.suites:
                continue
            legacy = suite_params(suite).legacy
            if legacy and not self._config.allow_legacy_suites:
                continue
            if not legacy and len(hello.key_share) != 32:
                continue
            algorithm = self._signature_algorithm_for(hello, legacy)
            if algorithm is not None:
                return suite, algorithm
        raise _failure("no acceptable cipher suite", ErrorCode.INSUFFICIENT_SECURITY)

    def _on_client_hello(self, ch: ClientHello, payload: bytes) -> Outgoing:
        self._transcript.add(ch.TYPE, payload)
        version = next((v for v in ch.versions if v in SUPPORTED_VERSIONS), None)
        if version is None:
            raise _failure(
                f"no common version in {list(ch.versions)}", ErrorCode.UNSUPPORTED_VERSION
            )
        suite, algorithm = self._choose(ch)
        server_random = self._random(RANDOM_LENGTH)
        key_share = b""
        if not suite_params(suite).legacy:
            ephemeral = X25519PrivateKey.from_private_bytes(self._random(32))
            key_share = ephemeral.public_key().public_bytes_raw()
            try:
                self._premaster = ephemeral.exchange(
                    X25519PublicKey.from_public_bytes(ch.key_share)
                )
            except ValueError:  # all-zero / low-order share
                raise _failure("invalid client X25519 key share") from None
        features = tuple(dict.fromkeys(f for f in ch.features if f in self._config.features))
        self._suite, self._algorithm, self._hello = suite, algorithm, ch
        self._server_hello = ServerHello(
            version=version,
            suite=int(suite),
            random=server_random,
            key_share=key_share,
            features=features,
        )
        out_hello = self._send(self._server_hello)
        signed = SIGNATURE_CONTEXT + self._transcript.digest()  # T1
        auth = ServerAuth(
            signature_algorithm=int(algorithm),
            public_key=self._identity.public_key_bytes(algorithm),
            signature=self._identity.sign(algorithm, signed),
        )
        out_auth = self._send(auth)
        self._t2 = self._transcript.digest()
        self._state = _State.WAIT_CLIENT_FINISHED
        return [out_hello, out_auth]

    def _on_client_finished(self, cf: ClientFinished, payload: bytes) -> Outgoing:
        assert self._hello is not None and self._server_hello is not None
        assert self._suite is not None
        legacy = suite_params(self._suite).legacy
        if bool(cf.key_transport) != legacy:
            raise _failure("key transport present iff the suite is legacy")
        if cf.resume_session:
            if len(cf.resume_proof) != 32:
                raise _failure("resumption request without a proof", ErrorCode.PAYLOAD_INVALID)
        elif cf.resume_proof or cf.resume_last_processed:
            raise _failure("resumption fields without a session", ErrorCode.PAYLOAD_INVALID)
        if legacy:
            # Implicit rejection (RFC 5246 §7.4.7.1): draw the substitute first,
            # use it when OAEP fails, and let the finished MAC fail exactly as it
            # does for any other wrong secret.  No oracle about the RSA result.
            substitute = self._random(PREMASTER_LENGTH)
            decrypted = self._identity.rsa_decrypt_untrusted(cf.key_transport)
            if decrypted is None or len(decrypted) != PREMASTER_LENGTH:
                decrypted = substitute
            self._premaster = decrypted
        self._prk = derive_prk(self._hello.random, self._server_hello.random, self._premaster)
        self._premaster = b""
        binding = client_finished_binding(
            key_transport=cf.key_transport,
            resume_session=cf.resume_session,
            resume_last_processed=cf.resume_last_processed,
            resume_proof=cf.resume_proof,
        )
        expected = finished_mac(self._prk, "c finished", self._t2, binding)
        if not hmac.compare_digest(expected, cf.verify):
            raise _failure("client finished MAC does not verify")
        self._transcript.add(cf.TYPE, payload)
        self._t3 = self._transcript.digest()
        self._master = derive_master(self._prk, self._t3)
        self._resumption_secret = derive_resumption_secret(self._master, self._t3)
        self._finished = cf
        if cf.resume_session:
            self._resume_request = ResumeRequest(
                session_id=cf.resume_session, last_processed=cf.resume_last_processed
            )
            self._state = _State.RESUME_REQUESTED
            return []
        return [self._finish(self._random(SESSION_ID_LENGTH), resumed=False, last_processed=0)]

    def proof_matches(self, resumption_secret: bytes) -> bool:
        """Whether the pending request's proof was made with
        ``resumption_secret`` (constant-time).  A host checks it before it
        touches the session the request names (§7.9.2)."""
        return proof_material_matches(resumption_secret, self.proof_material())

    def proof_material(self) -> bytes:
        """What checking the pending request's proof needs besides the
        secret: T2 and the proof (64 bytes, not secret).  A host whose
        session lives in another process sends this there, and that process
        checks it with :func:`proof_material_matches` before it touches the
        session."""
        if self._state is not _State.RESUME_REQUESTED:
            raise LocalProtocolError("no resumption request is pending")
        assert self._finished is not None
        return self._t2 + self._finished.resume_proof

    def accept_resume(self, *, resumption_secret: bytes, last_processed: int) -> Outgoing:
        """Resume the requested session, whose stored secret is
        ``resumption_secret``; ``last_processed`` is the last client PID this
        server processed.  A proof that does not verify turns this into
        :meth:`reject_resume` (check ``result.resumed``)."""
        if self._state is not _State.RESUME_REQUESTED:
            raise LocalProtocolError("no resumption request is pending")
        if len(resumption_secret) != RESUMPTION_SECRET_LENGTH:
            raise LocalProtocolError("resumption_secret must be 32 bytes")
        _check_u32("last_processed", last_processed)
        assert self._finished is not None
        if not self.proof_matches(resumption_secret):
            return self.reject_resume()
        self._resumption_secret = resumption_secret
        return [
            self._finish(self._finished.resume_session, resumed=True, last_processed=last_processed)
        ]

    def reject_resume(self) -> Outgoing:
        """Refuse the requested session: the connection goes on with a new one."""
        if self._state is not _State.RESUME_REQUESTED:
            raise LocalProtocolError("no resumption request is pending")
        return [self._finish(self._random(SESSION_ID_LENGTH), resumed=False, last_processed=0)]

    def _finish(
        self, session_id: bytes, *, resumed: bool, last_processed: int
    ) -> tuple[Packet, bytes]:
        assert self._server_hello is not None and self._suite is not None
        assert self._master is not None and self._finished is not None
        binding = server_finished_binding(
            session_id=session_id, resumed=resumed, resume_last_processed=last_processed
        )
        finished = ServerFinished(
            verify=finished_mac(self._prk, "s finished", self._t3, binding),
            session_id=session_id,
            resumed=resumed,
            resume_last_processed=last_processed,
        )
        self._result = HandshakeResult(
            version=self._server_hello.version,
            suite=self._suite,
            features=self._server_hello.features,
            master_secret=self._master,
            resumption_secret=self._resumption_secret,
            session_id=session_id,
            resumed=resumed,
            peer_last_processed=self._finished.resume_last_processed if resumed else 0,
            server_fingerprint=fingerprint(self._identity.public_key_bytes(self._algorithm)),
            signature_algorithm=self._algorithm,
            transcript_hash=self._t3,
        )
        self._prk = b""
        self._state = _State.COMPLETE
        return _out(finished)


def proof_material_matches(resumption_secret: bytes, material: bytes) -> bool:
    """Whether ``material`` (from :meth:`ServerHandshake.proof_material`)
    holds a resumption proof made with ``resumption_secret`` (constant-time)."""
    if len(material) != 2 * HASH_LEN:
        return False
    t2, proof = material[:HASH_LEN], material[HASH_LEN:]
    return hmac.compare_digest(resume_proof(resumption_secret, t2), proof)
