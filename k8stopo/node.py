"""Things that execute: cluster nodes and pods, both seen as network endpoints.

An endpoint is a network namespace named by a process living in it (a node's
Mininet shell, a pod's holder). Commands run in it through :mod:`k8stopo.proc`;
its links, addresses, routes and sysctls are changed over its netlink socket
(:mod:`k8stopo.netlink`); processes started in it are recorded in the run's
manifest so that teardown and ``k8stopo clean`` stop exactly them. A pod whose
files differ from its node's (cluster DNS gives it its own /etc/resolv.conf)
sets ``own_mounts``: its commands then also enter the holder's mount
namespace, as a container's processes see the container's files. Nodes never
do: CNI plugins need the host's /var/run/netns.
"""
from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import netlink, proc
from .proc import Argv
from .runstate import RunState
from .workload import ContainerPort

#: the link group teardown moves a namespace's doomed links into; only a run's own
#: namespaces are emptied this way, so no one else's link can be in it
DOOMED_GROUP = 4242


def delete_links(netns: proc.Netns, names: Sequence[str]) -> None:
    """Delete ``names`` in ``netns`` in one kernel batch: moved into one link group, they go
    with one ``ip link del group``, which unregisters them together behind one RCU grace
    period, where a ``link del`` each waits for a grace period each (seconds for a
    thousand switch ports). Links already gone (a veth's peer) are skipped."""
    if not names:
        return
    proc.run(["ip", "-force", "-batch", "-"], netns, check=False,
             input="".join(f"link set dev {n} group {DOOMED_GROUP}\n" for n in names))
    proc.run(["ip", "link", "del", "group", DOOMED_GROUP], netns, check=False)


@dataclass(eq=False)
class Endpoint:
    """A network namespace with an address: a node's stack or a pod."""

    name: str
    ip: ipaddress.IPv4Address
    pid: int  # a process in the endpoint's network namespace
    state: RunState
    own_mounts: bool = False  # commands also enter the mount namespace of ``pid``

    def run(self, argv: Argv, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return proc.run(argv, self.pid, mount=self.own_mounts, **kwargs)

    def run_tool(self, argv: Argv, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a measuring tool (a client) to completion inside the run's cgroup. Should
        k8stopo be killed meanwhile, the tool stays the run's: the shells that identify its
        namespace exit with their pipes, and ``k8stopo clean`` still finds it by cgroup."""
        return self.run(argv, cgroup_procs=self.state.cgroup_procs, **kwargs)

    def output(self, argv: Argv, **kwargs: Any) -> str:
        return proc.output(argv, self.pid, mount=self.own_mounts, **kwargs)

    def spawn(self, argv: Argv, what: str | None = None,
              **kwargs: Any) -> subprocess.Popen[str]:
        """Start a process in this namespace, recorded in the run's manifest."""
        p = proc.spawn(argv, self.pid, mount=self.own_mounts,
                       cgroup_procs=self.state.cgroup_procs, **kwargs)
        self.state.track_pid(p.pid, what or f"{argv[0]}@{self.name}")
        return p

    def stop(self, p: subprocess.Popen[str]) -> None:
        """Stop a process started with :meth:`spawn` and forget it."""
        try:
            proc.stop(p)
        finally:
            self.state.untrack_pid(p.pid)

    @property
    def netlink(self) -> netlink.Namespace:
        """This namespace's netlink socket (logged under the endpoint's name)."""
        ns = netlink.at(self.pid, self.state.prefix)
        ns.label = self.name
        return ns

    def sysctl(self, key: str, value: str | int) -> None:
        self.netlink.sysctl(key, value)

    def batch(self, tool: str, commands: Sequence[Sequence[object]], check: bool = True) -> str:
        """``ip``/``bridge`` commands (their words, e.g. ``["route", "replace", ...]``) over
        the namespace's netlink socket, each logged as the command (a node has one per
        peer). With ``check=False`` every command is tried whatever the others do and
        their errors are returned ("" if none), as an agent that logs a refused route and
        goes on."""
        if not commands:
            return ""
        return self.netlink.batch(tool, commands, check)

    def link(self, dev: str) -> dict[str, Any]:
        """A link of this namespace (see :meth:`netlink.Namespace.links` for its fields)."""
        return self.netlink.link(dev)


@dataclass(eq=False)
class Node(Endpoint):
    """A Kubernetes node: a Mininet host on the underlay."""

    index: int = 0  # 0-based
    intf: str = ""  # underlay interface, e.g. n1-eth0
    pod_cidr: ipaddress.IPv4Network | None = None
    mn: Any = None  # the mininet Host
    pods: list["Pod"] = field(default_factory=list)


@dataclass(eq=False)
class Pod(Endpoint):
    """A pod: its own network namespace (or its node's, with hostNetwork)."""

    node: Node | None = None
    namespace: str = "default"  # the Kubernetes namespace
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[ContainerPort, ...] = ()  # declared container ports (named ports for policy)
    ready: bool = True  # readiness: kube-proxy's endpoints follow it
    host_network: bool = False  # the node's namespace, not one of its own
    ifname: str = "eth0"
    mtu: int = 1500
    netconf: dict = field(default_factory=dict)  # what the CNI plugin was given
    cni_result: dict = field(default_factory=dict)  # what it answered
    runtime_config: dict = field(default_factory=dict)  # kubelet's run-time values (portMappings)

    @property
    def k8s_name(self) -> str:
        """The pod's name within its namespace (``name`` is unique cluster-wide: pods from
        manifests are named ``name.namespace``, see :func:`k8stopo.workload.pod_handle`)."""
        suffix = f".{self.namespace}"
        return self.name[:-len(suffix)] if self.name.endswith(suffix) else self.name
