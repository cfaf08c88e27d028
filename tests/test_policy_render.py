"""The names the agents give their chains and ipsets, as Felix and weave-npc form them."""
from __future__ import annotations

from netpol import netpol

from k8stopo.policy import cost, felix, model, weave_npc

SEL = model.parse_selector({"matchLabels": {"pod": "a"}, "matchExpressions": [
    {"key": "env", "operator": "NotIn", "values": ["prod", "dev"]},
    {"key": "tier", "operator": "Exists"}]}, "test")


def test_felix_chain_names_are_length_limited_ids():
    short = model.parse(netpol("p", "x", {"podSelector": {}}))
    name = felix.chain_name(short, "Ingress")
    # "cali-pi-" + "default/x/knp.default.p" is 31 > 28 characters: hashed as Felix does
    assert name.startswith("cali-pi-_") and len(name) == 28
    assert felix.chain_name(short, "Egress").startswith("cali-po-_")
    other = model.parse(netpol("q", "x", {"podSelector": {}}))
    assert felix.chain_name(other, "Ingress") != name


def test_felix_ipset_names_fit_ipset_and_follow_the_selector():
    a = felix.ipset_name("s", felix.calico_selector(SEL))
    assert a.startswith("cali40s:") and len(a) == 31
    assert felix.ipset_name("s", "all()") != a
    assert felix.calico_selector(SEL) == \
        "env not in { 'dev', 'prod' } && pod == 'a' && has(tier)"
    assert felix.calico_selector(model.LabelSelector()) == "all()"
    peer = model.Peer(namespace_selector=model.parse_selector({"matchLabels": {"ns": "y"}}, "t"))
    assert felix.peer_selector(peer, "x").startswith("(pcns.ns == 'y') && ")


def test_weave_names():
    assert weave_npc.selector_string(SEL) == "env notin (dev,prod),pod=a,tier"
    name = weave_npc.set_name("x:pod=a")
    assert name.startswith("weave-") and len(name) <= 31
    assert weave_npc.set_name("y:pod=a") != name  # the namespace is part of the key


def test_cost_policies_walk_decoys_then_allow():
    docs = cost.policies(4)
    parsed = model.parse_all(docs)
    assert [p.name for p in parsed] == ["decoy-0000", "decoy-0001", "decoy-0002", "zz-allow"]
    assert all(p.pod_selector.empty and p.policy_types == ("Ingress",) for p in parsed)
    assert cost.policies(0) == ()
