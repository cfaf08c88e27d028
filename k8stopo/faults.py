"""Faults a bench run injects on purpose: what breaks, on which node, and how it is undone.

One registry, :data:`FAULTS` (as :data:`k8stopo.measure.PROTOCOLS` for protocols), maps
each name of ``spec.FAULTS`` to a class with :meth:`Fault.inject` and :meth:`Fault.lift`.
A fault always hits the *server* side of a scenario (the node its server runs on), is
injected for one measurement and lifted right after it; every one of them is reversible,
and after lifting, :func:`injected` waits until the cluster is ready again (every agent's
``wait_ready``: BGP routes back, forwarders alive) before the next measurement.

* ``underlay-link-down``: the server node's port on its underlay switch (the bridge port in
  the switch's namespace, on either underlay) is set down, as a failed switch port. The
  node's own NIC stays administratively up and only loses carrier, as a real NIC does, so
  the kernel keeps its routes; the node's daemons react as they would (BIRD may drop a
  session and its routes: the readiness wait after lifting covers that).
* ``server-stopped``: the measurement's server is killed once it listens, before the client
  starts: a pod whose server died. Ping has no server (the pod's kernel still answers).
* ``node-stopped``: the server node's port goes down as above, and every process of the node
  and of its pods (its Mininet shell, daemons such as BIRD or a forwarder, the pods' pause
  shells and the measurement's server) is frozen with the cgroup v2 freezer: a child cgroup
  of the run's own, ``cgroup.freeze`` = 1. The kernel's datapath of a namespace cannot be
  frozen, so scenarios whose client runs on that very node are not measured under it.
"""
from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from pathlib import Path
from typing import Callable, ClassVar, Iterator

from . import measure, proc
from .cluster import Cluster
from .errors import RunError
from .node import Endpoint, Node, Pod
from .runstate import in_namespaces_of, move_to_cgroup

log = logging.getLogger("k8stopo.faults")

FREEZE_TIMEOUT_S = 5.0  # for cgroup.events to say "frozen 1"


def node_of(endpoint: Endpoint) -> Node:
    """The node an endpoint runs on (a node is its own)."""
    if isinstance(endpoint, Node):
        return endpoint
    if isinstance(endpoint, Pod) and endpoint.node is not None:
        return endpoint.node
    raise ValueError(f"{endpoint.name} runs on no node of the cluster")


class Fault:
    """One fault on one node for one measurement; ``inject`` then ``lift``."""

    name: ClassVar[str]
    #: True: a client on the faulty node could not measure anything honest
    needs_other_node: ClassVar[bool] = False

    def __init__(self, cluster: Cluster, node: Node) -> None:
        self.cluster, self.node = cluster, node

    def inject(self) -> None:
        raise NotImplementedError

    def server_up(self, server: Endpoint, srv: subprocess.Popen[str]) -> Callable[[], None] | None:
        """The measurement's server listens (measure.on_server_up); the default leaves it."""
        return None

    def lift(self) -> None:
        raise NotImplementedError


class UnderlayLinkDown(Fault):
    name = "underlay-link-down"

    def _port(self, state: str) -> None:
        port, switch = self.cluster.underlay.switch_port(self.node)
        proc.run(["ip", "link", "set", port, state], switch)

    def inject(self) -> None:
        self._port("down")

    def lift(self) -> None:
        self._port("up")


class ServerStopped(Fault):
    name = "server-stopped"

    def inject(self) -> None:
        """Nothing until the server listens (:meth:`server_up`)."""

    def server_up(self, server: Endpoint, srv: subprocess.Popen[str]) -> Callable[[], None] | None:
        log.info("server-stopped: killing %s's server (pid %d)", server.name, srv.pid)
        srv.kill()
        srv.wait()
        return None

    def lift(self) -> None:
        """The next measurement starts its own server."""


class NodeStopped(UnderlayLinkDown):
    name = "node-stopped"
    needs_other_node = True

    def __init__(self, cluster: Cluster, node: Node) -> None:
        super().__init__(cluster, node)
        if cluster.state is None or cluster.state.cgroup is None:
            raise RunError("node-stopped needs the run's cgroup (cgroup v2)")
        self.run_cgroup: Path = cluster.state.cgroup
        self.frozen = self.run_cgroup / f"stopped-{node.name}"

    def _processes(self) -> set[int]:
        """Every process in the node's network namespace or one of its pods'."""
        return in_namespaces_of([self.node.pid,
                                 *(p.pid for p in self.node.pods if not p.host_network)])

    def _wait_frozen(self) -> None:
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while "frozen 1" not in (self.frozen / "cgroup.events").read_text():
            if time.monotonic() >= deadline:
                raise RunError(f"{self.frozen}: not frozen after {FREEZE_TIMEOUT_S:.0f}s")
            time.sleep(0.01)

    def inject(self) -> None:
        self.frozen.mkdir()
        move_to_cgroup(self._processes(), self.frozen)
        (self.frozen / "cgroup.freeze").write_text("1")
        self._wait_frozen()
        super().inject()

    def server_up(self, server: Endpoint, srv: subprocess.Popen[str]) -> Callable[[], None]:
        """The server started after the node froze: it freezes with the node, and thaws
        before the measurement stops it (a frozen process cannot act on SIGTERM)."""
        move_to_cgroup({srv.pid}, self.frozen)
        self._wait_frozen()
        return lambda: move_to_cgroup({srv.pid}, self.run_cgroup)

    def lift(self) -> None:
        try:
            if self.frozen.exists():
                (self.frozen / "cgroup.freeze").write_text("0")
                members = {int(p) for p in (self.frozen / "cgroup.procs").read_text().split()}
                move_to_cgroup(members, self.run_cgroup)
                self.frozen.rmdir()
        finally:
            super().lift()


#: fault name -> its class (spec.FAULTS names them for the command line)
FAULTS: dict[str, type[Fault]] = {c.name: c for c in (UnderlayLinkDown, ServerStopped,
                                                      NodeStopped)}


@contextlib.contextmanager
def injected(name: str, cluster: Cluster, server: Endpoint) -> Iterator[None]:
    """Fault ``name`` on ``server``'s node for the measurements run inside the block; lifted
    on the way out, however it is left, and then (unless it was left by an exception, a
    Ctrl-C) the cluster is waited for until it is ready again."""
    fault = FAULTS[name](cluster, node_of(server))
    log.info("%s on %s", name, fault.node.name)
    try:
        fault.inject()
        with measure.on_server_up(fault.server_up):
            yield
    finally:
        fault.lift()
    cluster.wait_ready()
