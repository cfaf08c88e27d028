"""The underlay topology on its own, loaded the way `mn --custom k8stopo/topo.py` loads it."""
from __future__ import annotations

import runpy

from mininet.net import Mininet
from mininet.nodelib import LinuxBridge

from k8stopo.runstate import RunState

from conftest import REPO, assert_gone


def test_mn_custom_topology_builds_nodes_that_reach_each_other() -> None:
    custom = runpy.run_path(str(REPO / "k8stopo" / "topo.py"))  # what mn --custom does
    state = RunState("test-topo")
    topo = custom["topos"]["k8s"](3, switch=state.prefix)  # mn: --topo k8s,3
    Mininet.inited = True  # leave the host's sysctls alone (Mininet's fixLimits)
    net = Mininet(topo=topo, switch=LinuxBridge, controller=None, waitConnected=False)
    try:
        net.start()
        assert [h.name for h in net.hosts] == ["n1", "n2", "n3"]
        assert [h.IP() for h in net.hosts] == ["172.20.0.1", "172.20.0.2", "172.20.0.3"]
        assert net.pingAll(timeout="2") == 0
    finally:
        net.stop()
        state.remove_all()
    assert_gone(state.prefix, [])
