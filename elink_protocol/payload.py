"""msgpack payload codec with hostile-input limits (docs/protocol.md §5).

A payload is exactly one msgpack *map* with string keys.  Every container and
string size is capped before the unpacker allocates anything, trailing bytes
are an error, and so are the msgpack types the spec does not allow (ext types,
non-string map keys).
"""

from __future__ import annotations

from typing import Any

import msgpack

from .config import MAX_LIGHT_PAYLOAD
from .errors import ErrorCode, RemoteProtocolError

#: Limits from §5.2.  They are absolute caps; a payload is also bounded by the
#: frame's own length.
MAX_STR_LEN = MAX_LIGHT_PAYLOAD
MAX_BIN_LEN = MAX_LIGHT_PAYLOAD
MAX_ARRAY_LEN = 1024
MAX_MAP_LEN = 256
MAX_DEPTH = 8


def encode_payload(fields: dict[str, Any]) -> bytes:
    """Pack a payload map.  Bytes are packed as msgpack ``bin``, str as ``str``."""
    data: bytes = msgpack.packb(fields, use_bin_type=True)
    return data


_SCALARS = (str, bytes, int, float, bool, type(None))


def _shape_ok(value: object, depth: int) -> bool:
    """Nesting within MAX_DEPTH and every map key a str (§5.2)."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str) and _shape_ok(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_shape_ok(v, depth + 1) for v in value)
    return True


def _no_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def decode_payload_untrusted(data: bytes, *, max_bin_len: int = MAX_BIN_LEN) -> dict[str, Any]:
    """Unpack a peer's payload, enforcing §5.2.  Raises only
    :class:`RemoteProtocolError` with ``PAYLOAD_INVALID``.  ``max_bin_len``
    is larger on the heavy bus, whose data blocks exceed 4096 bytes (§9.4)."""
    if not data:
        return {}
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_STR_LEN,
            max_bin_len=max_bin_len,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=0,
            ext_hook=_no_ext,
            use_list=True,
        )
    except msgpack.ExtraData:
        raise RemoteProtocolError(
            "payload has bytes after its map", ErrorCode.PAYLOAD_INVALID
        ) from None
    except Exception as exc:  # msgpack raises ValueError, TypeError, its own errors
        raise RemoteProtocolError(
            f"payload is not valid msgpack: {exc}", ErrorCode.PAYLOAD_INVALID
        ) from None
    if not isinstance(value, dict):
        raise RemoteProtocolError("payload is not a map", ErrorCode.PAYLOAD_INVALID)
    if not _shape_ok(value, 0):
        raise RemoteProtocolError(
            "payload nests too deeply or has a non-string map key", ErrorCode.PAYLOAD_INVALID
        )
    return value
