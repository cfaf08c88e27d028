"""kube-proxy's rule sets as rendered, checked against kube-proxy's own names and by the
loaders' own parsers (no cluster needed)."""
from __future__ import annotations

import dataclasses
import ipaddress
from types import SimpleNamespace

import pytest

from k8stopo import proc
from k8stopo.kubeproxy.iptables import IptablesProxy
from k8stopo.kubeproxy.model import Endpoint, ServicePortInfo
from k8stopo.kubeproxy.nftables import NftablesProxy

IP = ipaddress.IPv4Address


def port(name: str = "p80", endpoints: int = 3, node_port: int | None = None,
         affinity: int | None = None) -> ServicePortInfo:
    eps = tuple(Endpoint(IP(f"10.180.0.{i + 1}"), 80, f"pod{i}") for i in range(endpoints))
    return ServicePortInfo("ns1", "svc1", name, "tcp", IP("10.96.0.41"), 80, node_port,
                           affinity, eps)


def test_chain_names_are_hashed_as_kube_proxy_hashes_them() -> None:
    # the vectors of kube-proxy's own tests (pkg/proxy/iptables/proxier_test.go, and the
    # nftables proxier's servicePortChainNameBase comment)
    s = port()
    assert s.name == "ns1/svc1:p80"
    assert s.svc_chain == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert s.sep_chain(s.endpoints[0]) == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert s.nft_base == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert s.nft_endpoint_base(s.endpoints[0]) == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


def _proxy(cls):  # a kube-proxy agent over a stand-in cluster: rendering needs no Mininet
    return cls(SimpleNamespace(pod_cidr=ipaddress.IPv4Network("10.244.0.0/16")))


NODE = SimpleNamespace(name="n1")


def test_iptables_picks_1_over_n_then_1_over_n_minus_1() -> None:
    rules, chains = _proxy(IptablesProxy).render(NODE, [port()])
    probs = [line.split("--probability ")[1].split()[0]
             for line in rules.splitlines() if "--probability" in line]
    assert probs == ["0.3333333333", "0.5000000000"]
    assert "! -s 10.244.0.0/16 -d 10.96.0.41/32" in rules  # --cluster-cidr masquerade
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000" in rules
    assert len(chains) == 4  # KUBE-SVC + 3 KUBE-SEP


def test_iptables_affinity_and_nodeport_and_reject() -> None:
    proxy = _proxy(IptablesProxy)
    rules, _ = proxy.render(NODE, [port(affinity=60, node_port=30080),
                                   port(name="empty", endpoints=0, node_port=30081)])
    assert "--rcheck --seconds 60 --reap -j KUBE-SEP-" in rules
    assert "-m recent --name KUBE-SEP-SXIVWICOYRO3J4NJ --mask 255.255.255.255 --rsource --set" \
        in rules
    assert "--dport 30080 -j KUBE-EXT-XPGD46QRK7WJZT7O" in rules
    assert '"ns1/svc1:empty has no endpoints" -m tcp --dport 80 -j REJECT' in rules
    assert '-m addrtype --dst-type LOCAL -m tcp --dport 30081 -j REJECT' in rules


def test_iptables_deletes_the_chains_of_endpoints_that_left() -> None:
    proxy = _proxy(IptablesProxy)
    _, chains = proxy.render(NODE, [port()])
    proxy.chains["n1"] = chains
    rules, _ = proxy.render(NODE, [port(endpoints=2)])
    gone = port().sep_chain(port().endpoints[2])
    assert f"-X {gone}" in rules and "-I PREROUTING" not in rules  # jumps only once


def test_nftables_dispatches_by_verdict_map() -> None:
    rules, _chains, _ = _proxy(NftablesProxy).render(NODE, [port(node_port=30080)])
    assert "10.96.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80" in rules
    assert "tcp . 30080 : goto external-ULMVA6XW-ns1/svc1/tcp/p80" in rules
    assert "numgen random mod 3 vmap { 0 : goto endpoint-5OJB2KTY" in rules
    assert "chain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80" in rules


def lb(s: ServicePortInfo, local: bool = False) -> ServicePortInfo:
    return dataclasses.replace(s, load_balancer_ip=IP("172.20.200.1"), external_local=local)


def test_iptables_sends_a_load_balancer_ip_to_kube_ext() -> None:
    s = lb(port(node_port=30080))
    rules, chains = _proxy(IptablesProxy).render(NODE, [s])
    assert (f'-A KUBE-SERVICES -d 172.20.200.1/32 -p tcp -m comment --comment "{s.name} '
            f'loadbalancer IP" -m tcp --dport 80 -j {s.ext_chain}') in rules
    assert s.ext_chain in chains and s.svl_chain not in chains
    dead = lb(port(endpoints=0))
    rules, _ = _proxy(IptablesProxy).render(NODE, [dead])
    assert "-A KUBE-EXTERNAL-SERVICES -d 172.20.200.1/32" in rules and "REJECT" in rules


def test_iptables_local_policy_uses_this_nodes_endpoints_only() -> None:
    s = lb(port(node_port=30080), local=True)
    node = SimpleNamespace(name="n1", pods=[SimpleNamespace(name="pod1")])
    rules, chains = _proxy(IptablesProxy).render(node, [s])
    assert s.svl_chain in chains
    svl = [line for line in rules.splitlines() if line.startswith(f"-A {s.svl_chain}")]
    assert len(svl) == 1 and s.sep_chain(s.endpoints[1]) in svl[0]  # pod1 is endpoint 1
    assert "--src-type LOCAL -j KUBE-MARK-MASQ" in rules
    elsewhere = SimpleNamespace(name="n2", pods=[])
    rules, chains = _proxy(IptablesProxy).render(elsewhere, [s])
    assert s.svl_chain not in chains and "has no local endpoints" in rules


def test_nftables_maps_a_load_balancer_ip_to_its_external_chain() -> None:
    rules, chains, _ = _proxy(NftablesProxy).render(NODE, [lb(port())])
    assert "172.20.200.1 . tcp . 80 : goto external-ULMVA6XW-ns1/svc1/tcp/p80" in rules
    assert "external-ULMVA6XW-ns1/svc1/tcp/p80" in chains


@pytest.mark.requires_root
@pytest.mark.parametrize("cls", [IptablesProxy, NftablesProxy])
def test_rule_sets_pass_their_loaders_own_check(cls, tmp_path) -> None:
    """iptables-restore --test / nft -c in a scratch namespace (checks touch nothing)."""
    ns = f"k8t-rules-{cls.mode}"
    proc.run(["ip", "netns", "add", ns])
    try:
        services = [port(affinity=60, node_port=30080), port(name="x", endpoints=0),
                    dataclasses.replace(lb(port(name="lb", node_port=30081)),
                                        cluster_ip=IP("10.96.0.42")),
                    dataclasses.replace(lb(port(name="lbx", endpoints=0)),
                                        cluster_ip=IP("10.96.0.43"))]
        proxy = _proxy(cls)
        if cls is IptablesProxy:
            rules, _ = proxy.render(NODE, services)
            proc.run(["iptables-restore", "--test", "--noflush"], ns, input=rules)
        else:
            rules, _, _ = proxy.render(NODE, services)
            proc.run(["nft", "-c", "-f", "-"], ns, input=rules)
    finally:
        proc.run(["ip", "netns", "del", ns])
