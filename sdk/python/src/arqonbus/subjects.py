"""Local checks of subjects, patterns, queue groups and headers, so an invalid
message never reaches the wire (rules: specs/protocol.md#subjects)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

from .errors import InvalidHeadersError, InvalidQueueGroupError, InvalidSubjectError

MAX_TOKENS = 32
MAX_QUEUE_GROUP = 64
MAX_HEADER_KEY = 64
MAX_HEADER_VALUE = 1024
MAX_HEADER_BYTES = 8 * 1024

#: Headers as a mapping or as (key, value) pairs (keys may repeat).
HeadersLike = Union[Mapping[str, str], Sequence[tuple[str, str]]]


def _is_token_byte(b: int) -> bool:
    return 0x21 <= b <= 0x7E and b not in (0x2E, 0x2A, 0x3E)  # . * >


def _ascii(text: str) -> bytes:
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidSubjectError(text, "it holds non-ASCII characters") from None


def check_subject(subject: str, max_len: int, *, wildcards: bool) -> bytes:
    """Returns the wire bytes of ``subject``, or raises InvalidSubjectError."""
    raw = _ascii(subject)
    if not raw:
        raise InvalidSubjectError(subject, "it is empty")
    if len(raw) > max_len:
        raise InvalidSubjectError(subject, f"it is {len(raw)} bytes, the maximum is {max_len}")
    if raw[0] == 0x24:  # $
        raise InvalidSubjectError(subject, "subjects starting with '$' are reserved for the server")
    tokens = raw.split(b".")
    if len(tokens) > MAX_TOKENS:
        raise InvalidSubjectError(subject, f"more than {MAX_TOKENS} tokens")
    for i, token in enumerate(tokens):
        if not token:
            raise InvalidSubjectError(subject, "empty token (leading, trailing or double '.')")
        if token in (b"*", b">"):
            if not wildcards:
                raise InvalidSubjectError(subject, "wildcards are not allowed here")
            if token == b">" and i != len(tokens) - 1:
                raise InvalidSubjectError(subject, "'>' must be the last token")
            continue
        for b in token:
            if not _is_token_byte(b):
                if b in (0x2A, 0x3E):
                    raise InvalidSubjectError(subject, "a wildcard must be a whole token")
                raise InvalidSubjectError(subject, f"invalid byte 0x{b:02x}")
    return raw


def check_queue_group(group: str) -> bytes:
    """Returns the wire bytes of a queue group name, or raises."""
    try:
        raw = group.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidQueueGroupError(group, "it holds non-ASCII characters") from None
    if not raw:
        raise InvalidQueueGroupError(group, "it is empty")
    if len(raw) > MAX_QUEUE_GROUP:
        raise InvalidQueueGroupError(group, f"it is longer than {MAX_QUEUE_GROUP} bytes")
    for b in raw:
        if not (0x21 <= b <= 0x7E) or b in (0x2A, 0x3E):
            raise InvalidQueueGroupError(group, f"invalid byte 0x{b:02x}")
    return raw


def check_headers(headers: HeadersLike | None, max_headers: int) -> list[tuple[bytes, bytes]]:
    """Returns the headers as wire pairs, or raises InvalidHeadersError."""
    if not headers:
        return []
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    if len(items) > max_headers:
        raise InvalidHeadersError(f"{len(items)} headers, the maximum is {max_headers}")
    out: list[tuple[bytes, bytes]] = []
    total = 0
    for key, value in items:
        try:
            k = key.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidHeadersError(f"header key {key!r} is invalid") from None
        if not k or len(k) > MAX_HEADER_KEY or not all(_is_token_byte(b) for b in k):
            raise InvalidHeadersError(f"header key {key!r} is invalid")
        try:
            v = value.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidHeadersError(f"the value of header {key!r} is invalid") from None
        if len(v) > MAX_HEADER_VALUE or not all(0x20 <= b <= 0x7E for b in v):
            raise InvalidHeadersError(f"the value of header {key!r} is invalid")
        total += len(k) + len(v)
        out.append((k, v))
    if total > MAX_HEADER_BYTES:
        raise InvalidHeadersError(f"headers hold {total} bytes, the maximum is {MAX_HEADER_BYTES}")
    return out
