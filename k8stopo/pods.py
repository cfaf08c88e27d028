"""Pods, attached by the real CNI reference plugins exactly as kubelet/containerd would.

A pod's network and mount namespaces are held by a sleeping process (the "pause
container", :func:`hold`): no shell, no pty, as nobody types into most pods. The
Mininet CLI still reaches every pod by name: :func:`shell` gives a pod a Mininet
host whose shell enters its namespaces, made only when the CLI opens. The plugin binary runs
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
import os
import subprocess
import time
from typing import Any

from mininet.link import Intf
from mininet.node import Host

from . import proc
from .errors import RunError
from .node import Node, Pod
from .runstate import RunState

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


def hold(state: RunState, name: str) -> subprocess.Popen[str]:
    """A new pod's network and mount namespaces, held by a sleeper (the pause container),
    returned once the namespaces are its own (``unshare`` makes them, then execs ``sleep``;
    until then the pid still names the parent's, which no plugin may touch). The mount
    namespace is private, so a bind mount in it (DNS's resolv.conf) stays the pod's."""
    # no cgroup_procs: a fork of this (large) process costs more than the queued move
    holder = proc.spawn(["unshare", "--net", "--mount", "--", "sleep", "infinity"],
                        stderr=subprocess.DEVNULL)
    state.track_pid(holder.pid, f"pause {name}")
    ours = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + 10
    while os.stat(f"/proc/{holder.pid}/ns/net").st_ino == ours:
        if holder.poll() is not None or time.monotonic() > deadline:
            raise RunError(f"the pause process of pod {name} did not make its namespaces "
                           f"(exit {holder.poll()})")
        time.sleep(0.0005)
    return holder


def add(node: Node, name: str, netconf: dict[str, Any], holder: int, namespace: str = "default",
        labels: dict[str, str] | None = None,
        runtime_config: dict[str, Any] | None = None) -> Pod:
    """Attach a new pod whose namespaces are held by pid ``holder`` (see :func:`hold`);
    ``runtime_config`` holds what kubelet passes at run time (``portMappings``)."""
    netns = f"/proc/{holder}/ns/net"
    cid = container_id(name, node.state.prefix)
    node.state.path("cni", node.name, f"{name}.json").write_text(json.dumps(netconf, indent=2))
    invoke(node, "ADD", LOOPBACK_CONF, cid, netns, "lo")
    runtime_config = dict(runtime_config or {})
    result = _add(node, netconf, runtime_config, cid, netns)
    address = ipaddress.IPv4Interface(result["ips"][0]["address"])
    log.info("pod %s on %s: %s", name, node.name, address)
    return Pod(name=name, ip=address.ip, pid=holder, state=node.state, node=node,
               mtu=int(plugin_confs(netconf, {})[0].get("mtu", 1500)), netconf=netconf,
               cni_result=result, runtime_config=runtime_config, namespace=namespace,
               labels=dict(labels or {}))


def host_network(node: Node, name: str, namespace: str = "default",
                 labels: dict[str, str] | None = None) -> Pod:
    """A hostNetwork pod: the node's own namespace and address."""
    return Pod(name=name, ip=node.ip, pid=node.pid, state=node.state, node=node,
               host_network=True, mtu=int(node.link(node.intf)["mtu"]), namespace=namespace,
               labels=dict(labels or {}))


class _PodShell(Host):
    """A Mininet host for a pod that already exists: its shell enters the pod's network
    and mount namespaces (``nsenter``) instead of making new ones (``mnexec -n``)."""

    holder: int

    def _popen(self, cmd: list[str], **params: Any) -> Any:
        if cmd[0] == "mnexec":  # the shell: mnexec's -n would unshare; enter the pod's instead
            cmd = ["nsenter", f"--net=/proc/{self.holder}/ns/net",
                   f"--mount=/proc/{self.holder}/ns/mnt", "--",
                   "mnexec", cmd[1].replace("n", ""), *cmd[2:]]
        return super()._popen(cmd, **params)


def shell(pod: Pod, host_class: type[Host]) -> Host:
    """A Mininet host whose shell runs in ``pod`` (for the CLI), its eth0 known to Mininet
    so that the CLI substitutes pod names by their IPs. ``host_class`` adds the run's own
    behaviour (its shells are recorded)."""
    cls = type("PodShell", (host_class, _PodShell), {"holder": pod.pid})
    host = cls(pod.name, ip=None)
    Intf(POD_IFNAME, node=host, moveIntfFn=lambda *_: True)
    return host


def delete(pod: Pod) -> None:
    """CNI DEL, as kubelet does when a pod goes (releases the IPAM lease)."""
    if pod.node is None or pod.host_network:
        raise ValueError(f"{pod.name} is a hostNetwork pod: there is nothing to CNI DEL")
    cid = container_id(pod.name, pod.state.prefix)
    netns = f"/proc/{pod.pid}/ns/net"
    confs = plugin_confs(pod.netconf, pod.runtime_config)
    if "plugins" in pod.netconf:  # a list: reverse order, each given the cached ADD result
        confs = [{**conf, "prevResult": pod.cni_result} for conf in reversed(confs)]
    for conf in confs:
        invoke(pod.node, "DEL", conf, cid, netns, POD_IFNAME)
    invoke(pod.node, "DEL", LOOPBACK_CONF, cid, netns, "lo")
