"""The two kube-proxy experiments (docs/services.md), kinds of ``k8stopo bench``.

1. ``kube-proxy-no-retry``: a Service with 3 backends; one backend's server stops (it
   refuses: the pod's kernel answers RST) or is blackholed (its packets are dropped: it
   hangs), while the pod stays ready and listed; then readiness removes it. The
   fraction of connections that fail, per proxy mode. The seed's claim: iptables
   mode picks a backend once per connection and cannot retry, so about 1/3 fail
   until readiness removes the backend; the userspace proxier retries another.
2. ``kube-proxy-rules``: 10, 100, 1000, ... Services with 2 endpoints each, per mode:
   the seconds one node's rule load takes (kube-proxy's sync), and the first-packet
   latency (TCP connect, SYN to SYN-ACK, measured by podprobe) to the first and to
   the last Service of the list, median and p99 over many new connections.

``k8stopo bench --experiment experiments/control-plane/kube-proxy-rules.yaml`` (or
``…/kube-proxy-no-retry.yaml``); every value is measured in that run, nothing is copied.
"""
from __future__ import annotations

import functools
import ipaddress
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .. import probe
from ..cluster import Cluster
from ..cni import names as cni_names
from ..cni import variant
from ..controlplane import Chart, Kind, Panel, Recorder, needs_of
from ..measure import MeasurementError, Sample, percentile
from ..servers import PodServers
from ..spec import ClusterSpec, SpecError
from ..workload import ContainerPort, PodSpec, ServicePort, ServiceSpec, Workload, pod_handle
from . import MODES, proxy_class
from .base import KubeProxy
from .model import service_ports

WEB_PORT = 8080
SERVICE_IPS = ipaddress.IPv4Network("10.96.0.0/12")
SCENARIO = "pod-to-service"
COLUMNS = ("proxy_mode", "phase", "services", "endpoints_per_service", "attempts", "resync")
#: the most Services one cluster gets (ClusterIPs from 10.96.1.0 on stay in 10.96.0.0/12)
MAX_SERVICES = 100_000


def workload(services: int, backends: int, backend_nodes: Sequence[str]) -> Workload:
    """A client on n1, ``backends`` web pods spread over ``backend_nodes``, and
    ``services`` ClusterIP Services all selecting them (so each has ``backends``
    endpoints), with ClusterIPs from 10.96.1.0 on (clear of the reserved ones)."""
    pods = [PodSpec(name="client", node_name="n1")]
    pods += [PodSpec(name=f"web-{i}", labels={"app": "web"},
                     node_name=backend_nodes[i % len(backend_nodes)],
                     ports=(ContainerPort(WEB_PORT, "TCP", "http"),)) for i in range(backends)]
    first = int(SERVICE_IPS.network_address) + 256
    svcs = [ServiceSpec(name=f"svc-{i}", cluster_ip=ipaddress.IPv4Address(first + i),
                        selector={"app": "web"},
                        ports=(ServicePort(port=80, target_port=WEB_PORT),))
            for i in range(services)]
    return Workload(pods=tuple(pods), services=tuple(svcs))


def _cluster(cni: str, mode: str, wl: Workload, nodes: int) -> Cluster:
    """Validated, not built."""
    return Cluster(ClusterSpec(cni=cni, nodes=nodes, pods_per_node=0, workload=wl),
                   agents=[PodServers, proxy_class(mode)], variant=variant(cni))


def _one_cni(cni: str) -> None:
    found = cni_names(cni)
    if len(found) != 1 or cni.strip() == "all":
        raise SpecError(f"cni: one variant, not {cni!r}")


def _check_modes(modes: Sequence[str]) -> None:
    for mode in modes:
        proxy_class(mode)


def _attempts(cluster: Cluster, service: str, count: int) -> tuple[str, list[probe.Result]]:
    """``count`` new TCP connections from the client pod to ``service``: its ClusterIP
    and what podprobe saw of each."""
    s = next(p for p in service_ports(cluster.spec.workload, cluster.pods)
             if p.service == service)
    t = probe.Target(f"svc:default/{service}", str(s.cluster_ip), s.port, "tcp")
    client = cluster.pod(pod_handle("client", "default"))
    return str(s.cluster_ip), probe.probe_from(cluster, client, [t], count)


# -- 1. no retry in iptables mode ----------------------------------------------------

PHASES = ("all-answer", "one-refuses-still-ready", "one-hangs-still-ready", "one-hangs-not-ready")

@dataclass(frozen=True)
class NoRetryParams:
    """``experiments/control-plane/kube-proxy-no-retry.yaml``'s keys."""

    cni: str = "flannel-vxlan"
    modes: tuple[str, ...] = tuple(MODES)
    attempts: int = 300  # connections per phase
    hung_attempts: int = 90  # while a backend hangs (each failure waits podprobe's 1 s)
    repeat: int = 1

    def check(self) -> None:
        _one_cni(self.cni)
        _check_modes(self.modes)
        if not (1 <= self.attempts <= 10_000 and 1 <= self.hung_attempts <= 1000
                and 1 <= self.repeat <= 20):
            raise SpecError("attempts must be 1 to 10000, hung_attempts 1 to 1000, "
                            "repeat 1 to 20")


def _no_retry_cluster(p: NoRetryParams, mode: str) -> Cluster:
    return _cluster(p.cni, mode, workload(1, 3, ["n2", "n3"]), 3)


def no_retry(p: NoRetryParams, rec: Recorder) -> None:
    """Per repeat and mode, one cluster through the four phases."""
    for repeat in range(p.repeat):
        for mode in p.modes:
            what = f"{mode} r{repeat}"
            if not rec.todo(what, len(PHASES)):
                continue
            write = functools.partial(rec.write, cni=p.cni, scenario=SCENARIO, protocol="tcp",
                                      repeat=repeat, nodes=3, proxy_mode=mode, services=1,
                                      endpoints_per_service=3)
            with rec.attempt(what, **write.keywords), _no_retry_cluster(p, mode) as cluster:
                _phases(cluster, rec, functools.partial(
                    write, client=cluster.pod(pod_handle("client", "default"))),
                    mode, p.attempts, p.hung_attempts)


def _phases(cluster: Cluster, rec: Recorder, write: Callable[..., None], mode: str,
            attempts: int, hung_attempts: int) -> None:
    servers = next(a for a in cluster.agents if isinstance(a, PodServers))
    victim = cluster.pod(pod_handle("web-1", "default"))

    def failures(phase: str, count: int) -> None:
        """``count`` new connections to the Service: the fraction that got no answer."""
        address, got = _attempts(cluster, "svc-0", count)
        failed = sum(not r.connected for r in got)
        write([Sample("failed_fraction", failed / count, "ratio")], server_ip=address,
              phase=phase, attempts=count)
        rec.step(f"{mode} {phase}: {failed}/{count} failed")

    failures(PHASES[0], attempts)
    servers.stop_server(victim)  # refuses (RST) while ready and listed
    failures(PHASES[1], attempts)
    servers.start(victim)
    victim.run(["iptables", "-I", "INPUT", "-p", "tcp", "--dport", str(WEB_PORT), "-j", "DROP"])
    failures(PHASES[2], hung_attempts)  # SYNs vanish, while ready and listed
    cluster.set_ready(victim, False)
    failures(PHASES[3], attempts)


# -- 2. rule scaling -------------------------------------------------------------------

@dataclass(frozen=True)
class RulesParams:
    """``experiments/control-plane/kube-proxy-rules.yaml``'s keys."""

    cni: str = "flannel-vxlan"
    modes: tuple[str, ...] = tuple(MODES)
    services: tuple[int, ...] = (10, 100, 1000)  # Service counts, one cluster each
    connections: int = 200  # per latency figure
    resyncs: int = 3  # timed syncs after the build's first
    repeat: int = 1

    def check(self) -> None:
        _one_cni(self.cni)
        _check_modes(self.modes)
        if not all(1 <= n <= MAX_SERVICES for n in self.services):
            raise SpecError(f"services must each be 1 to {MAX_SERVICES}")
        if not (1 <= self.connections <= 10_000 and 1 <= self.resyncs <= 20
                and 1 <= self.repeat <= 20):
            raise SpecError("connections must be 1 to 10000, resyncs and repeat 1 to 20")


def _rules_cluster(p: RulesParams, mode: str, services: int) -> Cluster:
    return _cluster(p.cni, mode, workload(services, 2, ["n2"]), 2)


def rule_scaling(p: RulesParams, rec: Recorder) -> None:
    """Per repeat, mode and Service count, one cluster: its build, resyncs, connects."""
    for repeat in range(p.repeat):
        for mode in p.modes:
            for n in p.services:
                what = f"{mode} {n} services r{repeat}"
                if not rec.todo(what, 1):
                    continue
                with rec.attempt(what, cni=p.cni, scenario=SCENARIO, protocol="control",
                                 repeat=repeat, nodes=2, proxy_mode=mode, services=n,
                                 endpoints_per_service=2):
                    started = time.monotonic()
                    with _rules_cluster(p, mode, n) as cluster:
                        _measure_rules(p, rec, cluster, mode, n, repeat,
                                       time.monotonic() - started)
                rec.step(what)


def _measure_rules(p: RulesParams, rec: Recorder, cluster: Cluster, mode: str, n: int,
                   repeat: int, built: float) -> None:
    proxy = next(a for a in cluster.agents if isinstance(a, KubeProxy))
    client = cluster.pod(pod_handle("client", "default"))
    write = functools.partial(rec.write, cni=p.cni, scenario=SCENARIO, repeat=repeat, nodes=2,
                              proxy_mode=mode, services=n, endpoints_per_service=2)
    write([Sample("cluster_build_s", built, "s")], protocol="control", phase="build",
          attempts=1)
    for r in range(p.resyncs):  # the first load happened in the build; time resyncs
        proxy.sync()
        write([Sample("sync_s", proxy.sync_seconds["n1"], "s")], protocol="control",
              phase="sync", attempts=1, resync=r)
    for phase, service in (("first-service", "svc-0"), ("last-service", f"svc-{n - 1}")):
        address, got = _attempts(cluster, service, p.connections)
        ok = [r.connect_us for r in got if r.connected]
        if len(ok) < p.connections:
            raise MeasurementError(f"{mode} {n} services: {p.connections - len(ok)} of "
                                   f"{p.connections} connections to {service} failed")
        write([Sample("connect_p50_us", statistics.median(ok), "us"),
               Sample("connect_p99_us", percentile(ok, 99), "us")], protocol="tcp",
              client=client, server_ip=address, phase=phase, attempts=p.connections)


# -- the kinds ---------------------------------------------------------------------------

def _needs(clusters: Sequence[Cluster]) -> dict[str, tuple[str, ...]]:
    return needs_of(*((c.spec.cni, c.requires) for c in clusters))


EXPERIMENTS = {k.name: k for k in (
    Kind(name="kube-proxy-no-retry", params=NoRetryParams, columns=COLUMNS, run=no_retry,
         needs=lambda p: _needs([_no_retry_cluster(p, m) for m in p.modes]),
         steps=lambda p: p.repeat * len(p.modes) * len(PHASES),
         charts=(Chart("no_retry", "A backend that stops answering, 3 endpoints, per "
                       "kube-proxy mode (fraction of new connections that failed)",
                       (Panel("failed connections (fraction)", "failed_fraction", x="phase",
                              by="proxy_mode", style="bars"),)),)),
    Kind(name="kube-proxy-rules", params=RulesParams, columns=COLUMNS, run=rule_scaling,
         needs=lambda p: _needs([_rules_cluster(p, m, max(p.services)) for m in p.modes]),
         steps=lambda p: p.repeat * len(p.modes) * len(p.services),
         charts=(Chart("rule_scaling", "kube-proxy rules: N Services with 2 endpoints each",
                       (Panel("rule load (resync) on one node, s", "sync_s", x="services",
                              by="proxy_mode", log=True),
                        Panel("TCP connect to the last Service, p50, µs", "connect_p50_us",
                              x="services", by="proxy_mode", where=(("phase", "last-service"),),
                              log=True),
                        Panel("TCP connect to the last Service, p99, µs", "connect_p99_us",
                              x="services", by="proxy_mode", where=(("phase", "last-service"),),
                              log=True))),)),
)}
