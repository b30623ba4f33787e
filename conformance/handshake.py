"""The suite's handshake driver (§7.3): a client handshake in steps, each of
which a case can replace with something wrong.

Theory of operation
-------------------
The reference ``ClientHandshake`` builds correct packets only.  This driver
uses the same primitives (the transcript, the key schedule, RSA-OAEP and the
signature check of ``elink_protocol.crypto``) but exposes every step:
:meth:`ClientHandshake.send_hello` (any ClientHello, down to its exact
payload bytes), :meth:`ClientHandshake.receive_server_flight` (checks
ServerHello and verifies ServerAuth over the client's own ``T1``),
:meth:`ClientHandshake.finished` (a ClientFinished with any field replaced)
and :meth:`ClientHandshake.receive_finished` (checks ServerFinished and hands
the keys to the connection).  Whatever the server sends wrong is a
:class:`~conformance.results.ServerViolation`; a Close is returned for the
case to judge.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from elink_protocol import CipherSuite, RemoteProtocolError, SignatureAlgorithm
from elink_protocol import packets as p
from elink_protocol.crypto.handshake import SIGNATURE_CONTEXT
from elink_protocol.crypto.identity import rsa_encrypt, verify_signature
from elink_protocol.crypto.keyschedule import (
    Transcript,
    client_finished_binding,
    derive_master,
    derive_prk,
    derive_resumption_secret,
    finished_mac,
    resume_proof,
    server_finished_binding,
)
from elink_protocol.crypto.suites import is_known_suite, suite_params
from elink_protocol.crypto.trust import fingerprint
from elink_protocol.frame import UNNUMBERED, Frame
from elink_protocol.payload import encode_payload

from .results import Fail, ServerViolation
from .wire import Closed, RawConnection, Received, SessionState, describe

MODERN = (
    int(CipherSuite.ECDHE_X25519_AES_256_GCM_SHA256),
    int(CipherSuite.ECDHE_X25519_CHACHA20_POLY1305_SHA256),
)
LEGACY = (
    int(CipherSuite.RSA_AES_256_CBC_HMAC_SHA256),
    int(CipherSuite.RSA_3DES_EDE_CBC_HMAC_SHA256),
    int(CipherSuite.RSA_DES_CBC_HMAC_SHA256),
)
SIGNATURES = (int(SignatureAlgorithm.ED25519), int(SignatureAlgorithm.RSA_PSS_RSAE_SHA256))


@attrs.frozen(kw_only=True)
class Hello:
    """What the ClientHello offers.  Defaults are a correct modern client."""

    versions: tuple[int, ...] = (1,)
    suites: tuple[int, ...] = MODERN
    signature_algorithms: tuple[int, ...] = SIGNATURES
    features: tuple[str, ...] = ()
    key_share: bytes | None = None
    """None: the public key of a fresh X25519 pair when a modern suite is
    offered (empty otherwise); bytes: sent as they are (the exchange then
    uses ``private_key``, if given)."""
    private_key: bytes | None = None
    """The X25519 private key to use (replaying a vector's ClientHello)."""
    random: bytes | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)
    """Keys added to the payload map (unknown keys the server must ignore)."""
    payload: bytes | None = None
    """The exact payload bytes to send instead of an encoding of the above
    (which must still describe them, for the checks of ServerHello)."""


@attrs.frozen(kw_only=True)
class Resume:
    """A request to resume a session in ClientFinished."""

    state: SessionState
    last_processed: int | None = None
    """The ``rl`` to claim; by default the state's own."""
    proof: bytes | None = None
    """The ``rp`` to send; by default the correct proof."""


@attrs.frozen(kw_only=True)
class ServerFlight:
    """ServerHello and ServerAuth as received."""

    hello: p.ServerHello
    auth: p.ServerAuth
    hello_payload: bytes
    auth_payload: bytes


@attrs.frozen(kw_only=True)
class HandshakeInfo:
    """A completed handshake."""

    suite: int
    version: int
    features: tuple[str, ...]
    signature_algorithm: int
    public_key: bytes
    fingerprint: str
    session_id: bytes
    resumed: bool
    server_last_processed: int
    """SF ``rl``: the last client PID the server processed (resumption)."""
    server_random: bytes
    server_key_share: bytes
    client_hello: bytes
    """The exact ClientHello payload sent."""
    client_finished: bytes
    """The exact ClientFinished payload sent."""


class ClientHandshake:
    """One handshake on ``conn`` (see the module docstring)."""

    def __init__(
        self, conn: RawConnection, *, timeout: float, pinned: frozenset[str] | None = None
    ) -> None:
        self.conn = conn
        self.timeout = timeout
        self.pinned = pinned
        self.transcript = Transcript()
        self.hello_options = Hello()
        self.hello: p.ClientHello | None = None
        self.hello_payload = b""
        self.flight: ServerFlight | None = None
        self._private: X25519PrivateKey | None = None
        self._prk = b""
        self._t2 = b""
        self._t3 = b""
        self._master = b""
        self._finished: p.ClientFinished | None = None
        self._finished_payload = b""
        self._resume: Resume | None = None
        self.client_verify = b""
        """The correct ``c_verify`` of the last :meth:`finished` call."""

    # ---------------------------------------------------------- ClientHello

    def build_hello(self, options: Hello) -> tuple[p.ClientHello, bytes]:
        key_share = options.key_share
        if options.private_key is not None:
            self._private = X25519PrivateKey.from_private_bytes(options.private_key)
        if key_share is None:
            if any(suite_params(s).legacy is False for s in options.suites if _known(s)):
                self._private = self._private or X25519PrivateKey.generate()
                key_share = self._private.public_key().public_bytes_raw()
            else:
                key_share = b""
        hello = p.ClientHello(
            versions=options.versions,
            suites=options.suites,
            signature_algorithms=options.signature_algorithms,
            random=options.random or os.urandom(32),
            key_share=key_share,
            features=options.features,
        )
        if options.payload is not None:
            return hello, options.payload
        fields = hello.to_payload()
        fields.update(options.extra)
        return hello, encode_payload(fields)

    def hello_frame(self, options: Hello | None = None) -> bytes:
        """The ClientHello frame for ``options``, added to the transcript
        (for a case that writes the bytes itself)."""
        self.hello_options = options or Hello()
        self.hello, self.hello_payload = self.build_hello(self.hello_options)
        self.transcript.add(p.ClientHello.TYPE, self.hello_payload)
        return Frame(type=p.ClientHello.TYPE, flags=UNNUMBERED, payload=self.hello_payload).encode()

    async def send_hello(self, options: Hello | None = None) -> None:
        frame = self.hello_frame(options)
        assert self.hello is not None
        await self.conn.send_bytes(frame, note=f"{describe(self.hello)} (plaintext)")

    # ------------------------------------------------------- server flight

    async def receive_server_flight(self) -> ServerFlight | Closed:
        """ServerHello then ServerAuth, checked; or the Close the server sent."""
        hello = await self._receive_handshake(p.ServerHello)
        if isinstance(hello, Closed):
            return hello
        assert isinstance(hello.packet, p.ServerHello)
        self._check_server_hello(hello.packet)
        self.transcript.add(p.ServerHello.TYPE, hello.plaintext)
        auth = await self._receive_handshake(p.ServerAuth)
        if isinstance(auth, Closed):
            return auth
        assert isinstance(auth.packet, p.ServerAuth)
        self._check_server_auth(hello.packet, auth.packet)
        self.transcript.add(p.ServerAuth.TYPE, auth.plaintext)
        self._t2 = self.transcript.digest()
        self.flight = ServerFlight(
            hello=hello.packet,
            auth=auth.packet,
            hello_payload=hello.plaintext,
            auth_payload=auth.plaintext,
        )
        return self.flight

    async def _receive_handshake(self, cls: type[p.Packet]) -> Received | Closed:
        event = await self.conn.receive(self.timeout)
        if isinstance(event, Closed):
            return event
        if not isinstance(event.packet, cls):
            raise ServerViolation(
                "7.3", f"expected {cls.__name__}, got {type(event.packet).__name__}"
            )
        return event

    def _check_server_hello(self, sh: p.ServerHello) -> None:
        assert self.hello is not None
        if sh.version not in self.hello.versions:
            raise ServerViolation("7.3.2", f"chose version {sh.version}, which was not offered")
        if sh.suite not in self.hello.suites:
            raise ServerViolation("7.3.2", f"chose suite {sh.suite:#06x}, which was not offered")
        legacy = suite_params(sh.suite).legacy
        if len(sh.key_share) != (0 if legacy else 32):
            raise ServerViolation("7.3.2", f"a {len(sh.key_share)}-byte key share for this suite")
        if not set(sh.features) <= set(self.hello.features):
            raise ServerViolation("7.3.2", f"agreed features {sh.features} that were not offered")

    def _check_server_auth(self, sh: p.ServerHello, sa: p.ServerAuth) -> None:
        assert self.hello is not None
        legacy = suite_params(sh.suite).legacy
        if sa.signature_algorithm not in self.hello.signature_algorithms or (
            legacy and sa.signature_algorithm != SignatureAlgorithm.RSA_PSS_RSAE_SHA256
        ):
            raise ServerViolation(
                "7.3.2", f"signed with algorithm {sa.signature_algorithm:#06x}, not offered"
            )
        presented = fingerprint(sa.public_key)
        if self.pinned is not None and presented not in self.pinned:
            raise Fail(f"the server presented key {presented}, not the one given by --fingerprint")
        try:
            verify_signature(
                SignatureAlgorithm(sa.signature_algorithm),
                sa.public_key,
                sa.signature,
                SIGNATURE_CONTEXT + self.transcript.digest(),
            )
        except RemoteProtocolError as exc:
            raise ServerViolation("7.3.3", f"ServerAuth does not verify: {exc}") from None

    # ------------------------------------------------------- ClientFinished

    def premaster(self) -> tuple[bytes, bytes]:
        """(pre-master secret, key transport) for the negotiated suite."""
        assert self.flight is not None
        sh, sa = self.flight.hello, self.flight.auth
        if suite_params(sh.suite).legacy:
            secret = os.urandom(48)
            return secret, rsa_encrypt(sa.public_key, secret)
        if self._private is None:
            raise RuntimeError("no X25519 private key for this ClientHello")
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(sh.key_share))
        except ValueError:
            raise ServerViolation("7.3.2", "a low-order X25519 key share") from None
        return shared, b""

    def finished(
        self,
        *,
        resume: Resume | None = None,
        key_transport: bytes | None = None,
        premaster: bytes | None = None,
        verify: bytes | None = None,
        resume_fields: tuple[bytes, int, bytes] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> bytes:
        """The ClientFinished payload; every part can be replaced.  The MAC
        is computed over what is sent unless ``verify`` replaces it.
        ``resume_fields`` sets ``(rs, rl, rp)`` as given, consistent or not."""
        assert self.hello is not None and self.flight is not None
        secret, transport = self.premaster()
        if premaster is not None:
            secret = premaster
        if key_transport is not None:
            transport = key_transport
        self._prk = derive_prk(self.hello.random, self.flight.hello.random, secret)
        session, last, proof = b"", 0, b""
        if resume is not None:
            session = resume.state.session_id
            last = (
                resume.state.last_processed
                if resume.last_processed is None
                else resume.last_processed
            )
            proof = (
                resume_proof(resume.state.resumption_secret, self._t2)
                if resume.proof is None
                else resume.proof
            )
        if resume_fields is not None:
            session, last, proof = resume_fields
        binding = client_finished_binding(
            key_transport=transport,
            resume_session=session,
            resume_last_processed=last,
            resume_proof=proof,
        )
        self.client_verify = finished_mac(self._prk, "c finished", self._t2, binding)
        packet = p.ClientFinished(
            verify=self.client_verify if verify is None else verify,
            key_transport=transport,
            resume_session=session,
            resume_last_processed=last,
            resume_proof=proof,
        )
        payload_map = packet.to_payload()
        if fields is not None:
            payload_map.update(fields)
        self._finished = packet
        self._resume = resume
        return encode_payload(payload_map)

    def finished_frame(self, payload: bytes) -> bytes:
        """The ClientFinished frame carrying ``payload`` (from
        :meth:`finished`), added to the transcript."""
        self._finished_payload = payload
        self.transcript.add(p.ClientFinished.TYPE, payload)
        self._t3 = self.transcript.digest()
        self._master = derive_master(self._prk, self._t3)
        return Frame(type=p.ClientFinished.TYPE, flags=UNNUMBERED, payload=payload).encode()

    async def send_finished(self, payload: bytes) -> None:
        frame = self.finished_frame(payload)
        assert self._finished is not None
        await self.conn.send_bytes(frame, note=f"{describe(self._finished)} (plaintext)")

    # ------------------------------------------------------- ServerFinished

    async def receive_finished(self) -> HandshakeInfo | Closed:
        """ServerFinished, checked; installs the keys on the connection."""
        event = await self._receive_handshake(p.ServerFinished)
        if isinstance(event, Closed):
            return event
        sf = event.packet
        assert isinstance(sf, p.ServerFinished) and self.flight is not None
        binding = server_finished_binding(
            session_id=sf.session_id,
            resumed=sf.resumed,
            resume_last_processed=sf.resume_last_processed,
        )
        expected = finished_mac(self._prk, "s finished", self._t3, binding)
        if not hmac.compare_digest(expected, sf.verify):
            raise ServerViolation("7.3.5", "ServerFinished MAC does not verify")
        requested = self._resume.state.session_id if self._resume is not None else None
        if sf.resumed:
            if requested is None or sf.session_id != requested:
                raise ServerViolation("7.3.5", "resumed a session that was not requested")
        elif sf.resume_last_processed != 0:
            raise ServerViolation("7.3.5", f"rl = {sf.resume_last_processed} on a new session")
        elif requested is not None and sf.session_id == requested:
            raise ServerViolation("7.3.5", "refused resumption but kept the old session id")
        secret = (
            self._resume.state.resumption_secret
            if sf.resumed and self._resume is not None
            else derive_resumption_secret(self._master, self._t3)
        )
        self.conn.install_keys(
            suite=self.flight.hello.suite,
            master=self._master,
            session_id=sf.session_id,
            resumption_secret=secret,
        )
        sa = self.flight.auth
        return HandshakeInfo(
            suite=self.flight.hello.suite,
            version=self.flight.hello.version,
            features=self.flight.hello.features,
            signature_algorithm=sa.signature_algorithm,
            public_key=sa.public_key,
            fingerprint=fingerprint(sa.public_key),
            session_id=sf.session_id,
            resumed=sf.resumed,
            server_last_processed=sf.resume_last_processed,
            server_random=self.flight.hello.random,
            server_key_share=self.flight.hello.key_share,
            client_hello=self.hello_payload,
            client_finished=self._finished_payload,
        )

    # --------------------------------------------------------------- whole

    async def run(
        self, hello: Hello | None = None, *, resume: Resume | None = None
    ) -> HandshakeInfo:
        """A complete, correct handshake; fails the case on a Close."""
        await self.send_hello(hello)
        flight = await self.receive_server_flight()
        if isinstance(flight, Closed):
            raise Fail(f"handshake refused: {flight.describe()}")
        await self.send_finished(self.finished(resume=resume))
        info = await self.receive_finished()
        if isinstance(info, Closed):
            raise Fail(f"handshake refused after ClientFinished: {info.describe()}")
        return info


def _known(suite: int) -> bool:
    return is_known_suite(suite)
