"""examples/agent.py against the real server: it answers a request, publishes
an event, and drains on SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import arqonbus
from server import LIMIT, Node, Tenant

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "agent.py"


async def test_the_agent_example_answers_and_publishes(node: Node, tenant: Tenant) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--server", node.url, "--ca", node.ca_path,
        "--credential-file", str(tenant.token_file), "--name", "summarizer",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), LIMIT)
        assert line.startswith(b"Answering requests on"), line
        c = await arqonbus.connect(node.url, ca_file=node.ca_path, credential_file=str(tenant.token_file))
        events = await c.subscribe("agents.summarizer.events")
        reply = await c.request("agents.summarizer.ask", "hello big world", timeout=LIMIT)
        assert reply.text() == "3 words; first: hello"
        event = await events.next_msg(timeout=LIMIT)
        assert json.loads(event.data) == {"kind": "answered", "count": 1}
        assert event.header("content-type") == "application/json"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), LIMIT) == 0
        await c.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
