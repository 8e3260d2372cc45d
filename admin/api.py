"""Admin API listener (placeholder until the admin API issue lands): /healthz only."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from edge.http import BadRequest, parse_head


class _Protocol(asyncio.Protocol):
    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        try:
            parsed = parse_head(self.buf)
        except BadRequest:
            self.transport.close()
            return
        if parsed is None:
            return
        body = orjson.dumps({"status": "ok"})
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.transport.close()


class AdminServer:
    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.server: asyncio.AbstractServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        c = self.runtime.config
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Protocol(self.runtime), c.admin_host, c.admin_port
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
