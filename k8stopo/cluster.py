"""Cluster lifecycle: spec -> underlay -> node agents -> pods -> converged, and back.

:class:`Cluster` is a context manager. Entering builds everything under a fresh
run prefix (see :mod:`k8stopo.runstate`); leaving, by return, exception or
Ctrl-C, tears down in a fixed order so nothing is deleted while in use:
agents' daemons (in reverse order), CNI DEL for every pod, the underlay
(links, switches, shells), then whatever the manifest still lists.

The agents are the CNI variant first, then any others the caller adds
(kube-proxy, DNS, NetworkPolicy; see :mod:`k8stopo.agent`); they see the
cluster as a :class:`~k8stopo.context.ClusterContext`. The wire is the
:class:`~k8stopo.underlay.Underlay`'s; a pod is a namespace held by a pause
process (:mod:`k8stopo.pods`), attached by the variant and then listed and
announced to every agent here, once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import signal
import subprocess
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from mininet.net import Mininet
from mininet.node import Host

from . import netlink, pods
from .agent import Agent, per_node
from .context import PodPlan
from .errors import DaemonError
from .node import Node, Pod
from .runstate import RunState
from .spec import ClusterSpec, SpecError, ipv4_network
from .topo import node_name
from .underlay import Underlay, tracked
from .workload import ContainerPort, PodSpec, ServiceSpec, pod_handle

if TYPE_CHECKING:  # the variant's class comes from the caller (or the registry, below)
    from .cni.base import Variant

log = logging.getLogger("k8stopo.cluster")

#: seconds the agents get to converge, times (nodes / 500)² above 500 nodes: on one
#: kernel every node's route changes are paid for by all (its route notifications reach
#: every namespace), so BGP convergence grows with the square of the node count there
#: (145–194 s at 1,000 nodes on two cores, README "Scale")
READY_TIMEOUT = 90.0
#: nodes from which the underlay's neighbour entries are seeded (see Underlay.seed_neighbours)
SEED_NEIGHBOURS_FROM = 16
#: up to this many pods, teardown runs CNI DEL for each (see _delete_pods)
CNI_DEL_UP_TO = 64


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
    """An emulated Kubernetes cluster running one CNI variant (a
    :class:`~k8stopo.context.ClusterContext` for its agents).

    ``variant`` is the variant's class, looked up once by the caller from ``spec.cni``
    (:func:`k8stopo.cni.variant`): the commands and experiments pass it, so this module
    never needs the registry (which imports every variant, and they the agents). Left
    out (the tests' short form), the registry is asked here."""

    def __init__(self, spec: ClusterSpec, agents: Sequence[type[Agent]] = (),
                 keep_on_failure: bool = False, variant: type[Variant] | None = None) -> None:
        spec.check_basics()
        if variant is None:
            from .cni import variant as lookup  # the registry loads every variant module
            variant = lookup(spec.cni)
        elif variant.name != spec.cni:
            raise SpecError(f"variant {variant.name} given for a {spec.cni} cluster")
        self.spec = spec
        self.variant_cls = variant
        self.placement = place(spec)  # SpecError for a nodeName that is not a node
        # with manifests, the busiest node's pods must fit in its range
        busiest = max(Counter(i for _, i in self.placement).values(), default=0)
        self.ranges = variant.check(  # SpecError before anything exists
            spec if spec.workload is None else dataclasses.replace(spec, pods_per_node=busiest))
        self.agent_classes = tuple(agents)
        self._declared_ports: dict[str, tuple[ContainerPort, ...]] = {
            pod_handle(p.name, p.namespace): p.ports for p, _ in self.placement}
        self._host_network = {pod_handle(p.name, p.namespace)
                              for p, _ in self.placement if p.host_network}
        for cls in self.agent_classes:
            cls.validate(spec)
        self.pod_cidr = (None if variant.host_network
                         else ipv4_network(spec.pod_cidr or variant.pod_cidr
                                           or spec.underlay_cidr, "pod CIDR"))  # macvlan: on it
        ipv4_network(spec.underlay_cidr, "underlay CIDR")
        self._state: RunState | None = None
        self._underlay: Underlay | None = None
        self._variant: Variant | None = None
        self.agents: list[Agent] = []  # the variant first, then the others, once built
        self.nodes: list[Node] = []
        self.keep_on_failure = keep_on_failure
        self.left_behind: list[str] = []  # what teardown could not remove (kept on record)
        self.timings: dict[str, float] = {}  # seconds per build/teardown phase
        self._pod_shells: set[str] = set()  # pods the CLI has a shell for
        self._holders: dict[str, subprocess.Popen[str]] = {}  # pods' pause processes

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

    # -- what the agents see (ClusterContext) -----------------------------------------
    @property
    def state(self) -> RunState:
        assert self._state is not None, "the cluster is not built"
        return self._state

    @property
    def underlay(self) -> Underlay:
        assert self._underlay is not None, "the cluster is not built"
        return self._underlay

    @property
    def variant(self) -> Any:
        """The variant (typed loosely here: the caller knows which one it asked for and
        reads its own attributes, ``birds``, ``netns``; agents see it as a Variant)."""
        assert self._variant is not None, "the cluster is not built"
        return self._variant

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

    def set_ready(self, pod: Pod, ready: bool) -> None:
        """Mark a pod (not) ready while the cluster runs, as a failing readiness probe
        would; the agents (kube-proxy's endpoints, DNS) follow."""
        pod.ready = ready
        for agent in self.agents:
            agent.pod_changed(pod)

    # -- for the user -------------------------------------------------------------------
    def endpoints(self) -> Iterator[Node | Pod]:
        yield from self.nodes
        yield from self.pods

    def describe(self) -> str:
        """A table of the cluster's nodes and pods with their addresses."""
        lines = [f"cluster {self._state.prefix if self._state else '-'}: {self.spec.cni}, "
                 f"{len(self.nodes)} nodes on {self.spec.underlay_cidr} ({self.spec.underlay})"]
        for node in self.nodes:
            lines.append(f"  {node.name:<8} {str(node.ip):<15} pod range "
                         f"{node.pod_cidr or 'hostNetwork'}")
            lines += [f"    {pod.name:<14} {str(pod.ip):<15} mtu {pod.mtu}" for pod in node.pods]
        if self._underlay is not None:
            lines += self._underlay.describe()
        return "\n".join(lines)

    def cli_net(self) -> Mininet:
        """The Mininet network with a shell in every pod (made now: most runs never type
        into a pod), for Mininet's CLI to reach nodes and pods by name."""
        host = tracked(Host, self.state)
        for pod in self.pods:
            if not pod.host_network and pod.name not in self._pod_shells:
                self.underlay.add_host(pods.shell(pod, host))
                self._pod_shells.add(pod.name)
        return self.underlay.net

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> "Cluster":
        self._state = RunState("cluster")
        try:
            self._build()
        except BaseException as exc:
            try:  # whatever happens here (a second signal), teardown runs
                if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    kept = self._state.keep_logs()
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
        print(f"build failed ({exc}); the cluster {self._state.prefix if self._state else ''} is "
              "kept for inspection (nsenter into its nodes); Ctrl-C tears it down", flush=True)
        try:
            signal.pause()
        except (KeyboardInterrupt, SystemExit):
            pass

    def __exit__(self, *exc: object) -> None:
        self._teardown()

    def _build(self) -> None:
        state = self.state
        log.info("building %s cluster %s: %d nodes, %d pods each", self.spec.cni, state.prefix,
                 self.spec.nodes, self.spec.pods_per_node)
        self._underlay = underlay = Underlay(self.spec, state)
        with self._phase("underlay"):
            self.nodes = underlay.build(self.ranges)
            per_node(underlay.prepare, self.nodes)
        with self._phase("agents"):
            self._variant = variant = self.variant_cls(self)
            self.agents = [variant, *(cls(self) for cls in self.agent_classes)]
            if len(self.nodes) >= SEED_NEIGHBOURS_FROM:
                underlay.seed_neighbours(self.nodes, variant.dials)
            per_node(self._setup_node, self.nodes)
            for agent in self.agents:
                agent.connect()
        with self._phase("pods"):
            self._add_pods(self.pod_plan())
            self._add_pods([p for agent in self.agents for p in agent.system_pods()])
        with self._phase("ready"):
            self.wait_ready()
            state.settle()  # every shell in the run's cgroup before anyone types in one
        if self.spec.offloads == "off":
            underlay.offloads_off([*(n.pid for n in self.nodes),
                                   *(p.pid for p in self.pods if not p.host_network)])
        log.info("cluster %s ready: %s", state.prefix,
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

    def wait_ready(self) -> None:
        """Return once every agent has converged (after the build, and after a fault)."""
        timeout = READY_TIMEOUT * max(1.0, (self.spec.nodes / 500) ** 2)
        for agent in self.agents:
            agent.wait_ready(timeout)

    def pod_plan(self) -> list[PodPlan]:
        """Which pods to create where: (node, name, namespace, labels).

        Without manifests, ``pods_per_node`` plain pods per node; with them, the
        workload's pods named :func:`~k8stopo.workload.pod_handle` on their nodes."""
        if self.spec.workload is None:
            return [(node, pod_name(node, j), "default", {})
                    for node in self.nodes for j in range(self.spec.pods_per_node)]
        return [(self.nodes[index], pod_handle(p.name, p.namespace), p.namespace, dict(p.labels))
                for p, index in self.placement]

    def _add_pods(self, plan: list[PodPlan]) -> None:
        """Create and attach pods, the pods of different nodes at once: per pod its pause
        namespace, the variant's attachment, its place in its node's ``pods``, then the
        variant's own ``pod_added``; once all are attached, the other agents' ``pod_added``
        in plan order. The variant does none of this bookkeeping itself."""
        variant = self.variant
        names = [name for _, name, _, _ in plan]
        if len(set(names)) != len(names) or set(names) & {p.name for p in self.pods}:
            raise SpecError("a pod name is used twice")
        per_node_plan: dict[str, list[PodPlan]] = {}
        for entry in plan:
            per_node_plan.setdefault(entry[0].name, []).append(entry)
        state = self.state

        def attach(entries: list[PodPlan]) -> None:
            with variant.attaching(entries[0][0]):
                for node, name, namespace, labels in entries:
                    if name in self._host_network:  # hostNetwork: true in the manifests
                        pod = pods.host_network(node, name, namespace, labels)
                    else:
                        holder = None
                        if not variant.host_network:
                            self._holders[name] = pause = pods.hold(state, name)
                            holder = pause.pid
                        pod = variant.attach_pod(node, holder, name, namespace, labels)
                    pod.ports = self._declared_ports.get(name, ())
                    node.pods.append(pod)
                    if name not in self._host_network:  # no CNI ran for it
                        variant.pod_added(pod)

        per_node(attach, list(per_node_plan.values()))
        by_name = {p.name: p for p in self.pods}
        for name in names:
            for agent in self.agents[1:]:
                agent.pod_added(by_name[name])

    def _delete_pods(self) -> None:
        """Detach every pod through the variant (CNI DEL, as kubelet does; or the variant's
        own undoing), the pods of different nodes at once.

        Above CNI_DEL_UP_TO pods the whole cluster goes at once instead: each node's pods
        go in one batch (:meth:`Variant.detach_all`: the pods' veths; the IPAM leases live
        in the run's state directory, which goes too). A namespace whose sockets sit in
        TIME_WAIT is freed by the kernel only after minutes unless its links are deleted
        first, and a thousand pods' CNI DELs are two thousand plugin runs."""
        variant = self._variant
        if variant is None:
            return
        if len(self.pods) > CNI_DEL_UP_TO:
            per_node(variant.detach_all, self.nodes)
            return

        def detach(node_pods: list[Pod]) -> None:
            for pod in reversed(node_pods):
                if not pod.host_network:
                    self._stop_step(f"detach {pod.name}", functools.partial(variant.detach_pod, pod))
        per_node(detach, [node.pods for node in self.nodes])

    def _teardown(self) -> None:
        """Remove everything of the run, whatever state the build reached."""
        # A second Ctrl-C or a SIGTERM must not cut the teardown short.
        main = threading.current_thread() is threading.main_thread()
        previous = ({sig: signal.signal(sig, signal.SIG_IGN)
                     for sig in (signal.SIGINT, signal.SIGTERM)} if main else {})
        started = time.monotonic()
        try:
            with self._phase("teardown_agents"):  # the agents' daemons, strays first
                if self._state is not None:
                    self._stop_step("stop strays", self._state.stop_strays)
                for agent in reversed(self.agents):
                    self._stop_step(f"stop {agent.name}", agent.stop)
            with self._phase("teardown_pods"):
                self._stop_step("detach pods", self._delete_pods)
                if self._state is not None:  # an open socket would keep its namespace
                    self._stop_step("close netlink sockets", lambda: netlink.close_run(
                        self.state.prefix))
                    # as Mininet stops its hosts: killed and reaped
                    self._stop_step("stop the pods' pause processes",
                                    functools.partial(self._state.kill, self._holders))
            with self._phase("teardown_mininet"):
                if self._underlay is not None:
                    self._stop_step("stop the underlay", self._underlay.stop)
            if self._state is not None:
                with self._phase("teardown_record"):
                    removed, left = self._state.remove_all()
                if removed:
                    log.debug("removed after the underlay: %s", ", ".join(removed))
                if left:
                    self.left_behind = left
                    log.warning("teardown could not remove %s; it stays on record for "
                                "`k8stopo clean`", ", ".join(left))
        finally:
            self.timings["teardown"] = time.monotonic() - started
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @staticmethod
    def _stop_step(what: str, step: Callable[[], object]) -> None:
        started = time.monotonic()
        try:
            step()
        except Exception as exc:  # keep tearing down; the manifest catches the rest
            log.warning("teardown: %s failed: %s", what, exc)
        log.debug("teardown: %s took %.2fs", what, time.monotonic() - started)
