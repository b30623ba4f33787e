"""e-Link conformance suite: checks any server against docs/protocol.md (built
in the conformance issue; it reuses the vectors in ``elink_protocol/vectors``)."""
