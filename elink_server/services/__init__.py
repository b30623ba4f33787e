"""Server services: they receive typed packets from the host, never bytes.

Each module holds the handlers of one concern (login, presence, messaging...);
:mod:`.context` holds what they share.
"""
