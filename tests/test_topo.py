"""The underlay topology on its own, loaded the way `mn --custom k8stopo/topo.py` loads it."""
from __future__ import annotations

import runpy

import pytest
from mininet.net import Mininet

from k8stopo import runstate

from conftest import REPO

pytestmark = pytest.mark.requires_root  # Mininet builds namespaces


def test_mn_custom_topology_builds_nodes_that_reach_each_other() -> None:
    custom = runpy.run_path(str(REPO / "k8stopo" / "topo.py"))  # what mn --custom does
    topo = custom["topos"]["k8s"](3)  # mn: --topo k8s,3
    before = set(runstate.root_links())
    Mininet.inited = True  # leave the host's sysctls alone (Mininet's fixLimits)
    net = Mininet(topo=topo, controller=None, waitConnected=False)
    try:
        net.start()
        nodes = [h for h in net.hosts if h.name != custom["SWITCH"]]
        assert [h.name for h in nodes] == ["n1", "n2", "n3"]
        assert [h.IP() for h in nodes] == ["172.20.0.1", "172.20.0.2", "172.20.0.3"]
        assert net.ping(nodes, timeout="2") == 0
        # the underlay switch is a bridge in a namespace of its own: nothing in the root one
        assert set(runstate.root_links()) == before
        switch = net[custom["SWITCH"]]
        assert "br0" in switch.cmd("ip -o link show type bridge")
        assert switch.cmd("cat /proc/sys/net/bridge/bridge-nf-call-iptables").strip() in ("0", "")
    finally:
        net.stop()
    assert set(runstate.root_links()) == before


def test_mn_custom_routed_topology_crosses_its_router() -> None:
    custom = runpy.run_path(str(REPO / "k8stopo" / "topo.py"))
    topo = custom["topos"]["k8s"](3, underlay="routed")  # mn: --topo k8s,3,underlay=routed
    before = set(runstate.root_links())
    Mininet.inited = True
    net = Mininet(topo=topo, controller=None, waitConnected=False)
    try:
        net.start()
        n1, n3 = net["n1"], net["n3"]
        assert (n1.IP(), n3.IP()) == ("172.20.0.1", "172.20.128.3")
        assert "ip_forward = 1" in net[custom["ROUTER"]].cmd("sysctl net.ipv4.ip_forward")
        n1.cmd("ip route add default via 172.20.127.254")
        n3.cmd("ip route add default via 172.20.255.254")
        assert " 0% packet loss" in n1.cmd("ping -c 1 -W 2 172.20.128.3")
        assert set(runstate.root_links()) == before
    finally:
        net.stop()
    assert set(runstate.root_links()) == before
