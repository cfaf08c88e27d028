"""NetworkPolicy v1: the parser refuses what it does not implement, and the reference
evaluator gives, for every case of the e2e model, the table written out by hand."""
from __future__ import annotations

import ipaddress

import pytest
from netpol import CASES, NS_LABELS, PROBES, expected_table, fake_hosts, netpol, render

from k8stopo.policy import model, semantics
from k8stopo.spec import SpecError


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("port,protocol", PROBES, ids=lambda v: str(v))
def test_evaluator_matches_the_hand_written_table(case, port, protocol):
    hosts = fake_hosts()
    ips = {h.name: str(h.ip) for h in hosts}
    policies = model.parse_all(case.policies(ips))
    got = semantics.truth_table(policies, NS_LABELS, hosts, port, protocol)
    want = expected_table(case, port, protocol)
    assert got == want, f"{case.name} {port}/{protocol}\ngot:\n{render(got)}\nwant:\n{render(want)}"


def test_policy_types_default_from_the_egress_section():
    spec = {"podSelector": {}, "egress": [{}]}
    assert model.parse(netpol("p", "x", spec)).policy_types == ("Ingress", "Egress")
    assert model.parse(netpol("p", "x", {"podSelector": {}, "egress": []})).policy_types == ("Ingress",)
    only = {"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}
    assert model.parse(netpol("p", "x", only)).policy_types == ("Egress",)


def test_empty_rule_allows_everything_but_no_rule_allows_nothing():
    hosts = {h.name: h for h in fake_hosts()}
    allow_all = model.parse_all([netpol("all", "x", {"podSelector": {}, "ingress": [{}]})])
    deny = model.parse_all([netpol("none", "x", {"podSelector": {}, "ingress": []})])
    src, dst = hosts["y/b"], hosts["x/a"]
    assert semantics.allowed(allow_all, NS_LABELS, src, dst, 80, "TCP")
    assert not semantics.allowed(deny, NS_LABELS, src, dst, 80, "TCP")


def test_a_non_pod_matches_only_ip_blocks():
    hosts = {h.name: h for h in fake_hosts()}
    node = semantics.Host(ipaddress.IPv4Address("172.20.0.1"))
    sel = model.parse_all([netpol("p", "x", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {}}]}]})])
    block = model.parse_all([netpol("p", "x", {"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "172.20.0.0/16"}}]}]})])
    assert not semantics.allowed(sel, NS_LABELS, node, hosts["x/a"], 80, "TCP")
    assert semantics.allowed(block, NS_LABELS, node, hosts["x/a"], 80, "TCP")


def test_a_named_port_missing_on_the_destination_matches_nothing():
    hosts = {h.name: h for h in fake_hosts()}
    bare = semantics.Host(ipaddress.IPv4Address("10.9.9.9"), "x", {"pod": "d"}, (), "x/d")
    pols = model.parse_all([netpol("p", "x", {"podSelector": {}, "ingress": [
        {"ports": [{"port": "serve-80-tcp"}]}]})])
    assert semantics.allowed(pols, NS_LABELS, hosts["y/a"], hosts["x/a"], 80, "TCP")
    assert not semantics.allowed(pols, NS_LABELS, hosts["y/a"], bare, 80, "TCP")


BAD = [
    ({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}], "action": "Deny"}]}, "'action'"),
    ({"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}, "SCTP"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}, "numeric port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "below port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}, "port number"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"},
                                                "podSelector": {}}]}]}, "ipBlock cannot"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                            "except": ["11.0.0.0/16"]}}]}]}, "within"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]}, "CIDR"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}, "Gt"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "needs values"),
    ({"podSelector": {}, "ingress": [{"from": [{}]}]}, "a peer needs"),
    ({"podSelector": {}, "policyTypes": ["Both"]}, "'Both'"),
    ({"ingress": []}, "podSelector is required"),
    ({"podSelector": {}, "egress": [{"from": []}]}, "'from'"),
]


@pytest.mark.parametrize("spec,needle", BAD, ids=lambda v: v if isinstance(v, str) else "")
def test_refuses_in_one_line(spec, needle):
    with pytest.raises(SpecError) as err:
        model.parse(netpol("bad", "x", spec))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_refuses_foreign_documents_and_duplicates():
    with pytest.raises(SpecError, match=r"not a networking\.k8s\.io/v1 NetworkPolicy"):
        model.parse({"apiVersion": "extensions/v1beta1", "kind": "NetworkPolicy",
                     "metadata": {"name": "p"}, "spec": {"podSelector": {}}})
    with pytest.raises(SpecError, match="defined twice"):
        model.parse_all([netpol("p", "x", {"podSelector": {}})] * 2)
    assert model.parse({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": "p"}, "spec": {"podSelector": {}}}).namespace == "default"
