"""The batch route's body, ``{"records": [item, ...]}``, decoded as it arrives, one item at a time.

Why: json.loads of a whole 64 MiB body runs in C for seconds without letting the event loop (or any
other thread) run, and what it builds can take thirty times the body's size. Decoded item by item,
with each item at most ``max_item`` characters, the work between two chunks of the body is bounded
and the decoder holds at most one unfinished item beside the newest chunk.

An unfinished item is decoded again only once its text has doubled (or the body ended), so a body
that arrives a byte at a time costs no more than one that arrives at once.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

from ..errors import MalformedInput, PacspaceError

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SEPARATOR = re.compile(r"[ \t\n\r]*(?:(,)|\])[ \t\n\r]*")
# What may follow a number that the next chunk could make a longer one (nothing, "e", "e+", ".", digits).
_NUMBER_GOES_ON = re.compile(r"[0-9eE.+-]*")
_KEY = '"records"'
_SHAPE = 'the body is {"records": [record, ...]}'
# The envelope's tokens, in order; "item" and "next" repeat.
_OPEN, _KEY_STATE, _COLON, _ARRAY, _FIRST, _ITEM, _NEXT, _CLOSE, _DONE = range(9)
_TOKENS = {_OPEN: "{", _COLON: ":", _ARRAY: "[", _CLOSE: "}"}
_MIN_RETRY = 4096


class ItemTooLarge(PacspaceError):
    code = "too_large"
    http_status = 413


class BatchDecoder:
    """Feed the body's bytes; each call returns the items completed so far, decoded by json."""

    def __init__(self, max_item: int) -> None:
        self.max_item = max_item
        self.attempts = 0  # item decodes tried, finished or not: the work done
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self._text = ""
        self._pending: list[str] = []
        self._pending_chars = 0
        self._retry_at = 0
        self._state = _OPEN
        self._ended = False
        self._unfinished = False  # the last decode met the end of the text mid-item

    def feed(self, data: bytes) -> list[Any]:
        try:
            piece = self._utf8.decode(data)
        except UnicodeDecodeError:
            raise MalformedInput("request body is not UTF-8 JSON") from None
        self._pending.append(piece)
        self._pending_chars += len(piece)
        if len(self._text) + self._pending_chars < self._retry_at:
            return []
        return self._run()

    def end(self) -> list[Any]:
        """The body ended: the last items; raises if the body is incomplete."""
        try:
            self._pending.append(self._utf8.decode(b"", final=True))
        except UnicodeDecodeError:
            raise MalformedInput("request body is not UTF-8 JSON") from None
        self._ended = True
        items = self._run()
        if self._state != _DONE:
            raise MalformedInput(f"request body is not JSON: {_SHAPE}")
        return items

    def _run(self) -> list[Any]:
        self._text += "".join(self._pending)
        self._pending, self._pending_chars = [], 0
        items: list[Any] = []
        pos = 0
        self._unfinished = self._stalled = False
        while not self._stalled:
            pos = self._step(_WHITESPACE.match(self._text, pos).end(), items)  # type: ignore[union-attr]
        self._text = self._text[pos:]
        self._retry_at = min(max(2 * len(self._text), _MIN_RETRY), self.max_item + 1) if self._unfinished else 0
        return items

    def _step(self, pos: int, items: list[Any]) -> int:
        """Tokens or items from ``pos``: where the next begins; sets ``_stalled`` to wait for more text."""
        text, state = self._text, self._state
        if pos == len(text):
            self._stalled = True
            return pos
        if state == _DONE:
            raise MalformedInput(f"request body is not JSON: {_SHAPE}")
        if state in _TOKENS:
            return self._token(pos, _TOKENS[state], {_OPEN: _KEY_STATE, _COLON: _ARRAY, _ARRAY: _FIRST, _CLOSE: _DONE}[state])
        if state == _KEY_STATE:
            if len(text) - pos < len(_KEY) and _KEY.startswith(text[pos:]):
                self._stalled = True
                return pos
            if not text.startswith(_KEY, pos):
                raise MalformedInput(f"records is a list of records: {_SHAPE}")
            self._state = _COLON
            return pos + len(_KEY)
        if state == _NEXT or (state == _FIRST and text[pos] == "]"):
            if text[pos] == "]":
                self._state = _CLOSE
            elif text[pos] == ",":
                self._state = _ITEM
            else:
                raise MalformedInput(f"request body is not JSON: {_SHAPE}")
            return pos + 1
        return self._items(pos, items)

    def _token(self, pos: int, token: str, then: int) -> int:
        if self._text[pos] != token:
            raise MalformedInput(f"request body is not JSON: {_SHAPE}")
        self._state = then
        return pos + 1

    def _items(self, pos: int, items: list[Any]) -> int:
        """Items from ``pos`` and the commas between them, in one loop (the hot path of a large batch)."""
        text, length, decode = self._text, len(self._text), self._json.raw_decode
        while True:
            self.attempts += 1
            try:
                item, end = decode(text, pos)
            except RecursionError:
                raise MalformedInput("a record nests too deeply") from None
            except json.JSONDecodeError as exc:
                if self._ended or _broken_before_the_end(exc, length):
                    raise MalformedInput(f"request body is not JSON: {_SHAPE}") from None
                if length - pos > self.max_item:
                    raise ItemTooLarge(f"a record exceeds {self.max_item} bytes, or is not JSON") from None
                self._unfinished = self._stalled = True
                return pos
            if end - pos > self.max_item:
                raise ItemTooLarge(f"a record exceeds {self.max_item} bytes")
            if end == length and not self._ended:
                self._unfinished = self._stalled = True  # a number may go on in the next chunk
                return pos
            separator = _SEPARATOR.match(text, end)
            if separator is None and not self._ended and _NUMBER_GOES_ON.fullmatch(text, end):
                self._unfinished = self._stalled = True  # "12" of "12.5", "1.5" of "1.5e3"
                return pos
            items.append(item)
            if separator is None:
                self._state = _NEXT  # the end of the text so far, or not JSON: _step tells
                return end
            if separator.group(1) is None:
                self._state = _CLOSE
                return separator.end()
            self._state = _ITEM
            pos = separator.end()


def _broken_before_the_end(exc: json.JSONDecodeError, length: int) -> bool:
    """Whether a decode failed on what is there, not on the end of the text so far (more may follow).

    A string that is not closed yet is reported where it starts; anything else that more text could
    mend is reported within the longest token's length of the end: ``-Infinity`` (json.loads takes it, as
    it takes ``Infinity`` and ``NaN``), longer than an escape (``\\uXXXX``)."""
    return not exc.msg.startswith("Unterminated string") and exc.pos < length - len("-Infinity")
