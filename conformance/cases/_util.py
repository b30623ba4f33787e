"""Helpers shared by the case modules."""

from __future__ import annotations

import functools
import os
from typing import Any

from conformance.case import Context
from conformance.session import Client
from conformance.wire import Closed
from elink_protocol import vectors
from elink_protocol.frame import UNNUMBERED, Frame
from elink_protocol.payload import encode_payload


@functools.cache
def _frame_vectors() -> dict[str, dict[str, Any]]:
    data = vectors.load("frames")
    return {v["name"]: v for v in data["valid"] + data["invalid"]}


def frame_vector(name: str) -> bytes:
    """The bytes of a vector of ``frames.json`` (§10)."""
    return bytes.fromhex(_frame_vectors()[name]["hex"])


def hello_payload(**fields: Any) -> dict[str, Any]:
    """A valid ClientHello map (for cases that then break one thing)."""
    base: dict[str, Any] = {
        "v": [1],
        "cs": [0x1301, 0x1302],
        "sa": [0x0807, 0x0804],
        "r": os.urandom(32),
        "ks": os.urandom(32),
    }
    base.update(fields)
    return base


def plaintext_frame(type_: int, payload: bytes, **fields: Any) -> bytes:
    return Frame(
        type=type_, flags=fields.pop("flags", UNNUMBERED), payload=payload, **fields
    ).encode()


async def expect_error(
    ctx: Context, client: Client, code: int, *, what: str, timeout: float | None = None
) -> Closed:
    """``client`` is closed with ``code`` after ``what``; fail otherwise."""
    return await ctx.expect_close(client, code, timeout=timeout, what=what)


async def refused_bytes(
    ctx: Context, data: bytes, code: int, *, what: str, eof: bool = False
) -> None:
    """A new connection that sends ``data`` (then ends its stream when
    ``eof``) is closed with ``code``."""
    client = await ctx.connect()
    await client.send_bytes(data, note=what)
    if eof:
        await client.send_eof()
    await expect_error(ctx, client, code, what=what)


async def refused_hello(ctx: Context, payload: bytes, code: int, *, what: str) -> None:
    """A ClientHello frame carrying ``payload`` is refused with ``code``."""
    await refused_bytes(ctx, plaintext_frame(0x0001, payload), code, what=what)


async def refused_after_handshake(
    ctx: Context, type_: int, payload: bytes, code: int, *, what: str, **seal: Any
) -> Client:
    """After a handshake, an encrypted packet ``type_`` with ``payload`` is
    refused with ``code``.  ``seal`` overrides header fields."""
    client, _ = await ctx.established()
    numbered = seal.pop("numbered", True)
    await client.send_payload(type_, payload, numbered=numbered, note=what, **seal)
    await expect_error(ctx, client, code, what=what)
    return client


def packed(fields: dict[str, Any]) -> bytes:
    return encode_payload(fields)
