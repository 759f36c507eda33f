"""A small ArqonBus agent: answers requests on ``agents.<name>.ask`` (in a
queue group, so several copies share the load) and publishes an event on
``agents.<name>.events`` for every request it answers.

    python examples/agent.py --server tls://127.0.0.1:7420 \
        --ca arqonbus-data/tls/ca.pem --credential-file agent.token --name summarizer

Then, from another terminal: ``arqon ... req agents.summarizer.ask 'hello world'``
(and ``arqon ... sub 'agents.summarizer.events'`` to watch the events).
The environment variables ARQONBUS_URL, ARQONBUS_CA and
ARQONBUS_CREDENTIAL_FILE work as for ``arqon``. Ctrl-C drains and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal

import arqonbus


def answer(question: str) -> str:
    """The agent's "intelligence": replace with a model call."""
    words = question.split()
    return f"{len(words)} words; first: {words[0] if words else '-'}"


def on_event(event: arqonbus.Event) -> None:
    if isinstance(event, arqonbus.ServerDraining):
        logging.info("server draining (%s); the client will reconnect", event.reason)
    elif isinstance(event, arqonbus.Disconnected):
        logging.warning("disconnected: %s", event.reason)
    elif isinstance(event, arqonbus.Reconnected):
        logging.info("reconnected to shard %d", event.info.shard)


async def run(args: argparse.Namespace) -> None:
    client = await arqonbus.connect(
        args.server,
        ca_file=args.ca,
        credential_file=args.credential_file,
        name=f"agent-{args.name}",
        kind=arqonbus.ClientKind.AGENT,
        on_event=on_event,
    )
    ask = f"agents.{args.name}.ask"
    events = f"agents.{args.name}.events"
    sub = await client.subscribe(ask, queue=f"agents-{args.name}")
    print(f"Answering requests on {ask!r}, events on {events!r}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def serve() -> None:
        answered = 0
        async for msg in sub:
            reply = answer(msg.data.decode("utf-8", "replace"))
            if msg.reply:
                await msg.respond(reply)
            answered += 1
            await client.publish(
                events,
                json.dumps({"kind": "answered", "count": answered}),
                headers={"content-type": "application/json"},
            )

    server = asyncio.create_task(serve())
    await stop.wait()
    await client.drain()  # unsubscribes, delivers what was in flight, closes
    await server


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default=os.environ.get("ARQONBUS_URL", "tls://127.0.0.1:7420"))
    p.add_argument("--ca", default=os.environ.get("ARQONBUS_CA", "arqonbus-data/tls/ca.pem"))
    p.add_argument(
        "--credential-file",
        default=os.environ.get("ARQONBUS_CREDENTIAL_FILE", "arqonbus-data/credentials/bootstrap.token"),
    )
    p.add_argument("--name", default="echo")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
