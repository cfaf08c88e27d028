"""Node agents: what runs beside kubelet on every node and programs its network.

The CNI variant's agent (flanneld, calico-node, weave router) is one; kube-proxy,
cluster DNS and the NetworkPolicy agent are others. All share one lifecycle,
driven by :class:`k8stopo.cluster.Cluster` in list order (the variant first) and
stopped in reverse order, so any proxy mode or policy agent composes with any
variant instead of being a special case inside it. An agent sees its cluster
through :class:`k8stopo.context.ClusterContext` only::

    validate(spec)         before anything exists: bad input -> SpecError
    setup_node(node)       per node, once the underlay is up
    connect()              all nodes known: program peers / start daemons
    system_pods()          pods the agent deploys itself (kube-dns), made like any pod
    services()             Services it deploys (kube-dns' 10.96.0.10), see Cluster.services
    pod_added(pod)         per pod, once attached and listed on its node (every agent,
                           the variant first; the cluster calls it, never an agent)
    pod_changed(pod)       a pod's readiness changed while the cluster runs
    wait_ready(timeout)    block until this agent's part has converged
    stop()                 stop the agent's daemons (before pods are deleted)
"""
from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence, TypeVar

if TYPE_CHECKING:
    from .context import ClusterContext, PodPlan
    from .node import Node, Pod
    from .spec import ClusterSpec
    from .workload import ServiceSpec

#: threads doing per-node work at once: forks of CNI plugins and tools, and netlink
#: requests, which wait on the kernel rather than on Python
WORKERS = 8
T = TypeVar("T")


def per_node(work: Callable[[T], object], batches: Sequence[T]) -> None:
    """Run ``work`` over the batches (one per node) in threads; the first failure is
    raised once every batch under way has finished (teardown must not race them)."""
    if len(batches) <= 1:
        for batch in batches:
            work(batch)
        return
    pool = concurrent.futures.ThreadPoolExecutor(min(WORKERS, len(batches)))
    try:
        for future in [pool.submit(work, batch) for batch in batches]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Agent:
    """Base class of every node agent; every hook does nothing by default."""

    name: ClassVar[str]
    #: doctor probe names this agent needs
    requires: ClassVar[tuple[str, ...]] = ()
    #: it makes Services' ClusterIPs reachable (kube-proxy); stand-ins step aside then
    serves_services: ClassVar[bool] = False

    def __init__(self, cluster: "ClusterContext") -> None:
        self.cluster = cluster

    @classmethod
    def validate(cls, spec: "ClusterSpec") -> None:
        """Refuse (SpecError) a spec this agent cannot serve, before anything exists."""

    def setup_node(self, node: "Node") -> None:
        """Per-node set-up; ip_forward is already on. Nodes are set up at once (one thread
        each): touch only ``node`` and guard what the nodes share."""

    def connect(self) -> None:
        """Program every node for its peers (all nodes exist now)."""

    def system_pods(self) -> list["PodPlan"]:
        """Pods this agent deploys, as (node, name, namespace, labels); the cluster creates
        them through the variant after the planned pods, once every agent has connected."""
        return []

    def services(self) -> tuple["ServiceSpec", ...]:
        """Services this agent deploys, served beside the workload's."""
        return ()

    def pod_added(self, pod: "Pod") -> None:
        """Agent-side work once ``pod`` is attached and in its node's ``pods``."""

    def pod_changed(self, pod: "Pod") -> None:
        """``pod.ready`` changed (Cluster.set_ready): follow it (endpoints, DNS records)."""

    def wait_ready(self, timeout: float) -> None:
        """Return once this agent's part has converged; raise errors.NotReady otherwise."""

    def stop(self) -> None:
        """Stop the agent's daemons (their pids are tracked in any case)."""
