"""The kube-dns pod's health sidecar (k8s-dns-sidecar): :10054/healthcheck/dnsmasq and
/healthcheck/kubedns answer 200 only when a real query to that server (dnsmasq on
:53, kubedns on :10053) for the kube-dns Service's own name gets an answer, so a
liveness probe sees a cache or server that stopped answering. Checked per request
instead of the sidecar's periodic probe: same verdict, no stale state.
Run as ``python -m k8stopo.dns.sidecar NAME``.
"""
from __future__ import annotations

import argparse
import asyncio
import signal

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

from . import health
from .server import DNS_PORT

SIDECAR_PORT = 10054
PROBE_TIMEOUT_S = 2.0


async def probe(name: str, port: int) -> tuple[int, str]:
    """200 if 127.0.0.1:port answers ``name`` A with an address, 503 (and why) if not."""
    try:
        response = await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1",
                                            timeout=PROBE_TIMEOUT_S, port=port)
    except (dns.exception.DNSException, OSError) as exc:
        return 503, f"no answer from :{port}: {exc!r}\n"
    if response.rcode() != dns.rcode.NOERROR or not response.answer:
        return 503, f":{port} answered {dns.rcode.to_text(response.rcode())} without records\n"
    return 200, f"ok: {response.answer[0].to_text()}\n"


async def main(name: str) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, done.set_result, None)
    await health.serve("0.0.0.0", SIDECAR_PORT, {
        "/healthcheck/dnsmasq": lambda: probe(name, 53),
        "/healthcheck/kubedns": lambda: probe(name, DNS_PORT),
    })
    await done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the name both servers must answer")
    asyncio.run(main(parser.parse_args().name))
