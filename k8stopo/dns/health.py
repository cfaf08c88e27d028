"""A tiny HTTP/1.0 responder for health and metrics endpoints (kubedns' :8081/readiness,
the sidecar's :10054/healthcheck/*), on asyncio so it lives beside a DNS server's loop
without threads; kubelet's httpGet probes and curl are its only clients.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from http import HTTPStatus

Handler = Callable[[], Awaitable[tuple[int, str]]]


async def serve(host: str, port: int, routes: dict[str, Handler]) -> asyncio.AbstractServer:
    """Answer ``GET path`` with the route's (status, text); 404 for any other path."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing in them matters here
            parts = request.decode("latin-1").split()
            route = routes.get(parts[1]) if len(parts) >= 2 and parts[0] == "GET" else None
            status, body = await route() if route else (404, "not found\n")
            data = body.encode()
            writer.write(f"HTTP/1.0 {status} {HTTPStatus(status).phrase}\r\n"
                         f"Content-Type: text/plain\r\nContent-Length: {len(data)}\r\n\r\n"
                         .encode() + data)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
