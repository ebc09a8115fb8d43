"""The naive relay the targets compare against: per-client json.dumps and a send loop.

This is the design most tutorials show (FastAPI's WebSocket example, `websockets`'
first broadcast recipe): one upstream reader; for every event, for every client,
serialize the event and `await ws.send(...)`. It runs on plain `websockets`
(17.x, asyncio), which is what FastAPI/uvicorn use underneath minus the ASGI
layer, so if anything it flatters the design. Like them it accepts
permessage-deflate when a client offers it.

    python bench/naive/relay.py --port 8101 --upstream ws://127.0.0.1:8100/
"""

import argparse
import asyncio
import json
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

clients: set = set()


async def handler(ws) -> None:
    clients.add(ws)
    try:
        await ws.wait_closed()
    finally:
        clients.discard(ws)


async def relay(upstream_url: str) -> None:
    seq = 0
    while True:
        try:
            async with connect(upstream_url, max_size=None, compression=None) as up:
                async for message in up:
                    data = json.loads(message)
                    for item in data if isinstance(data, list) else [data]:
                        seq += 1
                        event = {"seq": seq, "ts": int(time.time() * 1000),
                                 "topic": f"{item.get('ev')}.{item.get('sym')}", "data": item}
                        for ws in list(clients):
                            try:
                                await ws.send(json.dumps(event))
                            except ConnectionClosed:
                                pass
        except OSError:
            await asyncio.sleep(0.1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    async with serve(handler, "127.0.0.1", args.port, max_size=65536, backlog=4096):
        print(json.dumps({"ready": True, "port": args.port}), flush=True)
        await relay(args.upstream)


if __name__ == "__main__":
    asyncio.run(main())
