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

import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import json
import logging
import resource
import signal
import threading
import time
from collections import Counter
from typing import Any, Iterator, Sequence

from mininet.net import Mininet
from mininet.node import Host

from . import pods, proc
from .agent import Agent
from .cni import variant as variant_class
from .cni.base import Variant
from .errors import DaemonError
from .node import Endpoint, Node, Pod, delete_links
from .runstate import RunState
from .spec import ClusterSpec, SpecError, ipv4_network
from .topo import ROUTER, K8sTopo, gateway, node_name, segment_index, subnets, switch_names
from .workload import ContainerPort, PodSpec, ServiceSpec, pod_handle

# Importing mininet.log makes MininetLogger the class of every logger created later, each
# with its own console handler: every k8stopo line would be printed twice. Undo that.
logging.setLoggerClass(logging.Logger)
log = logging.getLogger("k8stopo.cluster")

#: seconds the agents get to converge, times (nodes / 500)² above 500 nodes: on one
#: kernel every node's route changes are paid for by all (its route notifications reach
#: every namespace), so BGP convergence grows with the square of the node count there
#: (145–194 s at 1,000 nodes on two cores, README "Scale")
READY_TIMEOUT = 90.0
#: nodes from which the underlay's neighbour entries are seeded (see _seed_neighbours)
SEED_NEIGHBOURS_FROM = 16
#: threads attaching (and deleting) pods, one node each at a time; the work is forks of
#: CNI plugins and `ip`, which wait on the kernel rather than on Python
ATTACH_WORKERS = 8
#: up to this many pods, teardown runs CNI DEL for each (see _delete_pods)
CNI_DEL_UP_TO = 64


class _Tracked:
    """Mixin for Mininet nodes: record each shell's pid the moment it exists."""

    run_state: RunState

    def startShell(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802 (Mininet's name)
        super().startShell(*args, **kwargs)  # type: ignore[misc]
        self.run_state.track_pid(self.pid, f"mininet shell {self.name}")  # type: ignore[attr-defined]


class _Mininet(Mininet):
    """Mininet whose hosts' shells start at once, before its build adds them in order: a
    thousand nodes' shells, each a spawn and a prompt round trip, take seconds in a row."""

    def buildFromTopo(self, topo: Any = None) -> None:  # noqa: N802 (Mininet's name)
        topo = topo or self.topo

        def start(name: str) -> tuple[str, Host]:
            params = dict(topo.nodeInfo(name))
            return name, params.pop("cls", self.host)(name, **params)

        with concurrent.futures.ThreadPoolExecutor(ATTACH_WORKERS) as pool:
            self._started = dict(pool.map(start, topo.hosts()))
        super().buildFromTopo(topo)

    def addHost(self, name: str, cls: Any = None, **params: Any) -> Host:  # noqa: N802
        host = getattr(self, "_started", {}).pop(name, None)
        return super().addHost(name, cls, **params) if host is None else self.adopt(host)

    def adopt(self, host: Host) -> Host:
        """Register a host whose shell was started beforehand, as ``addHost`` registers
        the ones it makes (Mininet's lists are not thread-safe: callers serialise this)."""
        self.hosts.append(host)
        self.nameToNode[host.name] = host
        return host


def pod_name(node: Node, index: int) -> str:
    return f"pod-{node.name}-{index}"


def place(spec: ClusterSpec) -> list[tuple[PodSpec, int]]:
    """Each workload pod with its node's index: ``nodeName`` if given, else spread over
    the nodes in order (as the scheduler's spreading would, deterministically)."""
    if spec.workload is None:
        return []
    names = [node_name(i) for i in range(spec.nodes)]
    out, spread = [], 0
    for pod in spec.workload.pods:
        if pod.node_name is None:
            out.append((pod, spread % spec.nodes))
            spread += 1
        elif pod.node_name in names:
            out.append((pod, names.index(pod.node_name)))
        else:
            raise SpecError(f"pod {pod.namespace}/{pod.name}: nodeName {pod.node_name!r} is not "
                            f"a node of this cluster ({', '.join(names)})")
    return out


class Cluster:
    """An emulated Kubernetes cluster running one CNI variant."""

    def __init__(self, spec: ClusterSpec, agents: Sequence[type[Agent]] = (),
                 keep_on_failure: bool = False) -> None:
        spec.check_basics()
        self.spec = spec
        self.variant_cls = variant_class(spec.cni)
        self.placement = place(spec)  # SpecError for a nodeName that is not a node
        # with manifests, the busiest node's pods must fit in its range
        busiest = max(Counter(i for _, i in self.placement).values(), default=0)
        self.ranges = self.variant_cls.check(  # SpecError before anything exists
            spec if spec.workload is None else dataclasses.replace(spec, pods_per_node=busiest))
        self.agent_classes = tuple(agents)
        self._declared_ports: dict[str, tuple[ContainerPort, ...]] = {
            pod_handle(p.name, p.namespace): p.ports for p, _ in self.placement}
        self._host_network = {pod_handle(p.name, p.namespace)
                              for p, _ in self.placement if p.host_network}
        for cls in self.agent_classes:
            cls.validate(spec)
        self.pod_cidr = (None if self.variant_cls.host_network
                         else ipv4_network(spec.pod_cidr or self.variant_cls.pod_cidr
                                           or spec.underlay_cidr, "pod CIDR"))  # macvlan: on it
        self.underlay = ipv4_network(spec.underlay_cidr, "underlay CIDR")
        self.state: RunState | None = None
        self.net: _Mininet | None = None
        self.variant: Variant | None = None
        self.agents: list[Agent] = []  # the variant first, then the others, once built
        self.nodes: list[Node] = []
        self.keep_on_failure = keep_on_failure
        self.left_behind: list[str] = []  # what teardown could not remove (kept on record)
        self.timings: dict[str, float] = {}  # seconds per build/teardown phase
        self.seeded_neighbours = False
        self._mininet_lock = threading.Lock()
        self.router: Endpoint | None = None  # the routed underlay's router, once built

    def caveats(self) -> list[str]:
        """One line per thing this run cannot show by design of the real project."""
        if self.spec.underlay == "routed" and self.variant_cls.routed_caveat:
            return [f"{self.spec.cni} on the routed underlay: {self.variant_cls.routed_caveat}"]
        return []

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

    @property
    def services(self) -> tuple[ServiceSpec, ...]:
        """Every Service: the workload's, then those the agents deploy (kube-dns)."""
        own = self.spec.workload.services if self.spec.workload else ()
        return (*own, *(s for agent in self.agents for s in agent.services()))

    def endpoints(self) -> Iterator[Node | Pod]:
        yield from self.nodes
        yield from self.pods

    def describe(self) -> str:
        """A table of the cluster's nodes and pods with their addresses."""
        lines = [f"cluster {self.state.prefix if self.state else '-'}: {self.spec.cni}, "
                 f"{len(self.nodes)} nodes on {self.underlay} ({self.spec.underlay})"]
        if self.seeded_neighbours:
            lines.append("  (underlay neighbour entries seeded, a stand-in for ARP at this scale)")
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
        except BaseException as exc:
            try:  # whatever happens here (a second signal), teardown runs
                if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    kept = self.state.keep_logs()
                    if kept is not None and not isinstance(exc, DaemonError):  # it names its log
                        log.warning("build failed: its daemons' logs and configs are kept in %s",
                                    kept)
                    if self.keep_on_failure:
                        self._hold(exc)
            finally:
                self._teardown()
            raise
        return self

    def _hold(self, exc: BaseException) -> None:
        """--keep-on-failure: leave the failed cluster up for inspection until Ctrl-C/SIGTERM."""
        print(f"build failed ({exc}); the cluster {self.state.prefix if self.state else ''} is "
              "kept for inspection (nsenter into its nodes); Ctrl-C tears it down", flush=True)
        try:
            signal.pause()
        except (KeyboardInterrupt, SystemExit):
            pass

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
        self.net = _Mininet(topo=topo, host=host, controller=None, build=False,
                            waitConnected=False)
        with self._phase("underlay"):
            self.net.build()
            self.net.start()
            for i in range(self.spec.nodes):
                mn = self.net[node_name(i)]
                node = Node(name=mn.name, ip=ipaddress.IPv4Address(mn.IP()), pid=mn.pid,
                            state=self.state, index=i, intf=mn.defaultIntf().name, mn=mn,
                            pod_cidr=self.ranges[i] if self.ranges else None)
                self.nodes.append(node)
            self.per_node(self._prepare_node, self.nodes)
            if self.spec.underlay == "routed":
                r1 = self.net[ROUTER]
                self.router = Endpoint(name=ROUTER, ip=self.gateway(self.nodes[0]), pid=r1.pid,
                                       state=self.state)
        with self._phase("agents"):
            self.variant = self.variant_cls(self)
            self.agents = [self.variant, *(cls(self) for cls in self.agent_classes)]
            if len(self.nodes) >= SEED_NEIGHBOURS_FROM:
                self._seed_neighbours(self.variant)
            self.per_node(self._setup_node, self.nodes)
            for agent in self.agents:
                agent.connect()
        with self._phase("pods"):
            self._add_pods(self.pod_plan())
            self._add_pods([p for agent in self.agents for p in agent.system_pods()])
        with self._phase("ready"):
            self.wait_ready()
            self.state.settle()  # every shell in the run's cgroup before anyone types in one
        if self.spec.offloads == "off":
            self.offloads_off()
        log.info("cluster %s ready: %s", prefix,
                 ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))

    def _setup_node(self, node: Node) -> None:
        """Every agent's per-node setup, in agent order (nodes are set up at once)."""
        for agent in self.agents:
            agent.setup_node(node)

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = time.monotonic() - started

    def _seed_neighbours(self, variant: Variant) -> None:
        """Permanent underlay neighbour entries on every node for the nodes its agent
        dials as it starts (:meth:`Variant.dials`: every other node, or BGP's peers).

        A stand-in for a network at scale, said so in ``describe()``: a hundred nodes
        ARPing for each other at once on one emulated segment, all on two CPUs, lose
        enough requests that BGP sessions fail with "No route to host" for minutes; a
        real underlay's switches and NICs absorb that. Only the underlay's own
        addresses are seeded; pods still resolve their neighbours themselves."""
        macs = {n.name: n.mn.defaultIntf().MAC() for n in self.nodes}
        segment = {n.name: self.gateway(n) for n in self.nodes}

        def seed(node: Node) -> None:
            node.batch("ip", [["neigh", "replace", peer.ip, "lladdr", macs[peer.name],
                               "dev", node.intf, "nud", "permanent"]
                              for peer in variant.dials(node)
                              if segment[peer.name] == segment[node.name]])

        self.per_node(seed, self.nodes)
        self.seeded_neighbours = True

    def new_pod_host(self, name: str) -> Host:
        """A Mininet host holding a new pod's namespace, made as ``addHost`` makes it.

        Pods of different nodes are attached at once: the shell starts outside the lock
        (its spawn and prompt round trip are most of a pod's Mininet cost), and only the
        registration in Mininet's lists, which are not thread-safe, holds it."""
        assert self.net is not None
        host = self.net.host(name, ip=None)
        with self._mininet_lock:
            return self.net.adopt(host)

    def wait_ready(self) -> None:
        """Return once every agent has converged (after the build, and after a fault)."""
        timeout = READY_TIMEOUT * max(1.0, (self.spec.nodes / 500) ** 2)
        for agent in self.agents:
            agent.wait_ready(timeout)

    @staticmethod
    def switch_port(node: Node) -> tuple[str, int]:
        """(name, pid of its namespace) of ``node``'s port on its underlay switch."""
        intf = node.mn.defaultIntf()
        port = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
        return port.name, port.node.pid

    def gateway(self, node: Node) -> ipaddress.IPv4Address:
        """The router address of ``node``'s segment (absent on one segment, as no packet
        may leave the run; the router ``r1`` on a routed underlay)."""
        spec = self.spec
        segment = segment_index(node.index, spec.nodes, spec.underlay)
        return gateway(subnets(spec.underlay_cidr, spec.underlay)[segment])

    def pod_plan(self) -> list[tuple[Node, str, str, dict[str, str]]]:
        """Which pods to create where: (node, name, namespace, labels).

        Without manifests, ``pods_per_node`` plain pods per node; with them, the
        workload's pods named :func:`~k8stopo.workload.pod_handle` on their nodes."""
        if self.spec.workload is None:
            return [(node, pod_name(node, j), "default", {})
                    for node in self.nodes for j in range(self.spec.pods_per_node)]
        return [(self.nodes[index], pod_handle(p.name, p.namespace), p.namespace, dict(p.labels))
                for p, index in self.placement]

    def set_ready(self, pod: Pod, ready: bool) -> None:
        """Mark a pod (not) ready while the cluster runs, as a failing readiness probe
        would; the agents (kube-proxy's endpoints, DNS) follow."""
        pod.ready = ready
        for agent in self.agents:
            agent.pod_changed(pod)

    def _prepare_node(self, node: Node) -> None:
        """What every Kubernetes node has, whatever its CNI (nodes are prepared at once)."""
        if self.spec.mtu != 1500:
            node.run(["ip", "link", "set", node.intf, "mtu", self.spec.mtu])
            port, switch = self.switch_port(node)
            proc.run(["ip", "link", "set", port, "mtu", self.spec.mtu], switch)
        node.sysctl("net.ipv4.ip_forward", 1)
        # Real nodes have a default route; Calico's proxy-ARP gateway relies on it.
        node.run(["ip", "route", "replace", "default", "via", self.gateway(node), "dev", node.intf])

    def offloads_off(self) -> None:
        """Segmentation and checksum offloads off on every veth of the emulated wire (node
        NICs, switch ports, pods' eth0 and their host ends). With them on, veths and bridges
        pass 64 KB GSO super-packets unsegmented, so an overlay encapsulates once where a NIC
        without tunnel offloads handles ~45 frames: encapsulation looks cheaper than on it.
        """
        assert self.net is not None
        holders = [*(self.net[name].pid for name in switch_names(self.spec.underlay)),
                   *([self.router.pid] if self.router else []), *(n.pid for n in self.nodes),
                   *(p.pid for p in self.pods if not p.host_network)]
        for pid in holders:
            for dev in json.loads(proc.output(["ip", "-j", "link", "show", "type", "veth"], pid)):
                proc.run(["ethtool", "-K", dev["ifname"], "tso", "off", "gso", "off", "gro", "off",
                          "tx", "off", "rx", "off"], pid)

    def _add_pods(self, plan: list[tuple[Node, str, str, dict[str, str]]]) -> None:
        """Attach pods through the variant, the pods of different nodes at once, then tell
        the other agents about each, in plan order."""
        assert self.variant is not None
        names = [name for _, name, _, _ in plan]
        if len(set(names)) != len(names) or set(names) & {p.name for p in self.pods}:
            raise SpecError("a pod name is used twice")
        per_node: dict[str, list[tuple[Node, str, str, dict[str, str]]]] = {}
        for entry in plan:
            per_node.setdefault(entry[0].name, []).append(entry)
        variant = self.variant

        def attach(entries: list[tuple[Node, str, str, dict[str, str]]]) -> None:
            with variant.attaching(entries[0][0]):
                for node, name, namespace, labels in entries:
                    pod = (pods.host_network(node, name, namespace, labels)
                           if name in self._host_network  # hostNetwork: true in the manifests
                           else variant.attach_pod(node, name, namespace, labels))
                    pod.ports = self._declared_ports.get(name, ())

        self.per_node(attach, list(per_node.values()))
        by_name = {p.name: p for p in self.pods}
        for name in names:
            for agent in self.agents[1:]:
                agent.pod_added(by_name[name])

    @staticmethod
    def per_node(work: Any, batches: list[Any]) -> None:
        """Run ``work`` over the batches (one per node) in threads; the first failure is
        raised once every batch under way has finished (teardown must not race them)."""
        if len(batches) <= 1:
            for batch in batches:
                work(batch)
            return
        pool = concurrent.futures.ThreadPoolExecutor(min(ATTACH_WORKERS, len(batches)))
        try:
            for future in [pool.submit(work, batch) for batch in batches]:
                future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _delete_pods(self) -> None:
        """Detach every pod through the variant (CNI DEL, as kubelet does; or the variant's
        own undoing), the pods of different nodes at once.

        Above CNI_DEL_UP_TO pods the whole cluster goes at once instead: each node's pods
        go in one batch (:meth:`Variant.detach_all`: the pods' veths; the IPAM leases live
        in the run's state directory, which goes too). A namespace whose sockets sit in
        TIME_WAIT is freed by the kernel only after minutes unless its links are deleted
        first, and a thousand pods' CNI DELs are two thousand plugin runs."""
        variant = self.variant
        if variant is None:
            return
        if len(self.pods) > CNI_DEL_UP_TO:
            self.per_node(variant.detach_all, self.nodes)
            return

        def detach(node_pods: list[Pod]) -> None:
            for pod in reversed(node_pods):
                if not pod.host_network:
                    self._stop_step(f"detach {pod.name}", lambda p=pod: variant.detach_pod(p))
        self.per_node(detach, [node.pods for node in self.nodes])

    def _stop_mininet(self) -> None:
        """Mininet's stop, in its order (links, then hosts), with each switch's ports deleted
        at once (:func:`delete_links`) instead of two shell round trips each."""
        assert self.net is not None
        for name in switch_names(self.spec.underlay):
            switch = self.net.get(name) if name in self.net else None
            if switch is not None and switch.shell is not None:
                delete_links(switch.pid, [i.name for i in switch.intfList() if i.name != "lo"])
        for host in self.net.hosts:
            host.terminate()

    def _teardown(self) -> None:
        """Remove everything of the run, whatever state the build reached."""
        # A second Ctrl-C or a SIGTERM must not cut the teardown short.
        main = threading.current_thread() is threading.main_thread()
        previous = ({sig: signal.signal(sig, signal.SIG_IGN)
                     for sig in (signal.SIGINT, signal.SIGTERM)} if main else {})
        started = time.monotonic()
        try:
            with self._phase("teardown_agents"):  # the agents' daemons, strays first
                if self.state is not None:
                    self._stop_step("stop strays", self.state.stop_strays)
                for agent in reversed(self.agents):
                    self._stop_step(f"stop {agent.name}", agent.stop)
            with self._phase("teardown_pods"):
                self._stop_step("detach pods", self._delete_pods)
            with self._phase("teardown_mininet"):
                self._stop_step("stop Mininet", self._stop_mininet if self.net else None)
            if self.state is not None:
                with self._phase("teardown_record"):
                    removed, left = self.state.remove_all()
                if removed:
                    log.debug("removed after Mininet: %s", ", ".join(removed))
                if left:
                    self.left_behind = left
                    log.warning("teardown could not remove %s; it stays on record for "
                                "`k8stopo clean`", ", ".join(left))
        finally:
            self.timings["teardown"] = time.monotonic() - started
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @staticmethod
    def _stop_step(what: str, step: Any) -> None:
        if step is None:
            return
        started = time.monotonic()
        try:
            step()
        except Exception as exc:  # keep tearing down; the manifest catches the rest
            log.warning("teardown: %s failed: %s", what, exc)
        log.debug("teardown: %s took %.2fs", what, time.monotonic() - started)
