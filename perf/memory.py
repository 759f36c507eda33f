#!/usr/bin/env python3
"""What hostile or careless clients make an ArqonBus node hold.

Starts `arqonbus serve` (plaintext, 2 shards, loopback, fresh data dir), runs
each scenario against a fresh server, and compares the server's RSS growth
with what the server accounts for (`arqonbus_outbound_queue_bytes`, the
memory its client queues hold). Bounded in count and time; loopback only;
stops every process it started. Standard library only.

    perf/memory.py [--bin target/release/arqonbus] [--out perf/results]

Writes <out>/<date>-memory.{md,json} with the command that made them.
"""

import argparse
import base64
import datetime
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

MIB = 1024 * 1024


# ---- the wire: 4-byte big-endian length, then a protobuf `Frame` ----------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    key = varint((num << 3) | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def frame(kind_field, body):
    msg = field(kind_field, 2, body)
    return struct.pack(">I", len(msg)) + msg


def connect(token):
    return frame(1, field(1, 0, 1) + field(2, 2, token.encode()) + field(3, 2, b"memory-probe"))


PING = frame(7, b"")


def subscribe(sid, pattern):
    return frame(4, field(1, 0, sid) + field(2, 2, pattern.encode()))


def unsubscribe(sid):
    return frame(5, field(1, 0, sid))


def publish(subject, payload, reply=b""):
    body = field(1, 2, subject.encode())
    if reply:
        body += field(2, 2, reply)
    return frame(3, body + field(15, 2, payload))


def read_frame(sock):
    head = recv_exact(sock, 4)
    (n,) = struct.unpack(">I", head)
    body = recv_exact(sock, n)
    # The oneof's field number tells the kind.
    return body[0] >> 3, body


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def open_conn(addr, token, welcome=True):
    s = socket.create_connection(addr, timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if welcome:
        s.sendall(connect(token))
        kind, _ = read_frame(s)
        if kind != 2:
            raise RuntimeError(f"expected Welcome, got frame kind {kind}")
    return s


def ws_open(addr, token):
    """A WebSocket connection (RFC 6455, subprotocol arqonbus.v1) that sent
    `Connect` and read its `Welcome`: one Frame per binary message, no
    length prefix, client frames masked."""
    s = socket.create_connection(addr, timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (f"GET / HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
         f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: arqonbus.v1\r\n\r\n").encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1024)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {head.splitlines()[0]!r}")
    body = connect(token)[4:]
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    assert len(body) < 126
    s.sendall(bytes([0x82, 0x80 | len(body)]) + mask + masked)
    # The Welcome: one binary message (unmasked, from the server).
    b0, b1 = recv_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack(">H", recv_exact(s, 2))
    elif n == 127:
        (n,) = struct.unpack(">Q", recv_exact(s, 8))
    msg = recv_exact(s, n)
    if b0 & 0x0F != 2 or msg[0] >> 3 != 2:
        raise RuntimeError("expected a binary Welcome")
    return s


def barrier(s):
    """Ping, then read until the Pong."""
    s.sendall(PING)
    while True:
        kind, _ = read_frame(s)
        if kind == 8:
            return


def flood(s, data, max_bytes):
    """Writes `data` repeatedly without reading until the socket blocks."""
    s.settimeout(0.3)
    sent = 0
    try:
        while sent < max_bytes:
            sent += s.send(data)
    except (socket.timeout, BlockingIOError):
        pass
    s.settimeout(20)
    return sent


# ---- the server -----------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, extra="", websocket=False):
        self.dir = tempfile.mkdtemp(prefix="arqonbus-memory-")
        self.port = free_port()
        self.metrics = free_port()
        self.ws_addr = None
        if websocket:
            ws_port = free_port()
            self.ws_addr = ("127.0.0.1", ws_port)
            extra += f'\n[websocket]\nenabled = true\nlisten = "127.0.0.1:{ws_port}"\n'
        conf = os.path.join(self.dir, "arqonbus.toml")
        with open(conf, "w") as f:
            f.write(
                f'data_dir = "{self.dir}/data"\n\n[server]\nlisten = "127.0.0.1:{self.port}"\n'
                f'shards = 2\npin_cores = false\n\n[tls]\nenabled = false\n\n'
                f'[control]\nlisten = "127.0.0.1:{free_port()}"\n\n'
                f'[metrics]\nlisten = "127.0.0.1:{self.metrics}"\n\n'
                f'[log]\nlevel = "warn"\n{extra}'
            )
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", conf], stdout=self.log, stderr=self.log
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("server did not listen")
        token_file = os.path.join(self.dir, "data", "credentials", "bootstrap.token")
        self.token = open(token_file).read().strip()
        self.addr = ("127.0.0.1", self.port)
        # Warm up: the first connections grow per-shard tables and the
        # allocator's arenas, which would otherwise be charged to a scenario.
        warm = [open_conn(self.addr, self.token) for _ in range(200)]
        for c in warm:
            c.close()
        time.sleep(2.0)

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def steady_rss(self):
        """RSS once it stops moving (the node frees start-up memory for a
        few seconds after it starts): 5 samples 200 ms apart within 64 KiB,
        or whatever it is after 15 s."""
        samples = []
        deadline = time.time() + 15
        while time.time() < deadline:
            samples.append(self.rss())
            last = samples[-5:]
            if len(last) == 5 and max(last) - min(last) < 64 * 1024:
                break
            time.sleep(0.2)
        return samples[-1]

    def metric(self, name):
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics}/metrics", timeout=10
        ).read().decode()
        total = 0
        for line in text.splitlines():
            m = re.match(rf"^{name}(\{{[^}}]*\}})? (\d+)$", line)
            if m:
                total += int(m.group(2))
        return total

    def settle(self):
        time.sleep(0.5)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- scenarios: each returns (rss growth, accounted bytes, note) ------------

def ping_flood(srv):
    s = open_conn(srv.addr, srv.token)
    before = srv.steady_rss()
    sent = flood(s, PING * 4096, 64 * MIB)
    srv.settle()
    grew, held = srv.rss() - before, srv.metric("arqonbus_outbound_queue_bytes")
    s.close()
    return grew, held, f"{len(PING)}-byte Pings written without reading: {sent // len(PING):,}"


def error_flood(srv):
    s = open_conn(srv.addr, srv.token)
    before = srv.steady_rss()
    bad = unsubscribe(999_999)
    sent = flood(s, bad * 4096, 64 * MIB)
    srv.settle()
    grew, held = srv.rss() - before, srv.metric("arqonbus_outbound_queue_bytes")
    s.close()
    return grew, held, f"unknown-sid Unsubscribes written without reading: {sent // len(bad):,}"


def slow_consumer(srv):
    sub = open_conn(srv.addr, srv.token)
    sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sub.sendall(subscribe(1, "slow.>"))
    barrier(sub)
    pub = open_conn(srv.addr, srv.token)
    before = srv.steady_rss()
    peak_rss, peak_held = 0, 0
    batch = publish("slow.x", b"x" * 128) * 2000
    deadline = time.time() + 60
    while time.time() < deadline:
        pub.sendall(batch)
        barrier(pub)
        peak_rss = max(peak_rss, srv.rss() - before)
        peak_held = max(peak_held, srv.metric("arqonbus_outbound_queue_bytes"))
        if srv.metric("arqonbus_slow_consumers_total") > 0:
            break
    sub.close()
    pub.close()
    return peak_rss, peak_held, "128 B messages to a subscriber that never reads, until it is cut (peak RSS)"


def one_subscription_per_read(srv):
    # The cost of a subscription is the slope between 5,000 and 10,000 of
    # them: a baseline alone is unreliable, since the allocator gives back
    # start-up memory lazily, while the scenario runs.
    s = open_conn(srv.addr, srv.token)
    barrier(s)
    marks = {}
    for sid in range(1, 10_001):
        s.sendall(subscribe(sid, f"per.read.{sid}.>"))
        if sid % 50 == 0:
            barrier(s)  # keeps each write in a read of its own, mostly
        if sid in (5_000, 10_000):
            barrier(s)
            marks[sid] = srv.steady_rss()
    per = (marks[10_000] - marks[5_000]) / 5_000
    s.close()
    return per * 10_000, 0, f"10,000 subscriptions, one per write: {per:,.0f} B each (slope 5k..10k)"


def one_byte_and_wait(srv):
    conns = []
    marks = {}
    for i in range(1, 5_001):
        c = socket.create_connection(srv.addr, timeout=20)
        c.sendall(b"\x00")
        conns.append(c)
        if i in (2_500, 5_000):
            time.sleep(0.3)
            marks[i] = srv.steady_rss()
    per = (marks[5_000] - marks[2_500]) / 2_500
    for c in conns:
        c.close()
    return per * 5_000, 0, f"5,000 connections that sent 1 byte: {per:,.0f} B each (slope 2.5k..5k)"


def reply_flood(srv):
    responder = open_conn(srv.addr, srv.token)
    responder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    responder.sendall(subscribe(1, "svc.echo"))
    barrier(responder)
    req = open_conn(srv.addr, srv.token)
    before = srv.steady_rss()
    for i in range(0, 20_000, 500):
        req.sendall(b"".join(publish("svc.echo", b"?", f"_INBOX.{j}".encode()) for j in range(i, i + 500)))
        barrier(req)
    srv.settle()
    grew, held = srv.rss() - before, srv.metric("arqonbus_outbound_queue_bytes")
    responder.close()
    req.close()
    return grew, held, "20,000 requests with distinct reply subjects to a responder that never answers"


def quiet_connections_woken(srv):
    conns = []
    marks = {}
    for i in range(1, 10_001):
        conns.append(open_conn(srv.addr, srv.token))
        if i in (5_000, 10_000):
            marks[i] = srv.steady_rss()
    idle = (marks[10_000] - marks[5_000]) / 5_000
    for c in conns[:5_000]:
        c.sendall(PING)
    for c in conns[:5_000]:
        kind, _ = read_frame(c)
        assert kind == 8
    half = srv.steady_rss()
    for c in conns[5_000:]:
        c.sendall(PING)
    for c in conns[5_000:]:
        kind, _ = read_frame(c)
        assert kind == 8
    woken = (srv.steady_rss() - half) / 5_000 + idle
    for c in conns:
        c.close()
    return woken * 10_000, 0, (
        f"10,000 authenticated idle connections: {idle:,.0f} B each (slope 5k..10k); "
        f"after one Ping each: {woken:,.0f} B each"
    )


def quiet_websocket_connections(srv):
    """Idle browsers: authenticated WebSocket connections that then say
    nothing; the same count and slope as the native scenario above."""
    conns = []
    marks = {}
    for i in range(1, 10_001):
        conns.append(ws_open(srv.ws_addr, srv.token))
        if i in (5_000, 10_000):
            marks[i] = srv.steady_rss()
    idle = (marks[10_000] - marks[5_000]) / 5_000
    for c in conns:
        c.close()
    return idle * 10_000, 0, (
        f"10,000 authenticated idle WebSocket connections: {idle:,.0f} B each (slope 5k..10k)"
    )


SCENARIOS = [
    ("Ping flood, never reads", ping_flood),
    ("error flood, never reads", error_flood),
    ("slow consumer at its cap", slow_consumer),
    ("1 subscription per read x 10,000", one_subscription_per_read),
    ("1 byte, then waits", one_byte_and_wait),
    ("reply permissions flood", reply_flood),
    ("10,000 quiet connections woken once", quiet_connections_woken),
    ("10,000 quiet WebSocket connections", quiet_websocket_connections, {"websocket": True}),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/arqonbus")
    ap.add_argument("--out", default="perf/results")
    ap.add_argument("--only", default="", help="comma-separated scenario numbers (1-based)")
    args = ap.parse_args()
    pick = {int(x) for x in args.only.split(",") if x}
    rows = []
    for i, (name, run, *server_opts) in enumerate(SCENARIOS, 1):
        if pick and i not in pick:
            continue
        srv = Server(args.bin, **(server_opts[0] if server_opts else {}))
        try:
            start = srv.steady_rss()
            grew, held, note = run(srv)
        finally:
            srv.stop()
        ratio = grew / held if held else None
        rows.append(
            {"scenario": name, "start_rss": start, "rss_growth": grew, "accounted": held,
             "ratio": ratio, "note": note}
        )
        print(f"{name:40} RSS +{grew / MIB:8.1f} MiB  accounted {held / MIB:8.1f} MiB  {note}",
              file=sys.stderr)
    def table(cmd, commit):
        lines = [f"# Memory under hostile clients\n\n`{cmd}` at commit {commit}, "
                 f"2 shards, plaintext, loopback. RSS from /proc; accounted = "
                 f"`arqonbus_outbound_queue_bytes`.\n\n",
                 "| scenario | server RSS growth | accounted | growth / accounted | what |\n",
                 "|---|---:|---:|---:|---|\n"]
        for r in rows:
            ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
            lines.append(f"| {r['scenario']} | {r['rss_growth'] / MIB:.1f} MiB | "
                         f"{r['accounted'] / MIB:.1f} MiB | {ratio} | {r['note']} |\n")
        return "".join(lines)

    write_results(args.out, "memory", rows, table)


def write_results(out, kind, rows, markdown):
    """Writes <out>/<date>-<kind>.{json,md}, each naming the command that
    made it and the commit; `markdown(cmd, commit)` renders the page."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M%S")
    os.makedirs(out, exist_ok=True)
    cmd = " ".join([f"perf/{os.path.basename(sys.argv[0])}"] + sys.argv[1:])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    with open(os.path.join(out, f"{stamp}-{kind}.json"), "w") as f:
        json.dump({"command": cmd, "commit": commit, "rows": rows}, f, indent=1)
    with open(os.path.join(out, f"{stamp}-{kind}.md"), "w") as f:
        f.write(markdown(cmd, commit))


if __name__ == "__main__":
    main()
