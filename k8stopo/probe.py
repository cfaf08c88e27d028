"""``k8stopo probe``: who reaches whom, as Kubernetes' netpol e2e tests print it.

Every pod tries every pod on each port and protocol, and every Service port
(its ClusterIP, or its DNS name with ``by_name``, and a NodePort at every node's
IP). Each client pod runs one small C client (podprobe) over all its targets, and
all clients run at once: inside a client every target is dialled at the same time,
each with the e2e suite's 1 s timeout, so a blocked target costs one timeout for
the whole table instead of one per pair. As the e2e suite, a probe that fails is
tried once more (``retry``) so a datagram lost under load does not read as a
policy. Every attempt opens a new socket, so a Service picks a backend anew each
time. ``parallel=False`` is the serial client (one client, one socket at a time),
kept to show that both give the same table.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

from .cluster import Cluster
from .dns.zone import DOMAIN
from .errors import RunError
from .kubeproxy.model import service_ports
from .node import Endpoint, Pod
from .servers import build
from .workload import pod_handle, pod_ref

TIMEOUT_MS = 1000  # agnhost connect --timeout=1s, as the netpol e2e suite's probes
#: sockets one podprobe holds open at once (its file descriptors stay well under 1024)
SOCKETS_PER_CLIENT = 256
ERRORS = {"ok": None, "refused": "refused", "closed": "refused", "timeout": "timeout",
          "unreachable": "unreachable", "unresolved": "unresolved"}


@dataclass(frozen=True)
class Target:
    to: str  # ns/pod or svc:ns/name
    via: str  # the address dialled, or the DNS name resolved in the client pod
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


def workload_pods(cluster: Cluster) -> list[Pod]:
    """The manifests' pods, without those the agents deploy themselves (kube-dns)."""
    workload = cluster.spec.workload
    mine = {pod_handle(p.name, p.namespace) for p in (workload.pods if workload else ())}
    return [p for p in cluster.pods if p.name in mine]


def declared_ports(cluster: Cluster) -> list[int]:
    """The container ports the workload declares (the default of ``--ports``)."""
    return sorted({p.container_port for pod in cluster.pods for p in pod.ports})


def targets(cluster: Cluster, ports: Sequence[int], protocols: Sequence[str],
            by_name: bool = False) -> list[Target]:
    """Every pod at every port and protocol, then every Service port (NodePorts at
    every node's IP) whose port and protocol were asked for; with ``by_name`` a
    Service is dialled as ``svc.ns.svc.cluster.local``, resolved in the client pod."""
    out = [Target(pod_ref(p.name, p.namespace), str(p.ip), port, proto)
           for p in workload_pods(cluster) for port in ports for proto in protocols]
    for s in service_ports(cluster.spec.workload, cluster.pods):
        if s.protocol not in protocols or (ports and s.port not in ports):
            continue
        svc = f"svc:{s.namespace}/{s.service}"
        via = f"{s.service}.{s.namespace}.svc.{DOMAIN}" if by_name else str(s.cluster_ip)
        out.append(Target(svc, via, s.port, s.protocol))
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
               timeout_ms: int = TIMEOUT_MS, parallel: bool = True) -> list[Result]:
    """Run ``wanted`` (each ``count`` times, in rounds) from one client pod (or node):
    all targets at once, or one socket at a time without ``parallel``."""
    binary = build(cluster.state, "podprobe")
    sockets = SOCKETS_PER_CLIENT if parallel else 1
    argv = [str(binary), str(timeout_ms), str(count), str(sockets),
            *(f"{t.protocol}:{t.via}:{t.port}" for t in wanted)]
    rounds = count * -(-len(wanted) // sockets)
    output = client.run_tool(argv, timeout=rounds * (timeout_ms / 1000 + 0.5) + 30).stdout
    return parse(client, [t for t in wanted for _ in range(count)], output)


def probe(cluster: Cluster, wanted: Sequence[Target], count: int = 1,
          clients: Iterable[Pod] | None = None, retry: bool = False,
          parallel: bool = True) -> list[Result]:
    """Every client (default: every pod) to every target, all clients at once (one after
    another without ``parallel``). With ``retry``, each failed attempt is made once more
    and its second result kept, as the e2e suite tries a blocked probe twice."""
    pods = list(clients if clients is not None else cluster.pods)
    build(cluster.state, "podprobe")  # once, before the clients run it in parallel

    def run(client: Pod, todo: Sequence[Target], n: int) -> list[Result]:
        return probe_from(cluster, client, todo, n, parallel=parallel) if todo else []

    per_client = _each(pods, lambda c: run(c, wanted, count), parallel)
    if retry:
        failed = [[i for i, r in enumerate(rs) if not r.connected] for rs in per_client]
        again = _each(list(zip(pods, failed)),
                      lambda pf: run(pf[0], [wanted[i // count] for i in pf[1]], 1), parallel)
        for rs, idx, new in zip(per_client, failed, again):
            for i, r in zip(idx, new):
                rs[i] = r
    return [r for rs in per_client for r in rs]


def _each(items: list[Any], work: Callable[[Any], list[Result]],
          parallel: bool) -> list[list[Result]]:
    """``work`` over ``items``, in order of items: in one thread each, or one by one."""
    if not parallel or len(items) <= 1:
        return [work(i) for i in items]
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(work, items))


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

