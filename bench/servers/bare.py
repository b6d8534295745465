"""The Python ceiling: a bare ``websockets`` server that broadcasts one payload to every socket.

``python -m bench.servers.bare --port P --redis-url URL --channel NAME``

Each socket gets a ``hello`` frame on connect (like the project's server) and then only waits.
A message published on the Redis pub/sub ``--channel`` is a ready-made JSON frame of the same
shape as the project's ``notification`` frame; the server sends it to every open socket with
``websockets.broadcast()`` (one frame built per connection, no compression). The emitter goes
through Redis, as ``notify()`` does for the project's server, so both paths include one Redis hop.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import redis.asyncio as redis
from websockets.asyncio.server import ServerConnection, broadcast, serve

CONNECTIONS: set[ServerConnection] = set()
HELLO = json.dumps(
    {"type": "hello", "protocol": 1, "user": None, "unread": None, "cursor": 0},
    separators=(",", ":"),
)


async def handler(ws: ServerConnection) -> None:
    await ws.send(HELLO)
    CONNECTIONS.add(ws)
    try:
        await ws.wait_closed()
    finally:
        CONNECTIONS.discard(ws)


async def listen(url: str, channel: str) -> None:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    async for message in pubsub.listen():
        if message["type"] == "message":
            broadcast(CONNECTIONS, message["data"].decode())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", default="bench.bare")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--ping-interval", type=float, default=20.0)
    args = parser.parse_args()
    async with serve(
        handler,
        args.host,
        args.port,
        compression=None,
        backlog=args.backlog,
        open_timeout=60,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_interval,
    ):
        await listen(args.redis_url, args.channel)


if __name__ == "__main__":
    asyncio.run(main())
