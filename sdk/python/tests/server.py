"""A real ``arqonbus serve`` for the SDK tests, and ``arqonctl`` against it.

:class:`Node` writes a configuration into a temporary directory (two shards,
a fixed free loopback port so a restarted node keeps its address), starts the
binary, reads the data and control addresses from its banner on stderr and
keeps draining stderr. Every wait is bounded; ``stop`` kills the process.
The binaries come from ``$ARQONBUS_BIN``/``$ARQONCTL_BIN`` or the workspace's
``target/debug``. Tokens are written to 0600 files and never printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[3]
LIMIT = 20.0


def binary(env: str, name: str) -> str:
    path = os.environ.get(env) or str(REPO / "target" / "debug" / name)
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"{path} not found: run `cargo build -p arqonbus -p arqonbus-cli --locked` "
            f"(or sdk/test.sh), or set {env}"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tenant:
    name: str
    tenant_id: int
    principal_id: int
    credential_id: int
    token_file: Path

    def token(self) -> str:
        return self.token_file.read_text().strip()


class Node:
    def __init__(self, extra: str = "") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="arqonbus-sdk-test-")
        self.dir = Path(self._tmp.name)
        self.data_dir = self.dir / "data"
        self.port = free_port()
        self.extra = extra
        self.proc: Optional[subprocess.Popen[str]] = None
        # The WebSocket edge gets its own free port (never its default 7423,
        # which parallel test nodes would share); a binary without the edge
        # refuses the section and the node starts without it.
        self.ws_port = free_port()
        self._ws_known: Optional[bool] = None
        self.control = ""
        self._lines: list[str] = []
        self.start()

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    @property
    def bootstrap_token_file(self) -> str:
        return str(self.data_dir / "credentials" / "bootstrap.token")

    def start(self) -> None:
        if self._ws_known is not False:
            try:
                self._start_once(True)
                self._ws_known = True
                return
            except RuntimeError as e:
                if self._ws_known or "websocket" not in str(e).lower():
                    raise
                self._ws_known = False
        self._start_once(False)

    def _start_once(self, ws: bool) -> None:
        ws_section = (
            f'[websocket]\nenabled = true\nlisten = "127.0.0.1:{self.ws_port}"\n\n' if ws else ""
        )
        (self.dir / "arqonbus.toml").write_text(
            f'data_dir = "{self.data_dir}"\n\n'
            f'[server]\nlisten = "127.0.0.1:{self.port}"\nshards = 2\ntick_ms = 20\n'
            "lame_duck_window_ms = 1000\n\n"
            '[control]\nlisten = "127.0.0.1:0"\n\n[metrics]\nlisten = "127.0.0.1:0"\n\n'
            '[log]\nformat = "text"\nlevel = "warn"\n\n'
            '[steering]\ndefault_placement = "spread"\n\n' + ws_section + self.extra
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ARQONBUS_", "RUST_LOG"))}
        proc = subprocess.Popen(
            [binary("ARQONBUS_BIN", "arqonbus"), "serve", "--config", str(self.dir / "arqonbus.toml")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.proc = proc
        ready = threading.Event()
        found: dict[str, str] = {}

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                line = line.strip()
                if line.startswith("ArqonBus listening on "):
                    found["data"] = line.removeprefix("ArqonBus listening on ")
                elif line.startswith("control API:"):
                    found["control"] = line.removeprefix("control API:").strip().split(" ")[0]
                self._lines.append(line)
                if len(self._lines) > 200:
                    del self._lines[:100]
                if "data" in found and "control" in found:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(LIMIT) or "control" not in found:
            self.kill()
            raise RuntimeError("the server did not print its banner: " + " | ".join(self._lines[-10:]))
        self.control = found["control"]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self) -> int:
        assert self.proc is not None
        return self.proc.wait(LIMIT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(LIMIT)

    def stop(self) -> None:
        self.kill()
        self._tmp.cleanup()

    def terminate(self) -> None:
        """SIGTERM: the lame duck (Drain notices), then exit."""
        self.signal(signal.SIGTERM)

    def ctl(self, *args: str) -> Any:
        """Runs ``arqonctl --json ARGS`` and returns its JSON output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ARQONBUS_", "ARQONCTL_"))}
        out = subprocess.run(
            [binary("ARQONCTL_BIN", "arqonctl"), "--server", self.control, "--data-dir",
             str(self.data_dir), "--json", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=LIMIT,
            env=env,
        )
        if out.returncode != 0:
            raise RuntimeError(f"arqonctl {args[:2]} failed: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def tenant(self, name: str, *, signed_ttl: Optional[str] = None) -> Tenant:
        """Creates a tenant, a principal and a credential (bearer, or signed
        with ``signed_ttl``); the token goes to a 0600 file."""
        t = self.ctl("tenants", "create", name)
        tid = int(t["id"])
        p = self.ctl("principals", "create", "--tenant", str(tid), f"{name}-agent")
        pid = int(p["id"])
        return self.credential(name, tid, pid, signed_ttl=signed_ttl)

    def credential(
        self, name: str, tid: int, pid: int, *, signed_ttl: Optional[str] = None
    ) -> Tenant:
        args = ["credentials", "issue", "--principal", str(pid)]
        if signed_ttl is not None:
            args += ["--signed", "--ttl", signed_ttl]
        c = self.ctl(*args)
        cid = int(c["credential"]["id"])
        path = self.dir / f"{name}-{cid}.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(str(c["token"]) + "\n")
        return Tenant(name, tid, pid, cid, path)
