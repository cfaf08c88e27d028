"""``k8stopo probe``: who reaches whom, as Kubernetes' netpol e2e tests print it.

Every pod tries every pod on each port and protocol, and every Service port
(its ClusterIP, and a NodePort at every node's IP). Each client pod runs one
small C client (podprobe) over all its targets with a short timeout, a bounded
number of clients at a time, so a 9-pod cluster with 2 ports and 2 protocols is
measured in seconds. Every attempt opens a new socket, so a Service picks a
backend anew each time.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from .cluster import Cluster
from .errors import RunError
from .kubeproxy.model import service_ports
from .node import Endpoint, Pod
from .servers import build
from .workload import pod_ref

TIMEOUT_MS = 1000
PARALLEL_CLIENTS = 4  # two cores: more would only queue
ERRORS = {"ok": None, "refused": "refused", "closed": "refused", "timeout": "timeout",
          "unreachable": "unreachable"}


@dataclass(frozen=True)
class Target:
    to: str  # ns/pod or svc:ns/name
    via: str  # the address dialled
    port: int
    protocol: str  # tcp | udp
    column: str = ""  # the truth table's column: ``to``, or ``to@node IP`` for a NodePort

    @property
    def heading(self) -> str:
        return self.column or self.to


@dataclass(frozen=True)
class Result:
    source: str  # ns/pod of the client
    to: str
    via: str
    port: int
    protocol: str
    connected: bool
    answered_by: str | None
    error: str | None
    connect_us: int  # TCP: connect() time (SYN to SYN-ACK); UDP: time to the answer
    column: str
    peer: str | None  # the source address the server saw (after any masquerade)

    def json(self) -> str:
        out = asdict(self)
        out["from"] = out.pop("source")
        return json.dumps({k: out[k] for k in ("from", "to", "via", "port", "protocol",
                                               "connected", "answered_by", "error")})


def declared_ports(cluster: Cluster) -> list[int]:
    """The container ports the workload declares (the default of ``--ports``)."""
    return sorted({p.container_port for pod in cluster.pods for p in pod.ports})


def targets(cluster: Cluster, ports: Sequence[int], protocols: Sequence[str]) -> list[Target]:
    """Every pod at every port and protocol, then every Service port (NodePorts at
    every node's IP) whose port and protocol were asked for."""
    out = [Target(pod_ref(p.name, p.namespace), str(p.ip), port, proto)
           for p in cluster.pods for port in ports for proto in protocols]
    for s in service_ports(cluster.spec.workload, cluster.pods):
        if s.protocol not in protocols or (ports and s.port not in ports):
            continue
        svc = f"svc:{s.namespace}/{s.service}"
        out.append(Target(svc, str(s.cluster_ip), s.port, s.protocol))
        if s.node_port:
            out += [Target(svc, str(n.ip), s.node_port, s.protocol, f"{svc}@{n.name}")
                    for n in cluster.nodes]
    return out


def _source(client: Endpoint) -> str:
    """A client pod's ``ns/name``; a node (probing from outside the pod network) its name."""
    return pod_ref(client.name, client.namespace) if isinstance(client, Pod) else client.name


def parse(client: Endpoint, wanted: Sequence[Target], output: str) -> list[Result]:
    """podprobe's lines, matched in order with the targets they answer."""
    lines = output.splitlines()
    if len(lines) != len(wanted):
        raise RunError(f"podprobe in {client.name} answered {len(lines)} of "
                       f"{len(wanted)} probes")
    out = []
    for t, line in zip(wanted, lines):
        _proto, _ip, _port, result, micros, answer, peer = line.split(" ")
        answered = answer if result == "ok" and answer != "-" else None
        out.append(Result(_source(client), t.to, t.via, t.port,
                          t.protocol, answered is not None, answered,
                          None if answered else ERRORS.get(result, "unreachable"), int(micros),
                          t.heading, peer if answered and peer != "-" else None))
    return out


def probe_from(cluster: Cluster, client: Endpoint, wanted: Sequence[Target], count: int = 1,
               timeout_ms: int = TIMEOUT_MS) -> list[Result]:
    """Run ``wanted`` (each ``count`` times) from one client pod (or node)."""
    binary = build(cluster.state, "podprobe")
    argv = [str(binary), str(timeout_ms), str(count),
            *(f"{t.protocol}:{t.via}:{t.port}" for t in wanted)]
    budget = len(wanted) * count * (timeout_ms / 1000 + 0.5) + 30
    output = client.output(argv, timeout=budget)
    return parse(client, [t for t in wanted for _ in range(count)], output)


def probe(cluster: Cluster, wanted: Sequence[Target], count: int = 1,
          clients: Iterable[Pod] | None = None) -> list[Result]:
    """Every client (default: every pod) to every target."""
    pods = list(clients if clients is not None else cluster.pods)
    build(cluster.state, "podprobe")  # once, before the clients run it in parallel
    with ThreadPoolExecutor(PARALLEL_CLIENTS) as pool:
        runs = list(pool.map(lambda p: probe_from(cluster, p, wanted, count), pods))
    return [r for run in runs for r in run]


def truth_tables(results: Sequence[Result]) -> str:
    """One table per (port, protocol): rows clients, columns servers, ``.`` connected,
    ``X`` blocked (any failed attempt blocks), as netpol e2e's TruthTable.PrettyPrint."""
    blocks = []
    keys = sorted({(r.protocol, r.port) for r in results})
    for proto, port in keys:
        rows = [r for r in results if (r.protocol, r.port) == (proto, port)]
        froms = sorted(dict.fromkeys(r.source for r in rows))
        tos = sorted(dict.fromkeys(r.column for r in rows), key=lambda c: (c.startswith("svc:"), c))
        cell: dict[tuple[str, str], bool] = {}
        for r in rows:
            key = (r.source, r.column)
            cell[key] = cell.get(key, True) and r.connected
        lines = [f"{proto}/{port}:", "\t".join(["-\t", *tos])]
        for f in froms:
            marks = [("." if cell[(f, t)] else "X") + "\t" if (f, t) in cell else "?\t"
                     for t in tos]
            lines.append("\t".join([f, *marks]))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)

