"""hostPort: a container port published on its node's IP, by the real ``portmap`` CNI
plugin chained after the variant's own, as kubelet's CNI configuration lists chain it
(and as docker-bridge does, :mod:`k8stopo.cni.docker`).

kubelet passes each container port's ``hostPort`` to the network plugin as the
``portMappings`` capability; portmap then adds its CNI-HOSTPORT-DNAT rules (and SNAT
for hairpin) on the node. Here the agent runs portmap ADD for every pod from the
manifests that declares one, with the variant's ADD result as ``prevResult``, and DEL
when the cluster stops. hostNetwork pods need none: they bind the node's own ports.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .agent import Agent
from .pods import POD_IFNAME, container_id, invoke
from .workload import pod_handle

if TYPE_CHECKING:
    from .context import ClusterContext
    from .node import Pod


class HostPorts(Agent):
    """portmap for the pods whose container ports declare a hostPort."""

    name = "hostport"
    requires: ClassVar[tuple[str, ...]] = ("cni:portmap",)

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        workload = cluster.spec.workload
        self.mappings = {
            pod_handle(p.name, p.namespace): [
                {"hostPort": c.host_port, "containerPort": c.container_port,
                 "protocol": c.protocol.lower()} for c in p.ports if c.host_port]
            for p in (workload.pods if workload else ()) if not p.host_network}
        self.added: dict[str, dict[str, Any]] = {}  # pod name -> the conf it was added with

    def conf(self, pod: "Pod") -> dict[str, Any]:
        return {"cniVersion": pod.cni_result.get("cniVersion", "0.4.0"), "name": "k8s-pod-network",
                "type": "portmap", "capabilities": {"portMappings": True}, "snat": True,
                "runtimeConfig": {"portMappings": self.mappings[pod.name]},
                "prevResult": pod.cni_result}

    def pod_added(self, pod: "Pod") -> None:
        if not self.mappings.get(pod.name) or pod.node is None:
            return
        conf = self.conf(pod)
        invoke(pod.node, "ADD", conf, container_id(pod.name, pod.state.prefix),
               f"/proc/{pod.pid}/ns/net", POD_IFNAME)
        self.added[pod.name] = conf

    def stop(self) -> None:
        for name, conf in list(self.added.items()):
            pod = self.cluster.pod(name)
            assert pod.node is not None
            invoke(pod.node, "DEL", conf, container_id(pod.name, pod.state.prefix),
                   f"/proc/{pod.pid}/ns/net", POD_IFNAME)
            del self.added[name]
