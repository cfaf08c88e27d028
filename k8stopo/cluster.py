"""Cluster lifecycle: spec -> underlay -> node agents -> pods -> converged, and back.

:class:`Cluster` is a context manager. Entering builds everything under a fresh
run prefix (see :mod:`k8stopo.runstate`); leaving, by return, exception or
Ctrl-C, tears down in a fixed order so nothing is deleted while in use:
agents' daemons (in reverse order), CNI DEL for every pod, Mininet (links,
underlay switch, shells), then whatever the manifest still lists.

The agents are the CNI variant first, then any others the caller adds
(kube-proxy, DNS, NetworkPolicy; see :mod:`k8stopo.agent`).
"""
from __future__ import annotations

import ipaddress
import logging
import resource
import signal
import threading
from typing import Any, Iterator, Sequence

from mininet.net import Mininet
from mininet.node import Host

from . import proc
from .agent import Agent
from .cni import variant as variant_class
from .cni.base import Variant
from .node import Endpoint, Node, Pod
from .runstate import RunState
from .spec import ClusterSpec, SpecError, ipv4_network
from .topo import ROUTER, K8sTopo, gateway, node_ips, node_name, subnets

log = logging.getLogger("k8stopo.cluster")

READY_TIMEOUT = 90.0


class _Tracked:
    """Mixin for Mininet nodes: record each shell's pid the moment it exists."""

    run_state: RunState

    def startShell(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802 (Mininet's name)
        super().startShell(*args, **kwargs)  # type: ignore[misc]
        self.run_state.track_pid(self.pid, f"mininet shell {self.name}")  # type: ignore[attr-defined]


def pod_name(node: Node, index: int) -> str:
    return f"pod-{node.name}-{index}"


class Cluster:
    """An emulated Kubernetes cluster running one CNI variant."""

    def __init__(self, spec: ClusterSpec, agents: Sequence[type[Agent]] = ()) -> None:
        spec.check_basics()
        self.spec = spec
        self.variant_cls = variant_class(spec.cni)
        self.ranges = self.variant_cls.check(spec)  # SpecError before anything exists
        self.agent_classes = tuple(agents)
        for cls in self.agent_classes:
            cls.validate(spec)
        self.pod_cidr = (None if self.variant_cls.host_network
                         else ipv4_network(spec.pod_cidr or self.variant_cls.pod_cidr
                                           or spec.underlay_cidr, "pod CIDR"))  # macvlan: on it
        self.underlay = ipv4_network(spec.underlay_cidr, "underlay CIDR")
        self.state: RunState | None = None
        self.net: Mininet | None = None
        self.variant: Variant | None = None
        self.agents: list[Agent] = []  # the variant first, then the others, once built
        self.nodes: list[Node] = []
        self.router: Endpoint | None = None  # the routed underlay's router, once built

    def caveats(self) -> list[str]:
        """One line per thing this run cannot show by design of the real project."""
        if self.spec.underlay == "routed" and self.variant_cls.routed_caveat:
            return [f"{self.spec.cni} on the routed underlay: {self.variant_cls.routed_caveat}"]
        return []

    def impossible(self, scenario: str) -> str | None:
        """Why ``scenario`` cannot work on this cluster by design: the variant's own reason,
        or its routed-underlay caveat for the cross-node scenarios (the bench's first and
        last node are on different subnets)."""
        why = self.variant_cls.impossible(scenario)
        if why is None and scenario in ("pod-to-pod-cross-node", "node-to-pod"):
            why = next(iter(self.caveats()), None)
        return why

    @property
    def requires(self) -> tuple[str, ...]:
        """The doctor probes this cluster needs (its variant's and its agents')."""
        needs = [*self.variant_cls.requires, *(r for a in self.agent_classes for r in a.requires)]
        return tuple(dict.fromkeys(needs))

    # -- lookup ---------------------------------------------------------------------
    @property
    def pods(self) -> list[Pod]:
        return [pod for node in self.nodes for pod in node.pods]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in this cluster")

    def pod(self, name: str) -> Pod:
        for p in self.pods:
            if p.name == name:
                return p
        raise KeyError(f"no pod {name!r} in this cluster")

    def endpoints(self) -> Iterator[Node | Pod]:
        yield from self.nodes
        yield from self.pods

    def describe(self) -> str:
        """A table of the cluster's nodes and pods with their addresses."""
        lines = [f"cluster {self.state.prefix if self.state else '-'}: {self.spec.cni}, "
                 f"{len(self.nodes)} nodes on {self.underlay} ({self.spec.underlay})"]
        for node in self.nodes:
            lines.append(f"  {node.name:<8} {str(node.ip):<15} pod range "
                         f"{node.pod_cidr or 'hostNetwork'}")
            lines += [f"    {pod.name:<14} {str(pod.ip):<15} mtu {pod.mtu}" for pod in node.pods]
        if self.router is not None:
            ports = (f"{gateway(s)}/{s.prefixlen}"
                     for s in subnets(self.spec.underlay_cidr, self.spec.underlay))
            lines.append(f"  {self.router.name:<8} routes between {', '.join(ports)}")
        return "\n".join(lines)

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> "Cluster":
        self.state = RunState("cluster")
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._teardown()

    def _build(self) -> None:
        assert self.state is not None
        prefix = self.state.prefix
        log.info("building %s cluster %s: %d nodes, %d pods each", self.spec.cni, prefix,
                 self.spec.nodes, self.spec.pods_per_node)
        # Mininet.init() would retune the host's TCP buffers and ARP tables
        # (fixLimits); measure on the kernel's defaults instead, and only lift
        # this process's own open-file limit (every Mininet node holds a pty).
        Mininet.inited = True
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
        host = type("K8sHost", (_Tracked, Host), {"run_state": self.state})
        # Every host, the underlay switches and router included, is a namespace: the run's
        # veths are created between namespaces and never appear in the root namespace.
        topo = K8sTopo(nodes=self.spec.nodes, cidr=self.spec.underlay_cidr,
                       underlay=self.spec.underlay)
        for name in topo.hosts():  # the switches' and router's own classes, tracked too
            info = topo.nodeInfo(name)
            if "cls" in info:
                cls = info["cls"]
                topo.setNodeInfo(name, {**info, "cls": type(f"K8s{cls.__name__}", (_Tracked, cls),
                                                             {"run_state": self.state})})
        self.net = Mininet(topo=topo, host=host, controller=None, build=False,
                           waitConnected=False)
        self.net.build()
        self.net.start()
        for i in range(self.spec.nodes):
            mn = self.net[node_name(i)]
            node = Node(name=mn.name, ip=ipaddress.IPv4Address(mn.IP()), pid=mn.pid,
                        state=self.state, index=i, intf=mn.defaultIntf().name, mn=mn,
                        pod_cidr=self.ranges[i] if self.ranges else None)
            self.nodes.append(node)
            self._prepare_node(node, self.gateway(node))
        if self.spec.underlay == "routed":
            r1 = self.net[ROUTER]
            self.router = Endpoint(name=ROUTER, ip=self.gateway(self.nodes[0]), pid=r1.pid,
                                   state=self.state)
        self.variant = self.variant_cls(self)
        self.agents = [self.variant, *(cls(self) for cls in self.agent_classes)]
        for node in self.nodes:
            for agent in self.agents:
                agent.setup_node(node)
        for agent in self.agents:
            agent.connect()
        for node, name, namespace, labels in self.pod_plan():
            self._add_pod(node, name, namespace, labels)
        for agent in self.agents:
            agent.wait_ready(READY_TIMEOUT)
        log.info("cluster %s ready", prefix)

    def gateway(self, node: Node) -> ipaddress.IPv4Address:
        """The router address of ``node``'s segment (absent on one segment, as no packet
        may leave the run; the router ``r1`` on a routed underlay)."""
        spec = self.spec
        return gateway(node_ips(spec.nodes, spec.underlay_cidr, spec.underlay)[node.index].network)

    def pod_plan(self) -> list[tuple[Node, str, str, dict[str, str]]]:
        """Which pods to create where: (node, name, namespace, labels)."""
        return [(node, pod_name(node, j), "default", {})
                for node in self.nodes for j in range(self.spec.pods_per_node)]

    def _prepare_node(self, node: Node, gateway: ipaddress.IPv4Address) -> None:
        """What every Kubernetes node has, whatever its CNI."""
        if self.spec.mtu != 1500:
            node.run(["ip", "link", "set", node.intf, "mtu", self.spec.mtu])
            intf = node.mn.defaultIntf()
            port = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
            proc.run(["ip", "link", "set", port.name, "mtu", self.spec.mtu], port.node.pid)
        node.sysctl("net.ipv4.ip_forward", 1)
        # Real nodes have a default route; Calico's proxy-ARP gateway relies on it.
        node.run(["ip", "route", "replace", "default", "via", gateway, "dev", node.intf])

    def _add_pod(self, node: Node, name: str, namespace: str = "default",
                 labels: dict[str, str] | None = None) -> Pod:
        """Attach a pod through the variant, then tell the other agents about it."""
        assert self.variant is not None
        if any(p.name == name for p in self.pods):
            raise SpecError(f"pod name {name!r} is used twice")
        pod = self.variant.attach_pod(node, name, namespace, labels)
        for agent in self.agents[1:]:
            agent.pod_added(pod)
        return pod

    def _teardown(self) -> None:
        """Remove everything of the run, whatever state the build reached."""
        # A second Ctrl-C or a SIGTERM must not cut the teardown short.
        main = threading.current_thread() is threading.main_thread()
        previous = ({sig: signal.signal(sig, signal.SIG_IGN)
                     for sig in (signal.SIGINT, signal.SIGTERM)} if main else {})
        try:
            for agent in reversed(self.agents):
                self._stop_step(f"stop {agent.name}", agent.stop)
            for pod in reversed(self.pods):
                if not pod.host_network and self.variant is not None:
                    self._stop_step(f"detach {pod.name}",
                                    lambda p=pod: self.variant.detach_pod(p))
            self._stop_step("stop Mininet", self.net.stop if self.net else None)
            if self.state is not None:
                leftovers = self.state.remove_all()
                if leftovers:
                    log.debug("removed after Mininet: %s", ", ".join(leftovers))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @staticmethod
    def _stop_step(what: str, step: Any) -> None:
        if step is None:
            return
        try:
            step()
        except Exception as exc:  # keep tearing down; the manifest catches the rest
            log.warning("teardown: %s failed: %s", what, exc)
