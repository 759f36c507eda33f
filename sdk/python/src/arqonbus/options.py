"""Connection options: server URL, TLS, credentials, reconnect policy."""

from __future__ import annotations

import enum
import ipaddress
import os
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Optional, Union

from .errors import OptionsError
from .v1 import client_pb2 as pb

DEFAULT_PORT = 7420
ALPN = "arqonbus/1"
MAX_CLIENT_NAME = 128


class ClientKind(enum.Enum):
    """What kind of peer this client is (the server uses it for limits and
    observability)."""

    HUMAN = pb.CLIENT_KIND_HUMAN
    DEVICE = pb.CLIENT_KIND_DEVICE
    AGENT = pb.CLIENT_KIND_AGENT


class Credential:
    """A bearer (``abt_...``) or signed ed25519 (``abs_...``) token. Its ``repr``
    and ``str`` never show it."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        trimmed = token.strip()
        if not trimmed:
            raise OptionsError("invalid credential: it is empty")
        if any(c.isspace() or not c.isprintable() for c in trimmed):
            raise OptionsError("invalid credential: it contains whitespace or control characters")
        self._token = trimmed

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"]) -> "Credential":
        """Reads a token file (e.g. ``<data_dir>/credentials/bootstrap.token``)."""
        try:
            with open(path, encoding="utf-8") as f:
                return cls(f.read())
        except OSError as e:
            raise OptionsError(f"cannot read credential file {os.fspath(path)}: {e.strerror}") from None

    @property
    def is_signed(self) -> bool:
        """Whether this is a signed (short-lived, ed25519) token."""
        return self._token.startswith("abs_")

    def expose(self) -> str:
        """The secret itself (only the handshake needs it)."""
        return self._token

    def __repr__(self) -> str:
        return "Credential(<redacted>)"

    def __str__(self) -> str:
        return "<redacted>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credential) and other._token == self._token

    def __hash__(self) -> int:
        return hash(self._token)


#: A credential: a token string, a :class:`Credential`, or a callable (sync or
#: async) returning either, called before every connection attempt, so a
#: short-lived signed token can be re-minted by your backend on reconnect.
CredentialSource = Union[
    str,
    Credential,
    Callable[[], Union[str, Credential, Awaitable[Union[str, Credential]]]],
]


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with "equal jitter" (as the Rust SDK): attempt ``n``
    waits a random delay in ``[d/2, d]`` with ``d = min(initial * 2**n, max)``.
    ``max_attempts=None`` retries forever; ``ReconnectPolicy.disabled()`` never
    reconnects."""

    initial_delay: float = 0.05
    max_delay: float = 5.0
    max_attempts: Optional[int] = None

    @classmethod
    def disabled(cls) -> "ReconnectPolicy":
        return cls(max_attempts=0)

    def delay(self, attempt: int, rnd: Optional[float] = None) -> float:
        """The delay before attempt ``attempt`` (0-based), in seconds. ``rnd``
        in ``[0, 1]`` (random when omitted)."""
        top = max(self.max_delay, 0.001)
        base = min(max(self.initial_delay, 0.001) * float(2 ** min(attempt, 32)), top)
        r = random.random() if rnd is None else min(max(rnd, 0.0), 1.0)
        return float(base / 2 + (base / 2) * r)

    def allows(self, attempt: int) -> bool:
        return self.max_attempts is None or attempt < self.max_attempts


@dataclass(frozen=True)
class ServerUrl:
    """A parsed ``tls://host[:port]``, ``tcp://host[:port]`` or ``host[:port]``."""

    tls: bool
    host: str
    port: int

    @classmethod
    def parse(cls, raw: str) -> "ServerUrl":
        def bad(reason: str) -> OptionsError:
            return OptionsError(f"invalid server URL {raw!r}: {reason}")

        s = raw.strip()
        tls = True
        if "://" in s:
            scheme, s = s.split("://", 1)
            scheme = scheme.lower()
            if scheme not in ("tls", "tcp"):
                raise bad("the scheme must be tls:// or tcp://")
            tls = scheme == "tls"
        if s.endswith("/"):
            s = s[:-1]
        if any(c in s for c in "/?#"):
            raise bad("a server URL has no path, query or fragment")
        if "@" in s:
            raise bad("credentials do not belong in the URL; use a credential file")
        if not s:
            raise bad("the host is missing")
        port_text: Optional[str] = None
        if s.startswith("["):
            host, sep, after = s[1:].partition("]")
            if not sep:
                raise bad("an IPv6 address needs a closing ']'")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise bad("the bracketed host is not an IPv6 address") from None
            if after:
                if not after.startswith(":"):
                    raise bad("expected ':' after ']'")
                port_text = after[1:]
        else:
            try:
                ipaddress.IPv6Address(s)
                host = s
            except ValueError:
                host, sep, p = s.rpartition(":")
                if sep:
                    port_text = p
                else:
                    host = s
        if not host:
            raise bad("the host is missing")
        port = DEFAULT_PORT
        if port_text is not None:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise bad("the port must be a number from 1 to 65535")
            port = int(port_text)
        return cls(tls=tls, host=host, port=port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls' if self.tls else 'tcp'}://{host}:{self.port}"


def tls_context(ca_pem: Optional[str], ca_file: Optional[str]) -> ssl.SSLContext:
    """A TLS 1.3-only client context trusting the given CA, with ALPN ``arqonbus/1``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        if ca_pem is not None:
            ctx.load_verify_locations(cadata=ca_pem)
        elif ca_file is not None:
            ctx.load_verify_locations(cafile=ca_file)
        else:
            raise OptionsError("a tls:// server needs a CA certificate (ca_file or ca_pem)")
    except FileNotFoundError:
        raise OptionsError(f"cannot read CA file {ca_file}") from None
    except ssl.SSLError as e:
        raise OptionsError(f"invalid CA certificate: {e.reason or e}") from None
    ctx.set_alpn_protocols([ALPN])
    return ctx
