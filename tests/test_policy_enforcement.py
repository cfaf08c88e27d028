"""NetworkPolicy on real clusters: the e2e model (x/y/z × a/b/c, 80/81 TCP/UDP) on three
nodes, every case's truth table measured with real connections equal to the hand-written
table for the enforcing variants, and every pair reachable where the project enforces nothing."""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import pytest
from netpol import (
    CASES,
    PROBES,
    e2e_cluster,
    evaluate,
    expected_table,
    measure,
    netpol,
    pod_ips,
    render,
    start_servers,
    workload,
)

from k8stopo.cni import VARIANTS
from k8stopo.policy import agents_for, not_enforced_notice
from k8stopo.policy.agent import PolicyAgent
from k8stopo.spec import ClusterSpec, SpecError

ENFORCING = [name for name, cls in VARIANTS.items() if cls.enforces_policy]
NOT_ENFORCING = [name for name, cls in VARIANTS.items()
                 if not cls.enforces_policy and not cls.host_network]


def _diff(case_name: str, got: dict, want: dict) -> list[str]:
    return [f"{case_name} {port}/{proto}:\nmeasured\n{render(got[(port, proto)])}\n"
            f"expected\n{render(want[(port, proto)])}"
            for port, proto in PROBES if got[(port, proto)] != want[(port, proto)]]


# Builds and teardowns take turns: only the measuring runs side by side.
_BUILDING = threading.Lock()


def check_enforcement(cni: str) -> None:
    """Every case's measured truth tables on a cluster of ``cni``, then the open table again
    and nothing left of the last policies in the nodes' ipsets and chains."""
    with _BUILDING:
        cluster = e2e_cluster(cni).__enter__()
    try:
        start_servers(cluster)
        agent = cluster.agents[-1]
        assert isinstance(agent, PolicyAgent)
        ips = pod_ips(cluster)
        open_table = measure(cluster)
        assert all(all(t.values()) for t in open_table.values()), "no policy: all must connect"
        failures: list[str] = []
        for case in CASES:
            if not case.weave and agent.name == "weave-npc":
                continue  # refused up front: test_weave_refuses_what_weave_npc_lacks
            documents = case.policies(ips)
            want = {k: expected_table(case, *k) for k in PROBES}
            assert evaluate(cluster, documents) == want, f"evaluator disagrees on {case.name}"
            agent.update(documents)
            failures += _diff(case.name, measure(cluster), want)
        agent.update(())
        failures += _diff("no-policy-again", measure(cluster), open_table)
        assert not failures, "\n".join(failures)
        for node in cluster.nodes:  # what the last policies needed is gone, nothing else
            sets = {s for s in node.output(["ipset", "list", "-n"]).split()
                    if s.startswith(("cali40s:", "cali40n:", "weave-"))}
            assert sets == set(agent.loaded[node.name]), node.name
            chains = [line for line in node.output(["iptables-save", "-t", "filter"]).splitlines()
                      if line.startswith((":cali-pi-", ":cali-po-"))]
            assert chains == [], chains
    finally:
        with _BUILDING:
            cluster.__exit__(None, None, None)


@pytest.fixture(scope="module")
def enforcement(request: pytest.FixtureRequest) -> Iterator[dict[str, Future[None]]]:
    """The check of every enforcing variant selected, all on their own clusters at once: a
    check mostly waits out the timeouts of blocked probes, which clusters can do side by side
    (each in its own namespaces: own conntrack, ipsets and chains)."""
    selected = [item.callspec.params["cni"] for item in request.session.items
                if isinstance(item, pytest.Function)
                and item.originalname == "test_measured_tables_equal_the_api_semantics"]
    with ThreadPoolExecutor(max_workers=max(len(selected), 1)) as pool:
        yield {cni: pool.submit(check_enforcement, cni) for cni in selected}


@pytest.mark.requires_root
@pytest.mark.parametrize("cni", ENFORCING)
def test_measured_tables_equal_the_api_semantics(cni: str,
                                                 enforcement: dict[str, Future[None]]) -> None:
    enforcement[cni].result()  # its first failed assertion, raised here


@pytest.mark.requires_root
@pytest.mark.skipif("calico-bgp" not in VARIANTS, reason="calico-bgp not built")
def test_felix_selector_ipset_holds_the_selected_pods():
    """Felix's way: a selector becomes a ``cali40s:`` ipset of exactly the matching pods."""
    docs = (netpol("from-y", "x", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),)
    with e2e_cluster("calico-bgp", docs) as cluster:
        want = sorted(str(p.ip) for p in cluster.pods if p.namespace == "y")
        node = cluster.nodes[0]
        sets = [s for s in node.output(["ipset", "list", "-n"]).split() if s.startswith("cali40s:")]
        assert len(sets) == 1, sets
        members = node.output(["ipset", "list", sets[0]]).split("Members:")[1].split()
        assert sorted(m.removesuffix("/32") for m in members) == want
        rules = node.output(["iptables-save", "-t", "filter"])
        assert f"--match-set {sets[0]} src" in rules and ":cali-pi-_" in rules


@pytest.mark.requires_root
@pytest.mark.parametrize("cni", NOT_ENFORCING[:1])
def test_variants_that_enforce_nothing_reach_every_pair_and_say_so(cni):
    deny = (netpol("deny-all", "x", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),)
    assert agents_for(VARIANTS[cni]) == []
    notice = not_enforced_notice(VARIANTS[cni])
    assert notice is not None and notice.startswith(f"variant {cni} does not enforce NetworkPolicy")
    with e2e_cluster(cni, deny) as cluster:
        start_servers(cluster)
        assert all(all(t.values()) for t in measure(cluster).values())


def test_enforcing_variants_have_no_notice():
    for name in ENFORCING:
        assert not_enforced_notice(VARIANTS[name]) is None
        assert len(agents_for(VARIANTS[name])) == 1


@pytest.mark.parametrize("cni", [n for n in ENFORCING if n.startswith("weave")])
def test_weave_refuses_what_weave_npc_lacks(cni):
    (agent,) = agents_for(VARIANTS[cni])
    for case in CASES:
        if not case.weave:
            spec = ClusterSpec(cni=cni, workload=workload(case.policies({"x/a": "10.0.0.1",
                                                                          "y/b": "10.0.0.2"})))
            with pytest.raises(SpecError, match="weave-npc"):
                agent.validate(spec)
