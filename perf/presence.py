#!/usr/bin/env python3
"""How long a presence join or leave takes to reach a watcher, across shards.

Starts `arqonbus serve` (plaintext, 2 shards, loopback, tenants placed
`spread` so connections land on both shards), puts a watcher on one shard and
a member on the other (or both on one shard, for comparison), and times, from
the member's write to the watcher's read: a join (`Subscribe` + `PresenceTrack`
in one write, until the watcher's JOIN event), a leave (`Unsubscribe`, until
LEAVE), and, as the yardstick, a message (`Publish`, until the watcher's
`Message`). A/B alternation: the rounds interleave the three. The client is
Python: its own overhead (some tens of microseconds) is in every figure alike.
Bounded in count and time; loopback only; stops the server it started.
Standard library only (shares `memory.py`'s wire helpers and server).

    perf/presence.py [--bin target/release/arqonbus] [--rounds 2000] [--out perf/results]

Writes <out>/<date>-presence.{md,json} with the command that made them.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memory  # noqa: E402  (the wire helpers and the server)
from memory import field, frame, open_conn, read_frame, subscribe, unsubscribe, publish  # noqa: E402


def varint_at(b, i):
    n = shift = 0
    while True:
        byte = b[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


def fields(b):
    """Top-level (number, value) pairs of a protobuf message."""
    i = 0
    out = []
    while i < len(b):
        key, i = varint_at(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = varint_at(b, i)
        elif wire == 2:
            n, i = varint_at(b, i)
            v, i = b[i:i + n], i + n
        elif wire == 5:
            v, i = b[i:i + 4], i + 4
        elif wire == 1:
            v, i = b[i:i + 8], i + 8
        else:
            raise ValueError(f"wire type {wire}")
        out.append((num, v))
    return out


def conn_on(srv, shard):
    """A connection the server put on `shard` (reconnects until it does)."""
    for _ in range(200):
        s = memory.socket.create_connection(srv.addr, timeout=20)
        s.setsockopt(memory.socket.IPPROTO_TCP, memory.socket.TCP_NODELAY, 1)
        s.sendall(memory.connect(srv.token))
        kind, body = read_frame(s)
        assert kind == 2, kind
        (_, welcome), = fields(body)
        if dict(fields(welcome)).get(5, 0) == shard:
            return s
        s.close()
    raise RuntimeError(f"no connection landed on shard {shard}")


def watch(watch_id, subject):
    return frame(12, field(1, 0, watch_id) + field(2, 2, subject.encode()))


def track(sid):
    return frame(11, field(1, 0, sid))


def wait_for(s, kind, action=None):
    while True:
        k, body = read_frame(s)
        if k == 9:
            raise RuntimeError(f"server error: {body!r}")
        if k != kind:
            continue
        if action is None:
            return
        (_, event), = fields(body)
        if dict(fields(event)).get(3) == action:
            return


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def measure(srv, rounds, watcher_shard, member_shard):
    watcher = conn_on(srv, watcher_shard)
    member = conn_on(srv, member_shard)
    subject = f"rooms.r{watcher_shard}{member_shard}"
    watcher.sendall(watch(1, subject) + subscribe(1, subject))
    memory.barrier(watcher)
    member.sendall(memory.PING)
    memory.barrier(member)
    join, leave, message = [], [], []
    for r in range(rounds):
        sid = 100 + r
        t0 = time.perf_counter_ns()
        member.sendall(subscribe(sid, subject) + track(sid))
        wait_for(watcher, 15, action=1)
        t1 = time.perf_counter_ns()
        member.sendall(publish(subject, b"x"))
        wait_for(watcher, 6)
        t2 = time.perf_counter_ns()
        member.sendall(unsubscribe(sid))
        wait_for(watcher, 15, action=2)
        t3 = time.perf_counter_ns()
        if r >= rounds // 10:  # the first tenth warms up
            join.append((t1 - t0) / 1000)
            message.append((t2 - t1) / 1000)
            leave.append((t3 - t2) / 1000)
    watcher.close()
    member.close()
    return {
        name: {"p50_us": percentile(xs, 0.5), "p99_us": percentile(xs, 0.99), "n": len(xs)}
        for name, xs in (("join", join), ("leave", leave), ("message", message))
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/arqonbus")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--out", default="perf/results")
    args = ap.parse_args()
    srv = memory.Server(args.bin, extra='\n[steering]\ndefault_placement = "spread"\n')
    try:
        rows = []
        for label, w, m in (("across shards", 0, 1), ("same shard", 0, 0),
                            ("across shards (again)", 1, 0), ("same shard (again)", 1, 1)):
            res = measure(srv, args.rounds, w, m)
            rows.append({"placement": label, **res})
            print(f"{label:24} " + "  ".join(
                f"{k} p50 {v['p50_us']:7.1f} us p99 {v['p99_us']:7.1f} us" for k, v in res.items()),
                file=sys.stderr)
    finally:
        srv.stop()
    def table(cmd, commit):
        lines = [f"# Presence join/leave latency\n\n`{cmd}` at commit {commit}, 2 shards, "
                 f"plaintext, loopback, a Python client (its overhead is in every figure). "
                 f"From the member's write to the watcher's read; the first tenth of "
                 f"{args.rounds} rounds warms up.\n\n",
                 "| watcher / member | join p50 | join p99 | leave p50 | leave p99 | "
                 "message p50 | message p99 |\n|---|---:|---:|---:|---:|---:|---:|\n"]
        for r in rows:
            lines.append(f"| {r['placement']} | " + " | ".join(
                f"{r[k][q]:.0f} µs" for k in ("join", "leave", "message")
                for q in ("p50_us", "p99_us")) + " |\n")
        return "".join(lines)

    memory.write_results(args.out, "presence", rows, table)


if __name__ == "__main__":
    main()
