"""Unit tests that need no server."""

from __future__ import annotations

import pytest

import arqonbus
from arqonbus.options import ServerUrl
from arqonbus.subjects import check_headers, check_queue_group, check_subject


def test_credentials_never_show() -> None:
    c = arqonbus.Credential("  abt_s3cr3t-token\n")
    assert "s3cr3t" not in repr(c) and "s3cr3t" not in str(c)
    assert c.expose() == "abt_s3cr3t-token"
    assert not c.is_signed and arqonbus.Credential("abs_x.y").is_signed
    for bad in ("", "\n", "abt_a b"):
        with pytest.raises(arqonbus.OptionsError):
            arqonbus.Credential(bad)


def test_urls() -> None:
    assert ServerUrl.parse("127.0.0.1:7000") == ServerUrl(True, "127.0.0.1", 7000)
    assert ServerUrl.parse("tcp://h") == ServerUrl(False, "h", 7420)
    assert ServerUrl.parse("tls://[::1]:9/") == ServerUrl(True, "::1", 9)
    for bad in ("http://h", "tls://h/x", "tls://u:p@h", "tls://h:0", "tls://"):
        with pytest.raises(arqonbus.OptionsError):
            ServerUrl.parse(bad)


def test_subject_rules() -> None:
    assert check_subject("a.b.c", 256, wildcards=False) == b"a.b.c"
    assert check_subject("a.*.>", 256, wildcards=True) == b"a.*.>"
    for bad, wild in [
        ("", False), ("a..b", False), (".a", False), ("a.", False), ("a.*", False),
        ("a.>.b", True), ("a.b*", True), ("$SYS.x", True), ("a b", False), ("é", False),
        (".".join(["a"] * 33), False), ("a" * 257, False),
    ]:
        with pytest.raises(arqonbus.InvalidSubjectError):
            check_subject(bad, 256, wildcards=wild)
    assert check_queue_group("workers") == b"workers"
    for bad in ("", "a*", "a b", "x" * 65):
        with pytest.raises(arqonbus.InvalidQueueGroupError):
            check_queue_group(bad)


def test_header_rules() -> None:
    assert check_headers({"k": "v"}, 32) == [(b"k", b"v")]
    assert check_headers([("k", "1"), ("k", "2")], 32) == [(b"k", b"1"), (b"k", b"2")]
    for bad in ({"": "v"}, {"a.b": "v"}, {"k": "\n"}, {"k": "x" * 1025}):
        with pytest.raises(arqonbus.InvalidHeadersError):
            check_headers(bad, 32)
    with pytest.raises(arqonbus.InvalidHeadersError):
        check_headers({f"k{i}": "v" for i in range(3)}, 2)


def test_backoff_is_equal_jitter_and_capped() -> None:
    p = arqonbus.ReconnectPolicy()
    for attempt in range(40):
        base = min(0.05 * 2**attempt, 5.0)
        for r in (0.0, 0.5, 1.0):
            d = p.delay(attempt, r)
            assert base / 2 <= d <= base
    assert not arqonbus.ReconnectPolicy.disabled().allows(0)
    assert arqonbus.ReconnectPolicy(max_attempts=3).allows(2)
    assert not arqonbus.ReconnectPolicy(max_attempts=3).allows(3)


def test_error_codes_have_names() -> None:
    e = arqonbus.ServerError(13, "no", False, 4)
    assert e.code_name == "PERMISSION_DENIED" and not e.retryable and e.sid == 4
    assert str(e) == "server error PERMISSION_DENIED: no"
    assert arqonbus.ServerError(16, "", True, None).retryable
