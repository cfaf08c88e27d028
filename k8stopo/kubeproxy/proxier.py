"""The userspace proxier process: one per node, as the original kube-proxy (mode
``userspace``, pkg/proxy/userspace, removed in Kubernetes 1.26) ran.

It listens on one port of the node per Service port (a port the kernel picks, as
the original's ``net.Listen(":0")``) and relays each client connection to an
endpoint chosen round-robin (LoadBalancerRR), sticking to one per client IP with
ClientIP affinity. Its defining behaviour is ``tryConnect``: when dialling the
chosen endpoint fails (refused, or no answer within 250 ms, 500 ms, 1 s, 2 s) it
moves to the next endpoint, so a backend that is down but still listed costs a
retry instead of a failed connection. UDP is relayed per client address with an
idle timeout (the original's --udp-timeout, 250 ms by default).

The original was Go with a goroutine per connection; asyncio gives the same
per-connection concurrency in one process. Run as::

    python -m k8stopo.kubeproxy.proxier CONFIG.json BIND_ADDRESS

It binds its ports to BIND_ADDRESS (the original's --bind-address; the portals DNAT
there), so a UDP reply leaves from the address the client's packet was sent to and
the node's conntrack can undo the portal's DNAT (from 0.0.0.0 the kernel would pick
the address of the interface towards the pod, a bridge's, and the reply would not
match the connection).

CONFIG holds ``[{"name", "protocol", "endpoints": ["ip:port", ...],
"affinity_timeout"}]``; SIGHUP re-reads it. After every (re)load it prints one
JSON line ``{"ports": {name/protocol: port}}`` on stdout.
"""
from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)  # EndpointDialTimeouts
UDP_IDLE_TIMEOUT = 0.25


@dataclass
class Balancer:
    """LoadBalancerRR for one service port."""

    endpoints: list[tuple[str, int]]
    affinity_timeout: int | None
    index: int = 0
    sticky: dict[str, tuple[tuple[str, int], float]] = field(default_factory=dict)

    def next(self, client: str, reset: bool) -> tuple[str, int] | None:
        if not self.endpoints:
            return None
        now = time.monotonic()
        if self.affinity_timeout and not reset and client in self.sticky:
            ep, last = self.sticky[client]
            if now - last < self.affinity_timeout and ep in self.endpoints:
                self.sticky[client] = (ep, now)
                return ep
        ep = self.endpoints[self.index % len(self.endpoints)]
        self.index = (self.index + 1) % len(self.endpoints)
        if self.affinity_timeout:
            self.sticky[client] = (ep, now)
        return ep


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            writer.close()


class Proxier:
    def __init__(self, config: str, bind: str) -> None:
        self.config = config
        self.bind = bind
        self.balancers: dict[str, Balancer] = {}
        self.servers: dict[str, Any] = {}  # key -> asyncio Server or DatagramTransport
        self.ports: dict[str, int] = {}

    async def tcp_client(self, key: str, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[0]
        backend = None
        for attempt, timeout in enumerate(DIAL_TIMEOUTS):  # tryConnect
            ep = self.balancers[key].next(client, reset=attempt > 0)
            if ep is None:
                break
            try:
                backend = await asyncio.wait_for(asyncio.open_connection(*ep), timeout)
                break
            except (OSError, asyncio.TimeoutError):
                continue
        if backend is None:
            writer.close()
            return
        b_reader, b_writer = backend
        await asyncio.gather(_pipe(reader, b_writer), _pipe(b_reader, writer))
        writer.close()
        b_writer.close()

    async def udp_listener(self, key: str) -> int:
        loop = asyncio.get_running_loop()
        proxier = self

        class Front(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport
                self.clients: dict[tuple[str, int], Any] = {}
                self.opening: set[asyncio.Task[None]] = set()  # the loop keeps weak refs only

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                back = self.clients.get(addr)
                if back is not None:
                    back.sendto(data)
                    return
                ep = proxier.balancers[key].next(addr[0], reset=False)
                if ep is not None:
                    task = loop.create_task(self.open(addr, ep, data))
                    self.opening.add(task)
                    task.add_done_callback(self.opening.discard)

            async def open(self, addr: tuple[str, int], ep: tuple[str, int], data: bytes) -> None:
                front = self.transport
                clients = self.clients
                handle: asyncio.TimerHandle  # the idle timer, re-armed by every reply

                class Back(asyncio.DatagramProtocol):
                    def datagram_received(self, reply: bytes, _: Any) -> None:
                        front.sendto(reply, addr)
                        handle.cancel()
                        arm()

                def arm() -> None:
                    nonlocal handle
                    handle = loop.call_later(UDP_IDLE_TIMEOUT, expire)

                def expire() -> None:
                    clients.pop(addr, None)
                    transport.close()

                transport, _ = await loop.create_datagram_endpoint(Back, remote_addr=ep)
                clients[addr] = transport
                handle = loop.call_later(UDP_IDLE_TIMEOUT, expire)
                transport.sendto(data)

        transport, _ = await loop.create_datagram_endpoint(Front, local_addr=(self.bind, 0))
        self.servers[key] = transport
        return transport.get_extra_info("sockname")[1]

    async def load(self) -> None:
        with open(self.config) as f:
            wanted = {f"{s['name']}/{s['protocol']}": s for s in json.load(f)}
        for key in list(self.servers):
            if key not in wanted:
                self.servers.pop(key).close()
                self.balancers.pop(key)
                self.ports.pop(key)
        for key, s in wanted.items():
            eps = [(e.rsplit(":", 1)[0], int(e.rsplit(":", 1)[1])) for e in s["endpoints"]]
            old = self.balancers.get(key)
            if old is None or old.endpoints != eps or old.affinity_timeout != s["affinity_timeout"]:
                self.balancers[key] = Balancer(eps, s["affinity_timeout"])
            if key not in self.servers:
                if s["protocol"] == "tcp":
                    server = await asyncio.start_server(
                        functools.partial(self.tcp_client, key), self.bind, 0, backlog=512)
                    self.servers[key] = server
                    self.ports[key] = server.sockets[0].getsockname()[1]
                else:
                    self.ports[key] = await self.udp_listener(key)
        print(json.dumps({"ports": self.ports}), flush=True)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reload = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        loop.add_signal_handler(signal.SIGTERM, loop.stop)
        await self.load()
        while True:
            await reload.wait()
            reload.clear()
            await self.load()


if __name__ == "__main__":
    try:
        asyncio.run(Proxier(sys.argv[1], sys.argv[2]).run())
    except RuntimeError:  # the loop stopped on SIGTERM
        pass
