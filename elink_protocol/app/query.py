"""History and full-text search (docs/protocol.md §11.8).

Both answer with pages of :class:`~elink_protocol.app.messaging.Message`
records, newest first, filled up to the 4096-byte payload bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, TypeVar

import attrs

from elink_protocol.frame import Priority
from elink_protocol.packets import boolean, register, uint, wire

from .base import Request, Response, _tuple, fill, record_size, records
from .fields import conversation_id, name, nonempty_text, uint_range
from .messaging import Message

#: Most messages a history or search request may ask for.
MAX_PAGE = 500
#: Longest search query, in UTF-8 bytes.
MAX_QUERY = 200


@register
@attrs.frozen(kw_only=True)
class History(Request):
    """Page backwards through one conversation (§11.8.1).  Exactly one of
    ``with_user`` and ``conversation`` is set."""

    TYPE: ClassVar[int] = 0x0240
    PRIORITY: ClassVar[Priority] = Priority.SYNC

    with_user: str = wire("w", name, default="")
    """The peer of a direct conversation (oneself: the file assistant)."""
    conversation: str = wire("cv", conversation_id, default="")
    """A conversation id, instead of ``with_user``."""
    before_seq: int | None = wire("bs", uint(64), default=None)
    """Only messages with a smaller ``seq``; absent: from the newest."""
    limit: int = wire("n", uint_range(1, MAX_PAGE), default=50)
    """Most messages wanted; the server may return fewer."""

    def _check_untrusted(self) -> None:
        if bool(self.with_user) == bool(self.conversation):
            raise ValueError("exactly one of 'w' and 'cv' must be present")

    def page(self, messages: Sequence[Message], *, more: bool) -> HistoryPage:
        """The answer: the leading ``messages`` (newest first, at most
        ``limit``) that fit in one payload.  ``more``: the store holds older
        messages than those given; it is also set when the page was cut."""

        return _message_page(HistoryPage, self.rid, messages, self.limit, more=more)


_PageT = TypeVar("_PageT", "HistoryPage", "SearchResult")


def _message_page(
    cls: type[_PageT], rid: int, messages: Sequence[Message], limit: int, *, more: bool
) -> _PageT:
    """A page of ``cls`` holding the leading messages (at most ``limit``) that
    fit in one payload; ``more`` is also set when any had to be left out
    (§11.1.6)."""
    page = fill(
        lambda part: cls(rid=rid, messages=part, more=True),
        messages[:limit],
        item_size=record_size,
    )
    return cls(rid=rid, messages=page, more=more or len(page) < len(messages))


@register
@attrs.frozen(kw_only=True)
class HistoryPage(Response):
    """A page of one conversation's messages, newest first (§11.8.2)."""

    TYPE: ClassVar[int] = 0x0241
    PRIORITY: ClassVar[Priority] = Priority.SYNC

    messages: tuple[Message, ...] = wire("ms", records(Message, MAX_PAGE), converter=_tuple)
    """Messages, newest first; recalled ones without content."""
    more: bool = wire("mo", boolean, default=False)
    """Older messages exist: ask again with ``before_seq`` = the last ``seq``."""

    def _check_untrusted(self) -> None:
        for newer, older in zip(self.messages, self.messages[1:], strict=False):
            if older.conversation != newer.conversation:
                raise ValueError("a history page holds one conversation")
            if older.seq >= newer.seq:
                raise ValueError("history is newest first")


@register
@attrs.frozen(kw_only=True)
class Search(Request):
    """Full-text search over the user's own conversations (§11.8.3)."""

    TYPE: ClassVar[int] = 0x0242
    PRIORITY: ClassVar[Priority] = Priority.SYNC

    query: str = wire("q", nonempty_text(MAX_QUERY))
    """The text to find, as a substring (any script)."""
    limit: int = wire("n", uint_range(1, MAX_PAGE), default=50)
    """Most messages wanted; the server may return fewer."""
    conversation: str = wire("cv", conversation_id, default="")
    """Search only this conversation; absent: all of the user's."""

    def result(self, messages: Sequence[Message], *, more: bool) -> SearchResult:
        """The answer: the leading ``messages`` (newest first, at most
        ``limit``) that fit; ``more`` as for :meth:`History.page`."""

        return _message_page(SearchResult, self.rid, messages, self.limit, more=more)


@register
@attrs.frozen(kw_only=True)
class SearchResult(Response):
    """Messages matching a search, newest first (§11.8.4)."""

    TYPE: ClassVar[int] = 0x0243
    PRIORITY: ClassVar[Priority] = Priority.SYNC

    messages: tuple[Message, ...] = wire("ms", records(Message, MAX_PAGE), converter=_tuple)
    """Matching messages, newest first.  Recalled and secret messages are
    never found."""
    more: bool = wire("mo", boolean, default=False)
    """There are more matches than returned (refine the query)."""
