"""Pods, attached by the real CNI reference plugins exactly as kubelet/containerd would.

A pod's network namespace is held by a Mininet host shell (the "pause
container"), so the Mininet CLI can address pods by name. The plugin binary runs
inside the *node's* network namespace (where it creates cni0 / the host end of
the veth) with CNI_NETNS=/proc/<pod pid>/ns/net, the config JSON on stdin and
CNI_COMMAND=ADD/DEL in the environment (CNI spec), after the loopback plugin.
A network configuration *list* (``plugins``, e.g. bridge then portmap) is run as
libcni runs it: in order on ADD, each plugin given the previous one's result as
``prevResult`` and, for the capabilities it declares, the runtime's values
(``runtimeConfig``: kubelet's ``portMappings``); in reverse order on DEL.
"""
from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

from mininet.link import Intf

from .errors import RunError
from .node import Node, Pod

log = logging.getLogger("k8stopo.pods")

CNI_PATH = "/usr/lib/cni"
POD_IFNAME = "eth0"
LOOPBACK_CONF = {"cniVersion": "0.4.0", "name": "cni-loopback", "type": "loopback"}


class CNIError(RunError):
    """A CNI plugin returned an error (its code and message are kept)."""


def invoke(node: Node, command: str, netconf: dict[str, Any], container_id: str,
           netns: str, ifname: str) -> dict[str, Any]:
    """Run one CNI plugin per the CNI spec from the node's network namespace."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_PATH": CNI_PATH}
    plugin = f"{CNI_PATH}/{netconf['type']}"
    result = node.run([plugin], input=json.dumps(netconf), env=env, check=False)
    if result.returncode != 0:
        try:
            err = json.loads(result.stdout)
            why = f"code {err.get('code')}: {err.get('msg')} {err.get('details', '')}".strip()
        except ValueError:
            why = (result.stderr or result.stdout).strip()
        raise CNIError(f"CNI {command} {netconf['type']} for {container_id} on {node.name}: {why}")
    return json.loads(result.stdout) if result.stdout.strip() else {}


def plugin_confs(netconf: dict[str, Any],
                 runtime_config: dict[str, Any]) -> list[dict[str, Any]]:
    """One config per plugin: a list's entries get its name and cniVersion, and the runtime
    values of the capabilities each declares (libcni's injectRuntimeConfig)."""
    if "plugins" not in netconf:
        return [netconf]
    confs = []
    for plugin in netconf["plugins"]:
        conf = {"cniVersion": netconf["cniVersion"], "name": netconf["name"], **plugin}
        wanted = {k: v for k, v in runtime_config.items() if plugin.get("capabilities", {}).get(k)}
        if wanted:
            conf["runtimeConfig"] = wanted
        confs.append(conf)
    return confs


def _add(node: Node, netconf: dict[str, Any], runtime_config: dict[str, Any], cid: str,
         netns: str) -> dict[str, Any]:
    result: dict[str, Any] | None = None
    for conf in plugin_confs(netconf, runtime_config):
        if result is not None:
            conf = {**conf, "prevResult": result}
        result = invoke(node, "ADD", conf, cid, netns, POD_IFNAME)
    assert result is not None
    return result


def container_id(pod_name: str, prefix: str) -> str:
    return f"{prefix}-{pod_name}"


def add(node: Node, name: str, netconf: dict[str, Any], pause: Any, namespace: str = "default",
        labels: dict[str, str] | None = None,
        runtime_config: dict[str, Any] | None = None) -> Pod:
    """Attach a new pod whose namespace is held by ``pause`` (a Mininet host);
    ``runtime_config`` holds what kubelet passes at run time (``portMappings``)."""
    netns = f"/proc/{pause.pid}/ns/net"
    cid = container_id(name, node.state.prefix)
    node.state.path("cni", node.name, f"{name}.json").write_text(json.dumps(netconf, indent=2))
    invoke(node, "ADD", LOOPBACK_CONF, cid, netns, "lo")
    runtime_config = dict(runtime_config or {})
    result = _add(node, netconf, runtime_config, cid, netns)
    address = ipaddress.IPv4Interface(result["ips"][0]["address"])
    register_interface(pause)
    pod = Pod(name=name, ip=address.ip, pid=pause.pid, state=node.state, node=node, mn=pause,
              mtu=int(plugin_confs(netconf, {})[0].get("mtu", 1500)), netconf=netconf,
              cni_result=result, runtime_config=runtime_config, namespace=namespace,
              labels=dict(labels or {}))
    node.pods.append(pod)
    log.info("pod %s on %s: %s", name, node.name, address)
    return pod


def register_interface(pause: Any) -> None:
    """Let Mininet know the pod's eth0 so that its CLI can substitute pod names by IPs."""
    Intf(POD_IFNAME, node=pause, moveIntfFn=lambda *_: True)


def host_network(node: Node, name: str, namespace: str = "default",
                 labels: dict[str, str] | None = None) -> Pod:
    """A hostNetwork pod: the node's own namespace and address."""
    pod = Pod(name=name, ip=node.ip, pid=node.pid, state=node.state, node=node, mn=None,
              mtu=int(node.link(node.intf)["mtu"]), namespace=namespace,
              labels=dict(labels or {}))
    node.pods.append(pod)
    return pod


def delete(pod: Pod) -> None:
    """CNI DEL, as kubelet does when a pod goes (releases the IPAM lease)."""
    if pod.node is None or pod.mn is None:
        raise ValueError(f"{pod.name} is a hostNetwork pod: there is nothing to CNI DEL")
    cid = container_id(pod.name, pod.state.prefix)
    netns = f"/proc/{pod.pid}/ns/net"
    confs = plugin_confs(pod.netconf, pod.runtime_config)
    if "plugins" in pod.netconf:  # a list: reverse order, each given the cached ADD result
        confs = [{**conf, "prevResult": pod.cni_result} for conf in reversed(confs)]
    for conf in confs:
        invoke(pod.node, "DEL", conf, cid, netns, POD_IFNAME)
    invoke(pod.node, "DEL", LOOPBACK_CONF, cid, netns, "lo")
