"""kubedns: the authoritative server for the cluster domain, as the kube-dns pod runs it.

It listens on 127.0.0.1:10053 inside the kube-dns pod (kubedns' ``--dns-port``),
UDP and TCP, behind the pod's dnsmasq cache; readiness at :8081/readiness and a
query counter per type at :10055/metrics, kubedns' own ports. The records come from a
JSON file the agent writes (:func:`k8stopo.dns.zone.records`, recomputed when
pods or Services change); SIGHUP reloads it, as kubedns follows the API server's
watch. Run as ``python -m k8stopo.dns.server RECORDS``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
from collections import Counter
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rdatatype

from . import health
from .zone import Record, Zone

DNS_PORT = 10053
READINESS_PORT = 8081
METRICS_PORT = 10055
UDP_PAYLOAD = 512  # without EDNS0 (RFC 1035)


class Kubedns:
    """The zone loaded from the agent's file and the queries answered from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zone = self.load()
        self.queries: Counter[str] = Counter()  # per query type, as Prometheus would label it

    def load(self) -> Zone:
        return Zone(Record(*r) for r in json.loads(self.path.read_text()))

    def reload(self) -> None:
        self.zone = self.load()

    def reply(self, wire: bytes, udp: bool) -> bytes | None:
        """The response's wire format (truncated to the client's UDP payload), or None for
        a message that is not a query."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if query.flags & dns.flags.QR:
            return None
        if query.question:
            self.queries[dns.rdatatype.to_text(query.question[0].rdtype)] += 1
        response = self.zone.answer(query)
        limit = max(query.payload, UDP_PAYLOAD) if udp and query.edns >= 0 else (
            UDP_PAYLOAD if udp else 65535)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: Kubedns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out = self.server.reply(data, udp=True)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


async def _tcp(server: Kubedns, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> None:
    """RFC 7766: two-byte length, message; several queries per connection."""
    try:
        while True:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            out = server.reply(await reader.readexactly(size), udp=False)
            if out is None:
                break
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(records: Path, host: str, port: int) -> None:
    server = Kubedns(records)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    loop.add_signal_handler(signal.SIGTERM, done.set_result, None)
    await loop.create_datagram_endpoint(lambda: _Udp(server), local_addr=(host, port))
    await asyncio.start_server(lambda r, w: _tcp(server, r, w), host, port)

    async def ready() -> tuple[int, str]:
        return 200, "ok\n"

    async def metrics() -> tuple[int, str]:
        return 200, "".join(f'kubedns_queries_total{{type="{t}"}} {n}\n'
                            for t, n in sorted(server.queries.items()))

    await health.serve("0.0.0.0", READINESS_PORT, {"/readiness": ready})
    await health.serve("0.0.0.0", METRICS_PORT, {"/metrics": metrics})
    await done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DNS_PORT)
    args = parser.parse_args()
    asyncio.run(main(args.records, args.host, args.port))
