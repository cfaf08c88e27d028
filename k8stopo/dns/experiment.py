"""Experiment 3, cluster DNS (kind ``dns`` of ``k8stopo bench``): what a lookup costs when
dnsmasq's cache has the answer or not, and what ``ndots:5`` costs a name that is not found
in the first search domain.

Part 1 (dnsperf, from a pod on the first node to 10.96.0.10, kube-dns on the last):

* ``hit``: the names of ``hit_names`` Services, asked once to fill dnsmasq's cache,
  then for ``duration`` seconds (the 30 s TTL outlives the run);
* ``miss``: after dnsmasq's cache is emptied, every one of ``services`` Service
  names once: each is forwarded to kubedns;
* ``nxdomain``: as many unique names that do not exist (kube-dns' dnsmasq runs
  with ``--no-negcache``, so each goes to kubedns).

each with ``outstanding`` in-flight queries (1: one lookup at a time, its own
latency; 100, dnsperf's default: a saturated server, its rate).

Part 2 (glibc's getaddrinfo in the pod, :mod:`k8stopo.dns.lookup`): for each name
form, the A queries kubedns receives for one lookup with an empty cache (its
per-type counter), and the latency of ``lookup_count`` lookups once warm.

``k8stopo bench --experiment experiments/control-plane/dns.yaml`` appends the rows of
both parts (protocol ``dns`` and ``getaddrinfo``) to one CSV and keeps the raw dnsperf
outputs beside it.
"""
from __future__ import annotations

import ipaddress
import json
import re
import secrets
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from ..cluster import Cluster
from ..cni import names as cni_names
from ..cni import variant
from ..controlplane import Chart, Kind, Panel, Recorder
from ..measure import Sample, percentile
from ..node import Pod
from ..results import utc_now
from ..spec import ClusterSpec, SpecError
from ..workload import PodSpec, ServiceSpec, Workload, pod_handle
from .agent import PACKAGE_ROOT, SERVICE_IP, ClusterDNS
from .perf import dnsperf
from .zone import DOMAIN

FIRST_SERVICE_IP = ipaddress.IPv4Address("10.96.16.0")  # clear of 10.96.0.x
CONDITIONS = ("hit", "miss", "nxdomain")
SCENARIO = "pod-to-dns"
COLUMNS = ("condition", "outstanding", "queries", "name", "address", "lookups")


@dataclass(frozen=True)
class Params:
    """``experiments/control-plane/dns.yaml``'s keys."""

    cni: str = "flannel-vxlan"
    nodes: int = 2
    services: int = 2000
    hit_names: int = 500
    duration: int = 5
    repeat: int = 3
    outstanding: tuple[int, ...] = (1, 100)
    lookup_count: int = 200
    names: tuple[str, ...] = ("web", f"web.default.svc.{DOMAIN}.")

    def check(self) -> None:
        found = cni_names(self.cni)
        if len(found) != 1 or self.cni.strip() == "all":
            raise SpecError(f"cni: one variant, not {self.cni!r}")
        if not 1 <= self.hit_names <= min(self.services, 1000):
            raise SpecError("hit_names must be between 1 and min(services, 1000): "
                            "dnsmasq's cache holds 1000 names")
        if not 1 <= self.duration <= 20:
            raise SpecError("duration must be 1 to 20 s: hits must stay within the 30 s TTL")
        if self.services > 60000 or self.repeat < 1 or self.lookup_count < 1:
            raise SpecError("services must be at most 60000, repeat and lookup_count 1 or more")
        if not self.outstanding or not all(1 <= q <= 1000 for q in self.outstanding):
            raise SpecError("outstanding must list 1 to 1000 in-flight queries")
        for name in self.names:  # each is an argument of the lookup helper in the pod
            if not re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9.])?", name):
                raise SpecError(f"names: {name!r} is not a DNS name")


def workload(p: Params) -> Workload:
    """The client pod on n1, ``web`` (the name part 2 looks up) and ``services`` more
    ClusterIP Services."""
    web = ServiceSpec(name="web", cluster_ip=ipaddress.IPv4Address("10.96.0.50"))
    many = tuple(ServiceSpec(name=f"svc-{i:05d}", cluster_ip=FIRST_SERVICE_IP + i)
                 for i in range(p.services))
    return Workload(pods=(PodSpec(name="client", node_name="n1"),), services=(web, *many))


def _client(cluster: Cluster) -> Pod:
    return cluster.pod(pod_handle("client", "default"))


def _names(p: Params) -> dict[str, list[str]]:
    services = [f"svc-{i:05d}.default.svc.{DOMAIN} A" for i in range(p.services)]
    return {"hit": services[:p.hit_names], "miss": services,
            "nxdomain": [f"nx-{secrets.token_hex(6)}.default.svc.{DOMAIN} A"
                         for _ in range(p.services)]}


def lookup(client: Pod, name: str, count: int) -> dict[str, Any]:
    """``count`` getaddrinfo calls of ``name`` in ``client``: the address and each's ns."""
    return json.loads(client.output([sys.executable, "-m", "k8stopo.dns.lookup", name, count],
                                    env={"PYTHONPATH": str(PACKAGE_ROOT)}))


def _cluster(p: Params) -> Cluster:
    """Validated, not built: the client pod on n1, kube-dns on the last node."""
    return Cluster(ClusterSpec(cni=p.cni, nodes=p.nodes, pods_per_node=0, workload=workload(p)),
                   agents=[ClusterDNS], variant=variant(p.cni))


def _steps(p: Params) -> int:
    return p.repeat * (len(p.outstanding) * len(CONDITIONS) + len(p.names))


def run(p: Params, rec: Recorder) -> None:
    """One cluster (one unit: a resumed run measures it again, writing what it lacked)."""
    if not rec.todo(p.cni, _steps(p)):
        return
    with rec.attempt(p.cni, cni=p.cni, scenario=SCENARIO, protocol="dns",
                     nodes=p.nodes), _cluster(p) as cluster:
        agent = next(a for a in cluster.agents if isinstance(a, ClusterDNS))
        for repeat in range(p.repeat):
            run_perf(cluster, agent, p, rec, repeat)
            run_ndots(cluster, agent, p, rec, repeat)


def run_perf(cluster: Cluster, agent: ClusterDNS, p: Params, rec: Recorder,
             repeat: int) -> None:
    client = _client(cluster)
    names = _names(p)
    for q in p.outstanding:
        for condition in CONDITIONS:
            if condition == "hit":
                dnsperf(client, str(SERVICE_IP), names["hit"], p.duration, once=True)
            else:
                agent.clear_cache()
            started = utc_now()
            m = dnsperf(client, str(SERVICE_IP), names[condition], p.duration,
                        outstanding=q, once=condition != "hit")
            raw = rec.raw(f"{p.cni}_{condition}_q{q}_r{repeat}.txt", m.raw)
            rec.write(m.samples, cni=p.cni, scenario=SCENARIO, protocol="dns", repeat=repeat,
                      nodes=p.nodes,
                      duration_s=p.duration if condition == "hit" else 0, client=client,
                      server_ip=str(SERVICE_IP), raw_file=raw, started_at=started,
                      condition=condition, outstanding=q, queries=len(names[condition]))
            rec.step(f"{condition} q={q} r{repeat}: "
                     + ", ".join(f"{s.metric}={s.value:.3f}" for s in m.samples))


def run_ndots(cluster: Cluster, agent: ClusterDNS, p: Params, rec: Recorder,
              repeat: int) -> None:
    client = _client(cluster)
    for name in p.names:
        agent.clear_cache()
        before = agent.queries_answered("A")
        lookup(client, name, 1)
        queries = agent.queries_answered("A") - before
        got = lookup(client, name, p.lookup_count + 1)
        times = [ns / 1e6 for ns in got["ns"][1:]]  # the first refills the cache
        rec.write([Sample("a_queries_to_kubedns", queries, "count"),
                   Sample("latency_p50_ms", statistics.median(times), "ms"),
                   Sample("latency_p99_ms", percentile(times, 99), "ms")],
                  cni=p.cni, scenario=SCENARIO, protocol="getaddrinfo", repeat=repeat,
                  nodes=p.nodes, client=client, server_ip=str(SERVICE_IP),
                  name=name, address=got["address"] or "", lookups=len(times))
        rec.step(f"{name} r{repeat}: {queries} A queries, "
                 f"p50 {statistics.median(times):.3f} ms")


def _bars(title: str, metric: str, x: str, by: str, log: bool = False) -> Panel:
    """A panel of one part: dnsperf's rows (x: condition) or getaddrinfo's (x: name)."""
    protocol = "dns" if x == "condition" else "getaddrinfo"
    return Panel(title, metric, x=x, by=by, where=(("protocol", protocol),), style="bars",
                 log=log)


EXPERIMENTS = {"dns": Kind(
    name="dns", params=Params, columns=COLUMNS, run=run,
    needs=lambda p: {p.cni: (*_cluster(p).requires, "dnsperf")},
    steps=_steps,
    charts=(Chart("dns", "Cluster DNS (kube-dns: dnsmasq + kubedns): dnsperf per cache "
                  "condition and queries in flight",
                  (_bars("dnsperf average latency, ms", "latency_avg_ms", "condition",
                         "outstanding", log=True),
                   _bars("dnsperf p99 latency, ms", "latency_p99_ms", "condition",
                         "outstanding", log=True),
                   _bars("dnsperf queries/s", "queries_per_s", "condition", "outstanding"))),
            Chart("dns_ndots", "ndots:5: getaddrinfo per name form from namespace default",
                  (_bars("A queries kubedns received (empty cache)", "a_queries_to_kubedns",
                         "name", "cni"),
                   _bars("getaddrinfo p50, ms (warm)", "latency_p50_ms", "name", "cni"),
                   _bars("getaddrinfo p99, ms (warm)", "latency_p99_ms", "name", "cni")))))}
