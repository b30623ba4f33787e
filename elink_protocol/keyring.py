"""Record keys per epoch for one connection (§7.5, §7.7).

The sender uses exactly one epoch at a time.  The receiver may need two: after
a rekey the peer's packets sealed under the previous epoch can still be in
flight (datagrams reorder), so the previous receive key is kept until a grace
period after the first packet under the new epoch arrived, then destroyed.
Frames name their epoch by its low 8 bits (the header's key phase); at most
two epochs are ever live, so the phase is never ambiguous.
"""

from __future__ import annotations

from .crypto.handshake import record_protection
from .crypto.record import RecordProtection
from .state import Role


class KeyRing:
    def __init__(self, suite: int, master: bytes, role: Role, *, grace: float = 0.0) -> None:
        self._suite = suite
        self._send_dir = "c2s" if role is Role.CLIENT else "s2c"
        self._recv_dir = "s2c" if role is Role.CLIENT else "c2s"
        self._grace = grace
        self.send_epoch = 0
        self.send: RecordProtection = record_protection(suite, master, 0, self._send_dir)
        self.latest_epoch = 0
        self.latest_master = master
        self._receive: dict[int, tuple[int, RecordProtection]] = {
            0: (0, record_protection(suite, master, 0, self._recv_dir))
        }
        self._retire_at: float | None = None
        self._retire_below = 0
        self.peer_holds = 0
        """The newest epoch the peer is known to hold keys for: it sent a frame
        under it, or installed it before answering our Rekey."""
        self.max_overhead = self.send.MAX_OVERHEAD

    def receiving(self, phase: int) -> RecordProtection | None:
        """The receive protection for a frame's key phase, if still live."""
        entry = self._receive.get(phase)
        return entry[1] if entry else None

    def epoch_of(self, phase: int) -> int:
        """The epoch of a live receive key phase."""
        return self._receive[phase][0]

    def install_receive(self, epoch: int, master: bytes) -> None:
        """Accept frames of ``epoch`` from now on (the peer may switch first)."""
        # Keep at most the previous epoch besides the new one.
        for phase, (old, _) in list(self._receive.items()):
            if old < epoch - 1:
                del self._receive[phase]
        self._receive[epoch & 0xFF] = (
            epoch,
            record_protection(self._suite, master, epoch, self._recv_dir),
        )
        self.latest_epoch = epoch
        self.latest_master = master

    def switch_send(self, epoch: int, master: bytes, *, peer_holds: bool = False) -> None:
        """Seal everything from now on under ``epoch``.  ``peer_holds``: the
        peer already has its keys (we initiated and it answered)."""
        if peer_holds and epoch > self.peer_holds:
            self.peer_holds = epoch
        self.send_epoch = epoch
        self.send = record_protection(self._suite, master, epoch, self._send_dir)

    def on_received_in(self, phase: int, now: float) -> None:
        """A frame of ``phase`` authenticated: once the newest epoch is in use
        by the peer, older receive keys are retired after the grace period."""
        epoch = self._receive[phase][0]
        self.peer_holds = max(self.peer_holds, epoch)
        # The grace period starts only once we send under the new epoch too.
        # The initiator of an update switches when it processes the
        # RekeyAck, so every packet the peer sealed under the old key before
        # it has been processed; until then a gap below the RekeyAck may
        # still be filled by a re-send under the old key (§7.7.2), and
        # retiring that key early would leave the gap open for good.
        if (
            epoch == self.latest_epoch
            and self.send_epoch >= epoch
            and len(self._receive) > 1
            and self._retire_at is None
        ):
            self._retire_at = now + self._grace
            self._retire_below = epoch
            if self._grace <= 0:
                self.handle_timer(now)

    def get_timer(self) -> float | None:
        return self._retire_at

    def handle_timer(self, now: float) -> None:
        if self._retire_at is not None and now >= self._retire_at:
            # Only epochs older than the one whose first frame started the
            # grace period: a newer update may have begun since.
            self._retire_at = None
            for phase, (epoch, _) in list(self._receive.items()):
                if epoch < self._retire_below:
                    del self._receive[phase]
