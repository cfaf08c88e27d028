"""Experiment 4, policy cost: what 0, 10, 100 and 1,000 NetworkPolicies cost a pod-to-pod path
across nodes, Felix's chains (calico-*) against weave-npc's flat rules (weave-*).

Every policy selects every pod of the namespace (the server's ingress is isolated by all of
them); all but one allow only pods labelled ``decoy=<i>``, which match nothing, and the last
(``zz-allow``, last in Felix's name order and in weave-npc's rule order) allows the namespace.
A new connection to the server therefore walks every policy before it is accepted: N policy
chains and N empty ipsets (Felix), N rules and N ipsets in one chain (weave-npc).

Measured per variant and policy count, on one cluster whose agent is updated in between:

* ``program_s``: seconds to program the nodes (every node's ipsets and one
  ``iptables-restore`` per node), timed around the agent's sync; ``rules``: the
  ``-A`` lines of the server node's filter table (``iptables-save``);
* ``tcp`` (iperf3) and ``tcp_rr`` (sockperf ping-pong) from :mod:`k8stopo.measure`, read
  from the tools' own output. Both run over one connection: after its first packet,
  conntrack's ESTABLISHED rule at the head of ``cali-tw-*`` / ``WEAVE-NPC`` accepts every
  packet, so the policies are walked once per connection, not per packet;
* ``tcp_syn``: what a *new* connection pays: hping3 sends SYNs to a listening port of the
  server, each from the next source port (so each is a new conntrack entry that walks the
  policies); tcpdump on the client's eth0 timestamps each SYN and its SYN-ACK (us):
  median, p99 and mean round trip.

Run as ``python -m k8stopo.policy.cost [--cni calico-bgp,weave-fastdp] [--policies 0,10,100,1000]
[--duration 2] [--repeat 2] [--out results/policy-cost]``; writes ``policy-cost.csv`` and
``policy-cost.png`` there.
"""
from __future__ import annotations

import argparse
import csv
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .. import __version__, measure
from ..capture import Capture
from ..cluster import Cluster
from ..cni import names as cni_names
from ..cni import variant
from ..node import Pod
from ..results import new_run_id, utc_now
from ..spec import ClusterSpec, SpecError
from . import agents_for
from .agent import PolicyAgent

COLUMNS = ("run_id", "started_at", "experiment", "cni", "scenario", "protocol", "policies",
           "metric", "value", "unit", "repeat", "nodes", "pods_per_node", "streams",
           "duration_s", "mtu", "kernel", "k8stopo_version")
SCENARIO = "pod-to-pod-cross-node"
SYN_PORT = 5301


def policies(count: int, namespace: str = "default") -> tuple[dict[str, Any], ...]:
    """``count`` policies over every pod of ``namespace``: ``count - 1`` that allow nobody,
    then one that allows the namespace."""
    def doc(name: str, peer: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": peer}]}]}}
    decoys = [doc(f"decoy-{i:04d}", {"matchLabels": {"decoy": str(i)}}) for i in range(count - 1)]
    return (*decoys, doc("zz-allow", {})) if count else ()


SYNS = 300
_TCPDUMP = re.compile(r"^(\d+\.\d{6}) IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[(S|S\.)\]", re.M)


def syn_rtts(client: Pod, server: Pod, pcap: Path) -> list[measure.Sample]:
    """SYN to SYN-ACK round trips of :data:`SYNS` new connections: hping3 sends each SYN
    from the next source port; tcpdump on the client's eth0 timestamps both (microseconds,
    the kernel's capture times) and ``tcpdump -tt -r`` prints them."""
    listener = server.spawn(["iperf3", "-s", "-p", str(SYN_PORT)], what=f"iperf3@{server.name}")
    try:
        time.sleep(0.5)  # iperf3 binds at once; a SYN before that would be refused (RST, no SA)
        with Capture(client, client.ifname, pcap, ["tcp", "port", str(SYN_PORT)]):
            client.run_tool(["hping3", "-q", "-S", "-p", str(SYN_PORT), "-c", str(SYNS),
                             "-i", "u3000", str(server.ip)], check=False, timeout=60)
    finally:
        server.stop(listener)
    sent: dict[str, int] = {}
    rtts = []
    for ts, _, sport, _, dport, flags in _TCPDUMP.findall(
            client.output(["tcpdump", "-tt", "-n", "-r", str(pcap)])):
        sec, usec = ts.split(".")
        at = int(sec) * 1_000_000 + int(usec)  # exact microseconds (a float would round)
        if flags == "S":
            sent[sport] = at
        elif dport in sent:
            rtts.append(at - sent.pop(dport))
    if len(rtts) < SYNS // 2:
        raise measure.MeasurementError(f"tcpdump saw {len(rtts)} SYN-ACKs for {SYNS} SYNs")
    rtts.sort()
    return [measure.Sample("syn_rtt_p50_us", statistics.median(rtts), "us"),
            measure.Sample("syn_rtt_p99_us", rtts[min(len(rtts), round(0.99 * len(rtts))) - 1], "us"),
            measure.Sample("syn_rtt_avg_us", statistics.fmean(rtts), "us")]


def rule_count(cluster: Cluster, node: str) -> int:
    out = cluster.node(node).output(["iptables-save", "-t", "filter"])
    return sum(line.startswith("-A ") for line in out.splitlines())


def run(cni: str, counts: list[int], duration: int, repeat: int, writer: Any, run_id: str) -> None:
    variant_cls = variant(cni)
    agents = agents_for(variant_cls)
    if not agents:
        raise SpecError(f"{cni} does not enforce NetworkPolicy: nothing to cost")
    spec = ClusterSpec(cni=cni, nodes=2, pods_per_node=1)
    params = measure.Params(duration=duration)
    base = {"run_id": run_id, "experiment": "policy-cost", "cni": cni, "scenario": SCENARIO,
            "nodes": spec.nodes, "pods_per_node": spec.pods_per_node, "streams": 1,
            "duration_s": duration, "mtu": spec.mtu, "kernel": platform.release(),
            "k8stopo_version": __version__}
    with Cluster(spec, agents=agents) as cluster:
        agent = cluster.agents[-1]
        assert isinstance(agent, PolicyAgent)
        client, server = cluster.pod("pod-n1-0"), cluster.pod("pod-n2-0")
        for count in counts:
            started = time.monotonic()
            agent.update(policies(count))
            programmed = time.monotonic() - started
            row = {**base, "policies": count, "repeat": 0, "started_at": utc_now()}
            writer.writerow({**row, "protocol": "", "metric": "program_s",
                             "value": round(programmed, 4), "unit": "s"})
            writer.writerow({**row, "protocol": "", "metric": "rules",
                             "value": rule_count(cluster, server.node.name), "unit": "count"})
            for r in range(repeat):
                for protocol in ("tcp_syn", "tcp", "tcp_rr"):
                    started_at = utc_now()
                    pcap = cluster.state.path("policy-cost", f"syn-{cni}-{count}-{r}.pcap")
                    samples = (syn_rtts(client, server, pcap) if protocol == "tcp_syn" else
                               measure.measure(client, server.ip, server, protocol, params).samples)
                    for s in samples:
                        writer.writerow({**base, "policies": count, "repeat": r,
                                         "started_at": started_at, "protocol": protocol,
                                         "metric": s.metric, "value": s.value, "unit": s.unit})
                print(f"{cni} {count} policies, repeat {r}: measured", file=sys.stderr, flush=True)


def chart(csv_path: Path, out: Path) -> Path:
    """New-connection RTT, throughput, RR latency (p50, p99), programming time and rule count
    against the policy count, one line per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    panels = [("tcp_syn", "syn_rtt_p50_us", 1, "new connection: SYN to SYN-ACK p50 (us)"),
              ("tcp", "throughput_bps", 1e-9, "TCP throughput (Gbit/s)"),
              ("tcp_rr", "latency_p50_us", 1, "RR latency p50 (us)"),
              ("tcp_rr", "latency_p99_us", 1, "RR latency p99 (us)"),
              (None, "program_s", 1, "seconds to program both nodes"),
              (None, "rules", 1, "filter rules on the server's node")]
    fig, grid = plt.subplots(2, 3, figsize=(13, 7))
    axes = grid.ravel()
    for ax, (protocol, metric, scale, title) in zip(axes, panels):
        sel = df[(df.metric == metric) & ((df.protocol == protocol) if protocol else df.protocol.isna())]
        for cni, group in sel.groupby("cni"):
            stats = group.groupby("policies")["value"].agg(["mean", "min", "max"]) * scale
            ax.errorbar(stats.index, stats["mean"],
                        yerr=[(stats["mean"] - stats["min"]).clip(lower=0),
                              (stats["max"] - stats["mean"]).clip(lower=0)],
                        marker="o", capsize=3, label=cni)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("NetworkPolicies selecting the server")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Policy cost, pod to pod across nodes (mean, min-max over repeats)", fontsize=11)
    fig.tight_layout()
    path = out / "policy-cost.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m k8stopo.policy.cost", description=__doc__.split("\n")[0])
    p.add_argument("--cni", default="calico-bgp,weave-fastdp")
    p.add_argument("--policies", default="0,10,100,1000")
    p.add_argument("--duration", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results/policy-cost"))
    p.add_argument("--plot-only", action="store_true", help="redraw the chart of OUT's CSV")
    args = p.parse_args(argv)
    if args.plot_only:
        print(chart(args.out / "policy-cost.csv", args.out))
        return 0
    try:
        cnis = cni_names(args.cni)
        counts = [int(v) for v in args.policies.split(",")]
        if any(c < 0 or c > 5000 for c in counts) or not 1 <= args.duration <= 60 \
                or not 1 <= args.repeat <= 20:
            raise SpecError("--policies 0..5000, --duration 1..60, --repeat 1..20")
        for cni in cnis:
            if not agents_for(variant(cni)):
                raise SpecError(f"{cni} does not enforce NetworkPolicy: nothing to cost")
    except (SpecError, ValueError) as exc:
        print(f"k8stopo: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "policy-cost.csv"
    run_id = new_run_id()
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for cni in cnis:
            run(cni, counts, args.duration, args.repeat, writer, run_id)
            f.flush()
    print(csv_path)
    print(chart(csv_path, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
