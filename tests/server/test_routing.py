"""How store failures become answers (§11.10)."""

from __future__ import annotations

import pytest

from elink_protocol.app import AppErrorCode
from elink_server.services.routing import refusal
from elink_server.storage import (
    InvalidArgument,
    ReadFailed,
    StorageError,
    StoreClosed,
    UnknownMessage,
    WriteFailed,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ReadFailed("disk"), AppErrorCode.SERVER_BUSY),
        (WriteFailed("disk"), AppErrorCode.SERVER_BUSY),
        (StoreClosed("stopping"), AppErrorCode.SERVER_BUSY),
        (UnknownMessage("no such message"), AppErrorCode.NOT_FOUND),
        (InvalidArgument("bad"), AppErrorCode.INVALID_REQUEST),
    ],
)
def test_store_failures_map_to_codes(error: StorageError, code: AppErrorCode) -> None:
    answer = refusal(error)
    assert answer is not None and answer.code == code
    if code is AppErrorCode.SERVER_BUSY:
        assert answer.retry_after_ms > 0


def test_an_unexpected_store_error_is_not_hidden() -> None:
    assert refusal(StorageError("?")) is None  # the host closes with INTERNAL_ERROR and logs it
