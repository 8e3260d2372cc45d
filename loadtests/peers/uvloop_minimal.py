# loadtests/peers/uvloop_minimal: the floor of any uvloop server, for the hostile suite.
#
# An asyncio.Protocol on uvloop that answers every request head with one canned 302 (no
# parsing, no link table, no click recording), listening with linkedge's backlog (2048).
# loadtests/hostile.py runs it under the same connection flood as linkedge, so a figure the
# kernel and uvloop impose on every server here reads as such, not as linkedge's.
#   python -m loadtests.peers.uvloop_minimal      # prints "listening on http://127.0.0.1:PORT"
from __future__ import annotations

import asyncio
from typing import Final, cast

import uvloop

BACKLOG: Final = 2048  # edge/server.py LISTEN_BACKLOG
ANSWER: Final = (
    b"HTTP/1.1 302 Found\r\nLocation: https://www.example.com/\r\nContent-Length: 0\r\n\r\n"
)


class Redirect(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(ANSWER * data.count(b"\r\n\r\n"))


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Redirect, "127.0.0.1", 0, backlog=BACKLOG)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(serve())
