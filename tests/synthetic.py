"""Builders of SYNTHETIC results rows shared by the results, plots, published and notebook tests.

The values are made up and deliberately irregular (three repeats, skewed so that a median
and a mean differ, a host-to-host baseline that drifts per repeat so that pairing matters):
they exercise code paths and are not measurements of anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from k8stopo import results

RUN = "20261125T000000Z-0000"
CNIS = ("flannel-vxlan", "calico-bgp")
SCENARIOS = ("host-to-host", "pod-to-pod-same-node", "pod-to-pod-cross-node")
REPEATS = (0, 1, 2)
# (cni, scenario) -> TCP Gbit/s of repeats 0, 1, 2
TCP_GBPS: dict[tuple[str, str], tuple[float, float, float]] = {
    ("flannel-vxlan", "host-to-host"): (20.0, 16.0, 19.0),
    ("flannel-vxlan", "pod-to-pod-same-node"): (18.0, 15.2, 17.0),
    ("flannel-vxlan", "pod-to-pod-cross-node"): (9.0, 8.8, 4.0),
    ("calico-bgp", "host-to-host"): (19.0, 22.0, 20.0),
    ("calico-bgp", "pod-to-pod-same-node"): (17.1, 20.9, 18.0),
    ("calico-bgp", "pod-to-pod-cross-node"): (17.5, 18.7, 18.1),
}


class Sample(NamedTuple):
    metric: str
    value: float
    unit: str


def context(cni: str, scenario: str, protocol: str, repeat: int, run_id: str = RUN,
            streams: int = 1, mtu: int = 1500,
            extra: dict[str, object] | None = None) -> results.Context:
    return results.Context(
        run_id=run_id, cni=cni, scenario=scenario, protocol=protocol, repeat=repeat, nodes=2,
        pods_per_node=2, streams=streams, duration_s=10.0, mtu=mtu, kernel="6.1.0-synthetic",
        k8stopo_version="0.0.test", client="n1", server="n2", client_ip="172.20.0.1",
        server_ip="172.20.0.2", raw_file=f"raw/{run_id}/{cni}-{scenario}-{protocol}-{repeat}.json",
        extra=extra or {})


def samples(protocol: str, gbps: float, repeat: int) -> list[Sample]:
    """Made-up samples of one protocol, derived from the TCP figure so tests can predict them."""
    return {
        "tcp": [Sample("throughput_bps", gbps * 1e9, "bit/s"),
                Sample("retransmits", float(repeat), "count")],
        "icmp": [Sample("rtt_p50_ms", gbps / 200, "ms"), Sample("rtt_p99_ms", gbps / 100, "ms")],
        "udp": [Sample("throughput_bps", gbps * 0.3e9, "bit/s"), Sample("loss_pct", gbps / 10, "%")],
        "tcp_rr": [Sample("latency_p50_us", 100 / gbps * 10, "us"),
                   Sample("latency_p90_us", 150 / gbps * 10, "us"),
                   Sample("latency_p99_us", 300 / gbps * 10, "us"),
                   Sample("transactions_per_s", gbps * 1000, "count")],
    }[protocol]


def fixture_rows(protocols: tuple[str, ...] = ("tcp", "icmp", "udp"), run_id: str = RUN,
                 streams: int = 1, mtu: int = 1500, scale: float = 1.0,
                 extra: dict[str, object] | None = None) -> list[dict[str, object]]:
    """Every cni × scenario × repeat, for the protocols asked for; TCP Gbit/s × ``scale``."""
    out: list[dict[str, object]] = []
    for (cni, scenario), values in TCP_GBPS.items():
        for repeat, gbps in zip(REPEATS, values):
            for protocol in protocols:
                ctx = context(cni, scenario, protocol, repeat, run_id, streams, mtu, extra)
                out += results.rows(ctx, f"2026-11-25T00:0{repeat}:00Z",
                                    samples(protocol, gbps * scale, repeat))
    return out


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with results.CsvSink(path) as sink:
        sink.write(rows)
    return path


def scale_rows(sizes: dict[tuple[int, str], float | None]) -> list[dict[str, object]]:
    """``k8stopo scale`` rows: per (nodes, bgp mode), a build time in seconds and a converge
    time half of it, or (None) a cluster that failed."""
    out: list[dict[str, object]] = []
    for (nodes, mode), build_s in sizes.items():
        ctx = results.Context(
            run_id=RUN, cni="calico-bgp", scenario="bring-up", protocol="control", repeat=0,
            nodes=nodes, pods_per_node=0, streams=1, duration_s=0, mtu=1500,
            kernel="6.1.0-synthetic", k8stopo_version="0.0.test", client="", server="",
            client_ip="", server_ip="", raw_file="",
            extra={"bgp_mode": mode, "experiment": "scale",
                   "error": "" if build_s is not None else "BGP did not converge in 90s"})
        found = ([Sample(results.FAILED, 1.0, "count")] if build_s is None else
                 [Sample("build_ms", build_s * 1000, "ms"),
                  Sample("converge_ms", build_s * 500, "ms")])
        out += results.rows(ctx, "2026-11-25T00:00:00Z", found)
    return out
