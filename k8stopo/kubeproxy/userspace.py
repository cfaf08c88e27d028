"""kube-proxy's original userspace mode: a proxier process per node plus its portals.

Each node runs :mod:`k8stopo.kubeproxy.proxier` (round-robin, retrying another
endpoint when one refuses), and iptables portals redirect ClusterIP:port and
NodePorts (and a LoadBalancer's ingress IP) to the port the proxier listens on for that
Service port. externalTrafficPolicy Local is refused in this mode. Backends
see the node's address as the source: the proxier opens its own connection.
"""
from __future__ import annotations

import json
import select
import subprocess
import sys
from typing import TYPE_CHECKING

from ..errors import DaemonError, tail
from ..templates import render
from .base import KubeProxy
from .model import ServicePortInfo, refuse_local

if TYPE_CHECKING:
    from ..context import ClusterContext
    from ..node import Node
    from ..spec import ClusterSpec

SYNC_TIMEOUT = 30.0


class UserspaceProxy(KubeProxy):
    name = "kube-proxy-userspace"
    mode = "userspace"
    requires = ("iptables-nat",)

    @classmethod
    def validate(cls, spec: "ClusterSpec") -> None:
        refuse_local(spec, cls.mode)

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def _proxier_ports(self, node: "Node", ports: list[ServicePortInfo]) -> dict[str, int]:
        """Hand the proxier its config (start it or SIGHUP it); its answer: the ports."""
        config = self.cluster.state.path(node.name, "kube-proxy-userspace.json")
        config.write_text(json.dumps([
            {"name": s.name, "protocol": s.protocol, "endpoints": [str(e) for e in s.endpoints],
             "affinity_timeout": s.affinity_timeout} for s in ports]))
        p = self.procs.get(node.name)
        if p is None:
            p = node.spawn([sys.executable, "-m", "k8stopo.kubeproxy.proxier", str(config),
                            str(node.ip)],
                           what=f"kube-proxy userspace@{node.name}", stdout=subprocess.PIPE)
            self.procs[node.name] = p
        else:
            p.send_signal(1)  # SIGHUP: reload
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], SYNC_TIMEOUT)
        line = p.stdout.readline() if ready else ""
        if not line:
            code = p.poll()
            raise DaemonError("kube-proxy userspace", node.name,
                              f"no answer in {SYNC_TIMEOUT}s" if code is None
                              else f"exited {code}: {tail(p.stderr.read() if p.stderr else '')}")
        return json.loads(line)["ports"]

    def load(self, node: "Node", ports: list[ServicePortInfo]) -> float:
        listening = self._proxier_ports(node, ports)
        portals = [(s, listening[f"{s.name}/{s.protocol}"]) for s in ports]
        rules = render("kube-proxy-userspace.rules.j2", node=node.name, node_ip=node.ip,
                       portals=portals, first=node.name not in self.sync_seconds)
        self.cluster.state.path(node.name, "kube-proxy-userspace.rules").write_text(rules)
        node.run(["iptables-restore", "--test", "--noflush"], input=rules, timeout=600)
        return self.timed_load(node, ["iptables-restore", "--noflush"], rules)

    def stop(self) -> None:
        for name, p in list(self.procs.items()):
            self.cluster.node(name).stop(p)
            del self.procs[name]
