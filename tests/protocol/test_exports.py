"""The public API of elink_protocol is what ``__all__`` says (after Trio's
test_exports)."""

from __future__ import annotations

import elink_protocol
import elink_protocol.crypto


def test_all_names_exist_and_are_public() -> None:
    for module in (elink_protocol, elink_protocol.crypto):
        assert len(module.__all__) == len(set(module.__all__))
        for name in module.__all__:
            assert hasattr(module, name), name
            assert not name.startswith("_") or name == "__version__"


def test_everything_public_is_exported() -> None:
    public = {
        name
        for name, value in vars(elink_protocol).items()
        if not name.startswith("_")
        and not isinstance(value, type(elink_protocol))
        and name != "annotations"
    }
    assert public == set(elink_protocol.__all__)


def test_the_core_api_is_there() -> None:
    for name in (
        "Connection",
        "Config",
        "Role",
        "Transport",
        "NEED_DATA",
        "ServerIdentity",
        "KnownServers",
        "LocalProtocolError",
        "RemoteProtocolError",
        "ResumptionState",
    ):
        assert name in elink_protocol.__all__
