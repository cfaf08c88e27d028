"""Experiment 4, policy cost (kind ``policy-cost`` of ``k8stopo bench``): what 0, 10, 100 and
1,000 NetworkPolicies cost a pod-to-pod path across nodes, Felix's chains (calico-*) against
weave-npc's flat rules (weave-*).

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

``k8stopo bench --experiment experiments/control-plane/policy-cost.yaml`` appends the rows
(protocol ``control`` for ``program_s`` and ``rules``) to one CSV.
"""
from __future__ import annotations

import functools
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import measure
from ..capture import Capture
from ..cluster import Cluster
from ..cni import names as cni_names
from ..cni import variant
from ..controlplane import Chart, Kind, Panel, Recorder, needs_of
from ..node import Node, Pod
from ..results import utc_now
from ..spec import ClusterSpec, SpecError
from . import agents_for
from .agent import PolicyAgent

SCENARIO = "pod-to-pod-cross-node"
SYN_PORT = 5301
PROTOCOLS = ("tcp_syn", "tcp", "tcp_rr")
#: the tools beside the cluster's (hping3 has no doctor probe: a missing one fails the run)
TOOLS = ("tcpdump", "iperf3", "sockperf")


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


def syn_rtts(client: Pod, server: Pod, pcap: Path) -> tuple[list[measure.Sample], str]:
    """SYN to SYN-ACK round trips of :data:`SYNS` new connections: hping3 sends each SYN
    from the next source port; tcpdump on the client's eth0 timestamps both (microseconds,
    the kernel's capture times) and ``tcpdump -tt -r`` prints them (returned as the raw
    output beside the samples)."""
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
    printed = client.output(["tcpdump", "-tt", "-n", "-r", str(pcap)])
    for ts, _, sport, _, dport, flags in _TCPDUMP.findall(printed):
        sec, usec = ts.split(".")
        at = int(sec) * 1_000_000 + int(usec)  # exact microseconds (a float would round)
        if flags == "S":
            sent[sport] = at
        elif dport in sent:
            rtts.append(at - sent.pop(dport))
    if len(rtts) < SYNS // 2:
        raise measure.MeasurementError(f"tcpdump saw {len(rtts)} SYN-ACKs for {SYNS} SYNs")
    return [measure.Sample("syn_rtt_p50_us", statistics.median(rtts), "us"),
            measure.Sample("syn_rtt_p99_us", measure.percentile(rtts, 99), "us"),
            measure.Sample("syn_rtt_avg_us", statistics.fmean(rtts), "us")], printed


def rule_count(node: Node) -> int:
    """The filter rules on ``node`` (the policy agent's chains among them)."""
    out = node.output(["iptables-save", "-t", "filter"])
    return sum(line.startswith("-A ") for line in out.splitlines())


@dataclass(frozen=True)
class Params:
    """``experiments/control-plane/policy-cost.yaml``'s keys."""

    cni: tuple[str, ...] = ("calico-bgp", "weave-fastdp")
    policies: tuple[int, ...] = (0, 10, 100, 1000)
    duration: int = 2  # seconds of iperf3 and sockperf
    repeat: int = 2

    def check(self) -> None:
        for cni in self.cni:
            cni_names(cni)
            if cni == "all" or not agents_for(variant(cni)):
                raise SpecError(f"{cni} does not enforce NetworkPolicy: nothing to cost")
        if any(c < 0 or c > 5000 for c in self.policies) or not 1 <= self.duration <= 60 \
                or not 1 <= self.repeat <= 20:
            raise SpecError("policies must be 0 to 5000, duration 1 to 60, repeat 1 to 20")


def _cluster(cni: str) -> Cluster:
    """Validated, not built: one pod on each of two nodes, the variant's policy agent."""
    cls = variant(cni)
    return Cluster(ClusterSpec(cni=cni, nodes=2, pods_per_node=1), agents=agents_for(cls),
                   variant=cls)


def run(p: Params, rec: Recorder) -> None:
    """Per variant one cluster; per policy count its agent updated, then measured."""
    params = measure.Params(duration=p.duration)
    for cni in p.cni:
        if not rec.todo(cni, len(p.policies) * p.repeat):
            continue
        with rec.attempt(cni, cni=cni, scenario=SCENARIO, protocol="control", nodes=2,
                         pods_per_node=1), _cluster(cni) as cluster:
            agent = cluster.agents[-1]
            assert isinstance(agent, PolicyAgent)
            client, server = cluster.pod("pod-n1-0"), cluster.pod("pod-n2-0")
            server_node = cluster.node("n2")
            for count in p.policies:
                started = time.monotonic()
                agent.update(policies(count))
                programmed = time.monotonic() - started

                write = functools.partial(
                    rec.write, cni=cni, scenario=SCENARIO, nodes=2, pods_per_node=1,
                    duration_s=p.duration, mtu=cluster.spec.mtu, client=client, server=server,
                    policies=count)
                write([measure.Sample("program_s", round(programmed, 4), "s"),
                       measure.Sample("rules", rule_count(server_node), "count")],
                      protocol="control")
                for r in range(p.repeat):
                    for protocol in PROTOCOLS:
                        started_at = utc_now()
                        if protocol == "tcp_syn":
                            pcap = cluster.state.path("policy-cost", f"syn-{cni}-{count}-{r}.pcap")
                            samples, raw = syn_rtts(client, server, pcap)
                        else:
                            m = measure.measure(client, server.ip, server, protocol, params)
                            samples, raw = m.samples, m.raw
                        write(samples, protocol=protocol, repeat=r, started_at=started_at,
                              raw_file=rec.raw(f"{cni}_{count}_{protocol}_r{r}.txt", raw))
                    rec.step(f"{cni} {count} policies r{r}")


EXPERIMENTS = {"policy-cost": Kind(
    name="policy-cost", params=Params, columns=("policies",), run=run,
    needs=lambda p: needs_of(*((c, (*_cluster(c).requires, *TOOLS)) for c in p.cni)),
    steps=lambda p: len(p.cni) * len(p.policies) * p.repeat,
    charts=(Chart("policy-cost", "Policy cost, pod to pod across nodes, per NetworkPolicy count",
                  (Panel("new connection: SYN to SYN-ACK p50, µs", "syn_rtt_p50_us", x="policies",
                         by="cni"),
                   Panel("TCP throughput, Gbit/s", "throughput_bps", x="policies", by="cni",
                         where=(("protocol", "tcp"),), scale=1e-9),
                   Panel("RR latency p50, µs", "latency_p50_us", x="policies", by="cni",
                         where=(("protocol", "tcp_rr"),)),
                   Panel("seconds to program both nodes", "program_s", x="policies", by="cni"),
                   Panel("filter rules on the server's node", "rules", x="policies",
                         by="cni"))),))}
