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

import select
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import proc
from ..agent import Agent
from ..workload import pod_ref

if TYPE_CHECKING:
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


class PodServers(Agent):
    """Starts each pod's server once it is attached; can stop one (a hung backend)."""

    name = "pod-servers"
    requires = ("gcc",)

    def __init__(self, cluster: Any) -> None:
        super().__init__(cluster)
        self.servers: dict[str, subprocess.Popen[str]] = {}

    def pod_added(self, pod: "Pod") -> None:
        if pod.ports:
            self.start(pod)

    def start(self, pod: "Pod") -> None:
        """Run the pod's server on every declared port; return once all are bound."""
        binary = build(self.cluster.state, "podserver")
        ports = [f"{p.protocol.lower()}:{p.container_port}" for p in pod.ports]
        p = pod.spawn([str(binary), pod_ref(pod.name, pod.namespace), *ports],
                      what=f"podserver@{pod.name}", stdout=subprocess.PIPE)
        self.servers[pod.name] = p
        assert p.stdout is not None and p.stderr is not None
        ready, _, _ = select.select([p.stdout], [], [], START_TIMEOUT)
        if not ready or p.stdout.readline().strip() != "ready":
            p.poll()
            why = p.stderr.read().strip() if p.returncode is not None else "no answer"
            raise RuntimeError(f"podserver of {pod.name} did not start: {why}")

    def stop_server(self, pod: "Pod") -> None:
        """Stop the pod's server while the pod stays (and stays ready): a backend that
        no longer answers, which only a readiness probe would notice."""
        p = self.servers.pop(pod.name, None)
        if p is not None:
            pod.stop(p)

    def stop(self) -> None:
        for name in list(self.servers):
            self.stop_server(self.cluster.pod(name))
