"""The pods' own processes: a light server in every pod, and the probe client.

Every pod answers on each declared container port (TCP and UDP) with its own
``namespace/name`` (SPEC), so a probe through a Service sees which backend
answered. The server is a small C program (podserver.c, one epoll loop over all
of a pod's ports): one per pod costs about 1.4 MB RSS, most of it libc shared
between them, where a socat per port would cost a process per port and per
connection. Both programs are compiled with gcc into the run's state directory,
so nothing outlives the run.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import proc
from ..agent import Agent
from ..daemon import Daemon, Daemons
from ..workload import pod_ref

if TYPE_CHECKING:
    from ..context import ClusterContext
    from ..node import Pod
    from ..runstate import RunState

SOURCES = Path(__file__).resolve().parent
START_TIMEOUT = 10.0


def build(state: "RunState", program: str) -> Path:
    """Compile ``program``.c into the run's state (once per run) and return the binary."""
    binary = state.path("bin", program)
    if not binary.exists():  # compiled aside and renamed: never run half-written
        partial = binary.with_suffix(".partial")
        proc.run(["gcc", "-O2", "-Wall", "-o", str(partial), str(SOURCES / f"{program}.c")])
        partial.rename(binary)
    return binary


class PodServer(Daemon):
    """A pod's server on every declared port; ready once it printed ``ready`` (all bound)."""

    NAME = "podserver"
    READY_LINE = "ready"
    READY_TIMEOUT = START_TIMEOUT

    def argv(self) -> list[object]:
        ports = [f"{p.protocol.lower()}:{p.container_port}" for p in self.values["ports"]]
        return [self.values["binary"], pod_ref(self.values["name"], self.values["namespace"]),
                *ports]


class PodServers(Agent):
    """Starts each pod's server once it is attached; can stop one (a hung backend)."""

    name = "pod-servers"
    requires = ("gcc",)

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        self.servers: dict[str, PodServer] = {}
        self.daemons = Daemons()

    def pod_added(self, pod: "Pod") -> None:
        if pod.ports:
            self.start(pod)

    def start(self, pod: "Pod") -> None:
        """Run the pod's server on every declared port; return once all are bound."""
        server = PodServer(pod, binary=build(self.cluster.state, "podserver"), name=pod.name,
                           namespace=pod.namespace, ports=pod.ports)
        self.servers[pod.name] = server
        self.daemons.start([server], timeout=START_TIMEOUT)

    def stop_server(self, pod: "Pod") -> None:
        """Stop the pod's server while the pod stays (and stays ready): a backend that
        no longer answers, which only a readiness probe would notice."""
        server = self.servers.pop(pod.name, None)
        if server is not None:
            server.stop()

    def stop(self) -> None:
        self.daemons.stop()
        self.servers.clear()
