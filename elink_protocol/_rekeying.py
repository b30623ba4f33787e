"""Key updates during a connection (§7.7), as a part of :class:`Connection`.

The derivation lives in ``crypto.rekey``; this part decides when keys switch.
The initiator switches its sending key when it processes the RekeyAck; the
responder when it seals the RekeyAck (``_pending_switch``, applied by the
sending path).  Both sides start an update at once: the client's wins.
"""

from __future__ import annotations

from . import packets as p
from ._connection_core import S, _ConnectionCore, _Outgoing
from .crypto.rekey import KeyUpdate, respond_to_rekey
from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .events import KeyUpdated
from .frame import Priority
from .state import Role


class _Rekeying(_ConnectionCore):
    """Key updates (see the module docstring)."""

    def start_rekey(self, now: float | None = None) -> None:
        """Start a key update now (§7.7).  Does nothing if one is running."""
        self._tick(now)
        if self._state is not S.ESTABLISHED:
            raise LocalProtocolError("rekeying needs an established connection")
        self._begin_rekey()

    def _begin_rekey(self) -> None:
        assert self._keys is not None and self._result is not None
        if self._rekey is not None or self._pending_switch is not None:
            return
        self._rekey = KeyUpdate(
            suite=self._result.suite,
            master=self._keys.latest_master,
            epoch=self._keys.latest_epoch,
            random=self._random,
        )
        _, payload = self._rekey.initiate()
        self._scheduler.push(
            Priority.CONTROL,
            _Outgoing(type=p.Rekey.TYPE, priority=Priority.CONTROL, payload=payload, numbered=True),
        )

    def _on_rekey(self, packet: p.Rekey, payload: bytes) -> None:
        assert self._keys is not None and self._result is not None
        if self._rekey is not None:
            # Both sides started a rekey at once: the client's wins (§7.7.2).
            if self.role is Role.CLIENT:
                return
            self._rekey = None
        if self._pending_switch is not None:
            raise RemoteProtocolError(
                "a second Rekey before the first completed", ErrorCode.REKEY_FAILURE
            )
        _, ack_payload, master = respond_to_rekey(
            suite=self._result.suite,
            master=self._keys.latest_master,
            epoch=self._keys.latest_epoch,
            rekey=packet,
            rekey_payload=payload,
            random=self._random,
        )
        new_epoch = packet.epoch
        self._keys.install_receive(new_epoch, master)
        self._pending_switch = (new_epoch, master)
        self._scheduler.push(
            Priority.CONTROL,
            _Outgoing(
                type=p.RekeyAck.TYPE, priority=Priority.CONTROL, payload=ack_payload, numbered=True
            ),
        )
        # Everything queued from here on leaves after the RekeyAck, under the
        # new key (the switch happens as the RekeyAck is sealed).
        self._events.append(KeyUpdated(epoch=new_epoch, initiated_locally=False))

    def _on_rekey_ack(self, packet: p.RekeyAck, payload: bytes) -> None:
        assert self._keys is not None
        if self._rekey is None:
            raise RemoteProtocolError("RekeyAck without a Rekey", ErrorCode.REKEY_FAILURE)
        master = self._rekey.complete(packet, payload)
        self._rekey = None
        self._keys.install_receive(packet.epoch, master)
        self._keys.switch_send(packet.epoch, master, peer_holds=True)
        self._reset_epoch_counters()
        self._events.append(KeyUpdated(epoch=packet.epoch, initiated_locally=True))

    def _switch_send_epoch(self) -> None:
        assert self._keys is not None and self._pending_switch is not None
        epoch, master = self._pending_switch
        self._pending_switch = None
        self._keys.switch_send(epoch, master)
        self._reset_epoch_counters()

    def _reset_epoch_counters(self) -> None:
        self._sealed_in_epoch = 0
        self._unnumbered_counter = 0
        self._epoch_started = self._now
