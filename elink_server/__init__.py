"""e-Link server: the Trio host around :mod:`elink_protocol` (being built; see
the server issue).  Today it holds the durable storage, accounts and settings
that the network host will use."""
