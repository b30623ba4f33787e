"""When the previous receive key may be retired (§7.7.2 item 4)."""

from __future__ import annotations

from elink_protocol.crypto.suites import CipherSuite
from elink_protocol.keyring import KeyRing
from elink_protocol.state import Role

MASTER = bytes(32)


def test_the_initiator_keeps_the_old_key_until_it_switched_itself() -> None:
    ring = KeyRing(CipherSuite.ECDHE_X25519_AES_256_GCM_SHA256, MASTER, Role.CLIENT, grace=1.0)
    ring.install_receive(1, bytes(range(32)))  # derived from the peer's RekeyAck ...
    ring.on_received_in(1, now=0.0)  # ... whose later frames arrive first
    assert ring.get_timer() is None  # a gap below the RekeyAck may still need epoch 0
    ring.handle_timer(100.0)
    assert ring.receiving(0) is not None
    ring.switch_send(1, bytes(range(32)), peer_holds=True)  # RekeyAck processed
    ring.on_received_in(1, now=5.0)
    assert ring.get_timer() == 6.0
    ring.handle_timer(6.0)
    assert ring.receiving(0) is None and ring.receiving(1) is not None
