"""e-Link SDK: the client library for applications and bots (built in the SDK
issue on top of :mod:`elink_protocol`).  It never imports :mod:`elink_server`."""
