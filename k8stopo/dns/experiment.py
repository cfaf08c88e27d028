"""Experiment 3, cluster DNS: what a lookup costs when dnsmasq's cache has the answer or
not, and what ``ndots:5`` costs a name that is not found in the first search domain.

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

``python -m k8stopo.dns.experiment experiments/control-plane/dns.yaml --out results/dns``
writes dns_perf.csv, dns_ndots.csv, dns.png and the raw dnsperf outputs.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import ipaddress
import json
import platform
import re
import secrets
import statistics
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import __version__, results, yamlfile
from ..cluster import Cluster
from ..measure import _nearest_rank
from ..spec import ClusterSpec, SpecError
from ..workload import ServiceSpec, Workload
from .agent import PACKAGE_ROOT, SERVICE_IP, ClusterDNS
from .perf import dnsperf
from .zone import DOMAIN


def progress(line: str) -> None:
    """One line per measurement on stderr (Mininet's logger class would swallow INFO)."""
    print(line, file=sys.stderr, flush=True)

FIRST_SERVICE_IP = ipaddress.IPv4Address("10.96.16.0")  # clear of 10.96.0.x
CONDITIONS = ("hit", "miss", "nxdomain")
PERF_COLUMNS = ("run_id", "started_at", "cni", "condition", "outstanding", "repeat", "queries",
                "metric", "value", "unit", "kernel", "k8stopo_version", "raw_file")
NDOTS_COLUMNS = ("run_id", "cni", "name", "repeat", "address", "a_queries_to_kubedns",
                 "lookups", "latency_p50_ms", "latency_p99_ms")


@dataclass(frozen=True)
class Params:
    cni: str = "flannel-vxlan"
    nodes: int = 2
    services: int = 2000
    hit_names: int = 500
    duration: int = 5
    repeat: int = 3
    outstanding: tuple[int, ...] = (1, 100)
    lookup_count: int = 200
    names: tuple[str, ...] = ("web", f"web.default.svc.{DOMAIN}.")

    @classmethod
    def load(cls, path: Path) -> Params:
        """The experiment file; an unknown key or a bad value is a SpecError."""
        docs = yamlfile.documents(path, "experiment")
        raw = (docs[0] if len(docs) == 1 else None) or {}  # empty: every default
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: an experiment is a YAML mapping of settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted((k for k in raw if k not in known), key=repr)
        if unknown:
            raise SpecError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))} "
                            f"(known: {', '.join(sorted(known))})")
        params = cls(**{k: _typed(path, k, v, getattr(cls, k)) for k, v in raw.items()})
        params.check()
        return params

    def check(self) -> None:
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


def _typed(path: Path, key: str, value: Any, default: Any) -> Any:
    """``value`` if it has the type of the key's default (a list for a tuple), else a
    SpecError: a "5" or a 5.0 would otherwise fail deep in a run, or never."""
    if isinstance(default, tuple):
        item = type(default[0])
        if not isinstance(value, list) or not all(type(v) is item for v in value):
            raise SpecError(f"{path}: {key} must be a list of {item.__name__}, not {value!r}")
        return tuple(value)
    if type(value) is not type(default):  # `is`: a YAML true is no int here
        raise SpecError(f"{path}: {key} must be {type(default).__name__}, not {value!r}")
    return value


def workload(p: Params) -> Workload:
    """``web`` (the name part 2 looks up) and ``services`` more ClusterIP Services."""
    web = ServiceSpec(name="web", cluster_ip=ipaddress.IPv4Address("10.96.0.50"))
    many = tuple(ServiceSpec(name=f"svc-{i:05d}", cluster_ip=FIRST_SERVICE_IP + i)
                 for i in range(p.services))
    return Workload(services=(web, *many))


def _names(p: Params) -> dict[str, list[str]]:
    services = [f"svc-{i:05d}.default.svc.{DOMAIN} A" for i in range(p.services)]
    return {"hit": services[:p.hit_names], "miss": services,
            "nxdomain": [f"nx-{secrets.token_hex(6)}.default.svc.{DOMAIN} A"
                         for _ in range(p.services)]}


class Writer:
    """Rows appended to a CSV (with its header once) and flushed as they come."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        new = not path.exists()
        self.file = path.open("a", newline="")
        self.csv = csv.DictWriter(self.file, columns)
        if new:
            self.csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self.csv.writerow(row)
        self.file.flush()


def run_perf(cluster: Cluster, agent: ClusterDNS, p: Params, out: Path, run_id: str,
             writer: Writer) -> None:
    client = cluster.nodes[0].pods[0]
    names = _names(p)
    for repeat in range(p.repeat):
        for q in p.outstanding:
            for condition in CONDITIONS:
                if condition == "hit":
                    dnsperf(client, str(SERVICE_IP), names["hit"], p.duration, once=True)
                else:
                    agent.clear_cache()
                started = results.utc_now()
                m = dnsperf(client, str(SERVICE_IP), names[condition], p.duration,
                            outstanding=q, once=condition != "hit")
                raw = out / "raw" / f"{p.cni}_{condition}_q{q}_r{repeat}.txt.gz"
                raw.write_bytes(gzip.compress(m.raw.encode()))
                for s in m.samples:
                    writer.write({"run_id": run_id, "started_at": started, "cni": p.cni,
                                  "condition": condition, "outstanding": q, "repeat": repeat,
                                  "queries": len(names[condition]), "metric": s.metric,
                                  "value": s.value, "unit": s.unit,
                                  "kernel": platform.release(), "k8stopo_version": __version__,
                                  "raw_file": str(raw.relative_to(out))})
                progress(f"{condition} q={q} r{repeat}: "
                         + ", ".join(f"{s.metric}={s.value:.3f}" for s in m.samples))


def lookup(cluster: Cluster, name: str, count: int) -> dict[str, Any]:
    client = cluster.nodes[0].pods[0]
    return json.loads(client.output([sys.executable, "-m", "k8stopo.dns.lookup", name, count],
                                    env={"PYTHONPATH": str(PACKAGE_ROOT)}))


def run_ndots(cluster: Cluster, agent: ClusterDNS, p: Params, run_id: str,
              writer: Writer) -> None:
    for repeat in range(p.repeat):
        for name in p.names:
            agent.clear_cache()
            before = agent.queries_answered("A")
            lookup(cluster, name, 1)
            queries = agent.queries_answered("A") - before
            got = lookup(cluster, name, p.lookup_count + 1)
            times = sorted(ns / 1e6 for ns in got["ns"][1:])  # the first refills the cache
            writer.write({"run_id": run_id, "cni": p.cni, "name": name, "repeat": repeat,
                          "address": got["address"] or "", "a_queries_to_kubedns": queries,
                          "lookups": len(times), "latency_p50_ms": statistics.median(times),
                          "latency_p99_ms": _nearest_rank(times, 99)})
            progress(f"{name} r{repeat}: {queries} A queries, "
                     f"p50 {statistics.median(times):.3f} ms")


def chart(out: Path) -> Path:
    """The last run in ``out``. Left: latency per condition at one query in flight, and the rate at the most;
    right: queries to kubedns and latency per name form. Medians over repeats, dots
    for each repeat."""
    perf = list(csv.DictReader((out / "dns_perf.csv").open()))
    ndots = list(csv.DictReader((out / "dns_ndots.csv").open()))
    run = perf[-1]["run_id"]  # the files may hold earlier runs: draw the last
    perf = [r for r in perf if r["run_id"] == run]
    ndots = [r for r in ndots if r["run_id"] == run]
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    qs = sorted({int(r["outstanding"]) for r in perf})

    def panel(ax, metric: str, q: int, label: str) -> None:
        for i, cond in enumerate(CONDITIONS):
            vals = [float(r["value"]) for r in perf if r["condition"] == cond
                    and r["metric"] == metric and int(r["outstanding"]) == q]
            if vals:
                ax.bar(i, statistics.median(vals), color="#4292c6", alpha=.8)
                ax.plot([i] * len(vals), vals, "o", color="#222222", ms=3)
        ax.set_xticks(range(len(CONDITIONS)), CONDITIONS)
        ax.set_title(label, fontsize=10)

    panel(axes[0], "latency_avg_ms", qs[0], f"dnsperf average latency, ms ({qs[0]} in flight)")
    panel(axes[1], "queries_per_s", qs[-1], f"dnsperf queries/s ({qs[-1]} in flight)")
    names = list(dict.fromkeys(r["name"] for r in ndots))
    ax = axes[2]
    for i, name in enumerate(names):
        rows = [r for r in ndots if r["name"] == name]
        median = statistics.median(float(r["latency_p50_ms"]) for r in rows)
        ax.bar(i, median, color="#e6550d")
        ax.plot([i] * len(rows), [float(r["latency_p50_ms"]) for r in rows], "o",
                color="#222222", ms=3)
        ax.annotate(f"{rows[0]['a_queries_to_kubedns']} q", (i, median), xytext=(0, 8),
                    textcoords="offset points", ha="center", fontsize=9, fontweight="bold")
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set_title("getaddrinfo median latency, ms (n q: A queries\n"
                 "kubedns received, empty cache)", fontsize=10)
    fig.suptitle(f"Cluster DNS (kube-dns: dnsmasq + kubedns) on {perf[0]['cni']}, "
                 f"{perf[0]['kernel']}")
    path = out / "dns.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Experiment 3: cluster DNS")
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/dns"))
    args = parser.parse_args(argv)
    try:
        p = Params.load(args.experiment)
        spec = ClusterSpec(cni=p.cni, nodes=p.nodes, pods_per_node=1, workload=workload(p))
        cluster = Cluster(spec, agents=[ClusterDNS])
    except SpecError as exc:
        print(f"k8stopo: {exc}", file=sys.stderr)
        return 2
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    run_id = results.new_run_id()
    with cluster:
        agent = next(a for a in cluster.agents if isinstance(a, ClusterDNS))
        run_perf(cluster, agent, p, args.out, run_id,
                 Writer(args.out / "dns_perf.csv", PERF_COLUMNS))
        run_ndots(cluster, agent, p, run_id, Writer(args.out / "dns_ndots.csv", NDOTS_COLUMNS))
    print(chart(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
