"""The two kube-proxy experiments (docs/services.md), each writing a tidy CSV and a chart.

1. ``no-retry``: a Service with 3 backends; one backend's server stops (it refuses:
   the pod's kernel answers RST) or is blackholed (its packets are dropped: it
   hangs), while the pod stays ready and listed; then readiness removes it. The
   fraction of connections that fail, per proxy mode. The seed's claim: iptables
   mode picks a backend once per connection and cannot retry, so about 1/3 fail
   until readiness removes the backend; the userspace proxier retries another.
2. ``rule-scaling``: 10, 100, 1000, ... Services with 2 endpoints each, per mode:
   the seconds one node's rule load takes (kube-proxy's sync), and the first-packet
   latency (TCP connect, SYN to SYN-ACK, measured by podprobe) to the first and to
   the last Service of the list, median and p99 over many new connections.

Run as ``python -m k8stopo.kubeproxy.experiments no-retry|rule-scaling [options]``;
every value is measured in that run, nothing is copied.
"""
from __future__ import annotations

import argparse
import csv
import ipaddress
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from .. import __version__, probe
from ..cluster import Cluster
from ..results import new_run_id, utc_now
from ..servers import PodServers
from ..spec import ClusterSpec, SpecError
from ..workload import ContainerPort, PodSpec, ServicePort, ServiceSpec, Workload, pod_handle
from . import MODES, proxy_class
from .model import service_ports

COLUMNS = ("run_id", "started_at", "experiment", "cni", "proxy_mode", "phase", "services",
           "endpoints_per_service", "metric", "value", "unit", "repeat", "attempts",
           "kernel", "k8stopo_version")
WEB_PORT = 8080
SERVICE_IPS = ipaddress.IPv4Network("10.96.0.0/12")


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


class Sink:
    """Rows of one experiment run into its CSV (appended, with the header once)."""

    def __init__(self, path: Path, experiment: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self.file = path.open("a", newline="")
        self.out = csv.DictWriter(self.file, COLUMNS)
        if new:
            self.out.writeheader()
        self.common = {"run_id": new_run_id(), "experiment": experiment,
                       "kernel": platform.release(), "k8stopo_version": __version__}

    def row(self, **values: object) -> None:
        self.out.writerow({**self.common, "started_at": utc_now(), **values})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _build(cni: str, mode: str, wl: Workload, nodes: int) -> Cluster:
    return Cluster(ClusterSpec(cni=cni, nodes=nodes, pods_per_node=0, workload=wl),
                   agents=[PodServers, proxy_class(mode)])


def _attempts(cluster: Cluster, service: str, count: int) -> list[probe.Result]:
    s = next(p for p in service_ports(cluster.spec.workload, cluster.pods)
             if p.service == service)
    t = probe.Target(f"svc:default/{service}", str(s.cluster_ip), s.port, "tcp")
    return probe.probe_from(cluster, cluster.pod(pod_handle("client", "default")), [t], count)


# -- 1. no retry in iptables mode ----------------------------------------------------

def no_retry(sink: Sink, cni: str, modes: Sequence[str], attempts: int,
             hung_attempts: int) -> None:
    for mode in modes:
        with _build(cni, mode, workload(1, 3, ["n2", "n3"]), 3) as cluster:
            servers = next(a for a in cluster.agents if isinstance(a, PodServers))
            victim = cluster.pod(pod_handle("web-1", "default"))
            drop = ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", str(WEB_PORT), "-j", "DROP"]
            _failures(sink, cluster, mode, "all-answer", attempts)
            servers.stop_server(victim)  # refuses (RST) while ready and listed
            _failures(sink, cluster, mode, "one-refuses-still-ready", attempts)
            servers.start(victim)
            victim.run(drop)  # hangs: SYNs vanish, while ready and listed
            _failures(sink, cluster, mode, "one-hangs-still-ready", hung_attempts)
            cluster.set_ready(victim, False)
            _failures(sink, cluster, mode, "one-hangs-not-ready", attempts)


def _failures(sink: Sink, cluster: Cluster, mode: str, phase: str, count: int) -> None:
    """``count`` new connections to the Service: the fraction that got no answer."""
    failed = sum(not r.connected for r in _attempts(cluster, "svc-0", count))
    sink.row(cni=cluster.spec.cni, proxy_mode=mode, phase=phase, services=1,
             endpoints_per_service=3, metric="failed_fraction", value=failed / count,
             unit="ratio", repeat=0, attempts=count)
    print(f"{cluster.spec.cni} {mode} {phase}: {failed}/{count} failed", file=sys.stderr)


# -- 2. rule scaling -------------------------------------------------------------------

def _percentile(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    rank = -(-pct * len(ordered) // 100)
    return ordered[max(rank, 1) - 1]


def rule_scaling(sink: Sink, cni: str, modes: Sequence[str], counts: Sequence[int],
                 connections: int, resyncs: int) -> None:
    for mode in modes:
        for n in counts:
            started = time.monotonic()
            with _build(cni, mode, workload(n, 2, ["n2"]), 2) as cluster:
                built = time.monotonic() - started
                proxy = cluster.agents[-1]
                common = {"cni": cni, "proxy_mode": mode, "services": n,
                          "endpoints_per_service": 2}
                sink.row(**common, phase="build", metric="cluster_build_s", value=built,
                         unit="s", repeat=0, attempts=1)
                for r in range(resyncs):  # the first load happened in the build; time resyncs
                    proxy.sync()  # type: ignore[attr-defined]
                    sink.row(**common, phase="sync", metric="sync_s",
                             value=proxy.sync_seconds["n1"], unit="s",  # type: ignore[attr-defined]
                             repeat=r, attempts=1)
                for phase, service in (("first-service", "svc-0"),
                                       ("last-service", f"svc-{n - 1}")):
                    results = _attempts(cluster, service, connections)
                    ok = [r.connect_us for r in results if r.connected]
                    if len(ok) < connections:
                        raise RuntimeError(f"{mode} {n}: {connections - len(ok)} connections "
                                           f"to {service} failed")
                    for metric, value in (("connect_p50_us", statistics.median(ok)),
                                          ("connect_p99_us", _percentile(ok, 99))):
                        sink.row(**common, phase=phase, metric=metric, value=value, unit="us",
                                 repeat=0, attempts=connections)
                print(f"{cni} {mode} {n} services: built in {built:.1f}s, sync "
                      f"{proxy.sync_seconds['n1']:.3f}s", file=sys.stderr)  # type: ignore[attr-defined]


# -- charts -----------------------------------------------------------------------------

def _rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open() as f:
        yield from csv.DictReader(f)


def chart_no_retry(path: Path, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in _rows(path) if r["metric"] == "failed_fraction"]
    phases = list(dict.fromkeys(r["phase"] for r in rows))
    modes = list(dict.fromkeys(r["proxy_mode"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        values = [statistics.mean([float(r["value"]) for r in rows
                                   if r["proxy_mode"] == m and r["phase"] == ph] or [0])
                  for m in (mode,) for ph in phases]
        bars = ax.bar([p + i * width for p in range(len(phases))], values, width, label=mode)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1 / 3, color="grey", linestyle=":", label="1/3 (one of 3 backends)")
    ax.set_xticks([p + width * (len(modes) - 1) / 2 for p in range(len(phases))], phases,
                  fontsize=8)
    ax.set_ylabel("failed connections (fraction)")
    ax.set_title("A backend that stops answering, 3 endpoints, per kube-proxy mode")
    ax.legend(fontsize=8)
    fig.tight_layout()
    target = out / "no_retry.png"
    fig.savefig(target, dpi=120)
    return target


def chart_rule_scaling(path: Path, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(_rows(path))
    modes = list(dict.fromkeys(r["proxy_mode"] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for color, mode in zip(("tab:blue", "tab:orange", "tab:green", "tab:red"), modes):
        def series(metric: str, phase: str, mode: str = mode) -> tuple[list[int], list[float]]:
            pts: dict[int, list[float]] = {}
            for r in rows:
                if r["proxy_mode"] == mode and r["metric"] == metric and r["phase"] == phase:
                    pts.setdefault(int(r["services"]), []).append(float(r["value"]))
            xs = sorted(pts)
            return xs, [statistics.median(pts[x]) for x in xs]
        left.plot(*series("sync_s", "sync"), marker="o", color=color, label=mode)
        for metric, style in (("connect_p50_us", "-"), ("connect_p99_us", ":")):
            xs, ys = series(metric, "last-service")
            right.plot(xs, ys, style, marker="o", color=color, label=f"{mode} {metric[8:11]}")
    left.set(xscale="log", yscale="log", xlabel="Services (2 endpoints each)",
             ylabel="seconds", title="Rule load (resync) time on one node")
    right.set(xscale="log", yscale="log", xlabel="Services (2 endpoints each)",
              ylabel="microseconds", title="TCP connect time to the last Service")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    target = out / "rule_scaling.png"
    fig.savefig(target, dpi=120)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m k8stopo.kubeproxy.experiments")
    p.add_argument("experiment", choices=("no-retry", "rule-scaling"))
    p.add_argument("--cni", default="flannel-vxlan")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", type=Path, default=Path("results"),
                   help="results directory (the CSV and chart go to OUT/services-EXPERIMENT/)")
    p.add_argument("--attempts", type=int, default=300, help="no-retry: connections per phase")
    p.add_argument("--hung-attempts", type=int, default=90,
                   help="no-retry: connections while a backend hangs (each failure waits 1 s)")
    p.add_argument("--services", default="10,100,1000", help="rule-scaling: Service counts")
    p.add_argument("--connections", type=int, default=200,
                   help="rule-scaling: connections per latency figure")
    p.add_argument("--resyncs", type=int, default=3, help="rule-scaling: timed syncs")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: clusters tear down
    modes = [m for m in args.modes.split(",") if m]
    try:
        for m in modes:
            proxy_class(m)
        counts = [int(c) for c in args.services.split(",")]
    except (SpecError, ValueError) as exc:
        print(f"k8stopo: error: {exc}", file=sys.stderr)
        return 2
    out = args.out / f"services-{args.experiment}"
    csv_path = out / f"{args.experiment.replace('-', '_')}.csv"
    sink = Sink(csv_path, args.experiment)
    try:
        if args.experiment == "no-retry":
            no_retry(sink, args.cni, modes, args.attempts, args.hung_attempts)
            chart = chart_no_retry(csv_path, out)
        else:
            rule_scaling(sink, args.cni, modes, counts, args.connections, args.resyncs)
            chart = chart_rule_scaling(csv_path, out)
    finally:
        sink.close()
    print(f"{csv_path}\n{chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
