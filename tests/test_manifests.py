"""Manifests: the API's shapes in, a checked workload out; anything else refused in one line."""
from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from k8stopo import manifests, runstate
from k8stopo.cluster import Cluster
from k8stopo.spec import ClusterSpec, SpecError
from k8stopo.workload import Probe

from conftest import REPO, k8stopo, run_dirs

DATA = Path(__file__).parent / "data"


def load(tmp_path: Path, text: str):
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    return manifests.load(path)


def test_the_services_test_workload_reads_as_the_api_would(tmp_path: Path) -> None:
    w = manifests.load(DATA / "services.yaml")
    assert [p.name for p in w.pods] == ["client", "web-0", "web-1", "web-2"]
    assert w.pods[1].labels == {"app": "web"} and w.pods[1].ports[0].name == "http"
    web, np, sticky, _empty = w.services
    assert web.cluster_ip == ipaddress.IPv4Address("10.96.0.2")  # .1 is kubernetes.default
    assert web.ports[0].target_port == "http" and web.ports[1].protocol == "UDP"
    assert np.type == "NodePort" and np.ports[0].node_port == 30080
    assert sticky.session_affinity_timeout == 60
    assert w.namespaces["default"] == {"kubernetes.io/metadata.name": "default"}


def test_namespaces_get_their_name_label_and_services_get_node_ports(tmp_path: Path) -> None:
    w = load(tmp_path, """
        apiVersion: v1
        kind: Namespace
        metadata: {name: x, labels: {team: a}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: s, namespace: x}
        spec:
          type: NodePort
          clusterIP: 10.96.0.2
          ports: [{port: 80}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: h, namespace: x}
        spec: {clusterIP: None, selector: {a: b}, ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: t, namespace: x}
        spec: {ports: [{port: 80}]}
        """)
    assert w.namespaces["x"] == {"team": "a", "kubernetes.io/metadata.name": "x"}
    s, h, t = w.services
    assert s.ports[0].node_port == 30000 and s.ports[0].target_port == 80
    assert h.cluster_ip is None
    assert t.cluster_ip == ipaddress.IPv4Address("10.96.0.3")  # given ones are skipped


def test_network_policies_are_kept_whole(tmp_path: Path) -> None:
    w = load(tmp_path, """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny}
        spec: {podSelector: {}, policyTypes: [Ingress]}
        """)
    assert w.network_policies[0]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert w.network_policies[0]["metadata"]["namespace"] == "default"


POD = """
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers: [{name: c, image: i, ports: [{containerPort: 80}]}]
"""

BAD = {
    "kind": ("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: i}\n",
             "kind 'Ingress' is not implemented"),
    "pod field": (POD + "  hostAliases: [{ip: 10.0.0.1, hostnames: [db]}]\n",
                  "field Pod.spec.hostAliases is not implemented: "),
    "unknown field": (POD.replace("image: i,", "image: i, colour: blue,"),
                      "field Pod.spec.containers[0].colour is not implemented"),
    "sctp": (POD.replace("containerPort: 80", "containerPort: 80, protocol: SCTP"),
             "protocol 'SCTP' is not implemented"),
    "api version": (POD.replace("apiVersion: v1", "apiVersion: v2"), "must have apiVersion v1"),
    "namespace": (POD.replace("{name: p}", "{name: p, namespace: nope}"),
                  "namespace 'nope' is not defined"),
    "name": (POD.replace("{name: p}", "{name: P_1}"), "is not a valid name"),
    "selector": ("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: d}
        spec:
          selector: {matchLabels: {app: a}}
          template: {metadata: {labels: {app: b}}, spec: {containers: [{name: c}]}}
        """, "spec.selector must be non-empty and match the template's labels"),
    "service type": ("""
        apiVersion: v1
        kind: Service
        metadata: {name: s}
        spec: {type: ExternalName, ports: [{port: 80}]}
        """, "spec.type 'ExternalName' is not implemented"),
    "cluster ip": ("""
        apiVersion: v1
        kind: Service
        metadata: {name: s}
        spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}
        """, "not in the service CIDR"),
    "node port twice": ("""
        apiVersion: v1
        kind: Service
        metadata: {name: s}
        spec: {type: NodePort, ports: [{name: a, port: 80, nodePort: 30001},
                                       {name: b, port: 81, nodePort: 30001}]}
        """, "nodePort 30001 is already allocated"),
    "policy api": ("apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: n}\n",
                   "must have apiVersion networking.k8s.io/v1"),
    "yaml": ("kind: [", "not valid YAML"),
}


_SERVICE = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  type: LoadBalancer\n"
BAD.update({f"load balancer: {case}": ((_SERVICE.replace("  type: LoadBalancer\n", "")
                                        if extra.startswith("type:") else _SERVICE)
                                       + f"  {extra}\n  ports: [{{port: 80}}]\n", message)
            for case, (extra, message) in {
    "dual stack": ("clusterIPs: [10.96.0.50, 'fd00::1']", "dual-stack is not implemented"),
    "policy on ClusterIP": ("type: ClusterIP\n  externalTrafficPolicy: Local",
                            "spec.externalTrafficPolicy does not apply to type ClusterIP"),
    "source ranges": ("loadBalancerSourceRanges: [10.0.0.0/8]",
                      "field Service.spec.loadBalancerSourceRanges is not implemented"),
    "require dual stack": ("ipFamilyPolicy: RequireDualStack",
                           "field Service.spec.ipFamilyPolicy is not implemented"),
    "headless lb": ("clusterIP: None", "a LoadBalancer Service cannot be headless"),
}.items()})
BAD.update({f"readiness probe: {case}": (POD.replace(
    "containerPort: 80}]", f"containerPort: 80}}], readinessProbe: {probe}"), message)
    for case, (probe, message) in {
    "two handlers": ("{tcpSocket: {port: 80}, exec: {command: [true]}}", "exactly one of"),
    "unknown name": ("{tcpSocket: {port: web}}", "'web' names no port of the container"),
    "https": ("{httpGet: {port: 80, scheme: HTTPS}}", "httpGet.scheme is not implemented"),
    "period": ("{exec: {command: [true]}, periodSeconds: 0}", "periodSeconds 0 must be"),
}.items()})


@pytest.mark.parametrize("case", list(BAD))
def test_bad_manifests_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    text, message = BAD[case]
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load(tmp_path, text)


def test_node_name_must_be_a_node_before_anything_is_built(tmp_path: Path) -> None:
    w = load(tmp_path, POD.replace("containers:", "nodeName: n9\n  containers:"))
    with pytest.raises(SpecError, match="nodeName 'n9' is not a node"):
        Cluster(ClusterSpec(cni="flannel-vxlan", nodes=2, workload=w))


def test_the_busiest_node_must_hold_its_pods_before_anything_is_built(tmp_path: Path) -> None:
    deployment = """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: d}
        spec:
          replicas: 300
          selector: {matchLabels: {app: a}}
          template:
            metadata: {labels: {app: a}}
            spec: {nodeName: n1, containers: [{name: c}]}
        """
    w = load(tmp_path, deployment)
    with pytest.raises(SpecError, match="300 pods per node do not fit"):
        Cluster(ClusterSpec(cni="flannel-vxlan", nodes=2, pods_per_node=0, workload=w))


@pytest.mark.requires_root
@pytest.mark.parametrize("case", ["kind", "pod field", "node port twice"])
def test_cli_exits_2_with_one_line_and_creates_nothing(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(BAD[case][0]))
    for command in (["probe", "--cni", "flannel-vxlan"], ["up", "--cni", "flannel-vxlan"]):
        before = run_dirs()
        p = subprocess.Popen([sys.executable, "-m", "k8stopo", *command, "--manifests", str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2, err
        assert len(err.strip().splitlines()) == 1 and "bad.yaml" in err
        # other runs may share the state root: none of the new ones may be this command's
        # (this one has exited, so a manifest of its own would be complete by now)
        for new in run_dirs() - before:
            try:
                text = (runstate.STATE_ROOT / new / "manifest.json").read_text()
                owner = json.loads(text)["owner"]
            except (OSError, ValueError):
                continue  # another run, still being written
            assert owner["pid"] != p.pid


@pytest.mark.requires_root
def test_cli_refuses_an_unknown_proxy_mode(tmp_path: Path) -> None:
    res = k8stopo("probe", "--cni", "flannel-vxlan", "--manifests", str(DATA / "services.yaml"),
                  "--proxy-mode", "ipvs")
    assert res.returncode == 2 and "unknown --proxy-mode 'ipvs'" in res.stderr


def test_a_directory_of_multi_document_files_is_one_workload(tmp_path: Path) -> None:
    (tmp_path / "1-ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    (tmp_path / "2-pods.yml").write_text(POD.replace("{name: p}", "{name: p, namespace: x}")
                                         + "---\n" + POD.replace("{name: p}", "{name: q}"))
    (tmp_path / "notes.txt").write_text("not a manifest")
    w = manifests.load(tmp_path)
    assert [(p.namespace, p.name) for p in w.pods] == [("x", "p"), ("default", "q")]


CONTROLLERS = """
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web-peers
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      hostname: ignored-by-the-controller
      containers:
      - name: c
        ports: [{containerPort: 6379, name: redis}]
        readinessProbe: {tcpSocket: {port: redis}, periodSeconds: 5}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchExpressions: [{key: app, operator: In, values: [agent, probe]}]}
  template:
    metadata: {labels: {app: agent}}
    spec:
      hostNetwork: true
      containers: [{name: c, ports: [{containerPort: 9100, name: metrics}]}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs}
spec:
  replicas: 2
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec:
      dnsPolicy: Default
      containers:
      - name: c
        ports: [{containerPort: 80, hostPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, initialDelaySeconds: 2}
      initContainers:
      - {name: mesh, restartPolicy: Always, ports: [{containerPort: 15090, name: mesh}]}
      - {name: setup, ports: [{containerPort: 7, name: gone}]}
"""


def test_controllers_make_their_pods_as_theirs_do(tmp_path: Path) -> None:
    w = manifests.load(_write(tmp_path, CONTROLLERS), nodes=2)
    pods = {p.name: p for p in w.pods}
    assert list(pods) == ["web-0", "web-1", "web-2", "agent-n1", "agent-n2", "rs-0", "rs-1"]
    web = pods["web-1"]
    assert (web.hostname, web.subdomain, web.owner) == ("web-1", "web-peers", "StatefulSet/web")
    assert web.readiness == Probe("tcpSocket", 6379, period_s=5)  # the name resolved
    agent = pods["agent-n2"]
    assert (agent.node_name, agent.host_network, agent.owner) == ("n2", True, "DaemonSet/agent")
    assert agent.ports[0].host_port == 9100  # the API defaults hostPort with hostNetwork
    assert agent.dns_policy == "ClusterFirst"  # as given (absent): apprun interprets
    rs = pods["rs-0"]
    assert rs.dns_policy == "Default" and rs.owner == "ReplicaSet/rs"
    assert rs.readiness == Probe("httpGet", 80, "/healthz", initial_delay_s=2)
    # the sidecar's port is served; a finished init container's is not
    assert [(p.name, p.host_port) for p in rs.ports] == [("http", 8080), ("mesh", None)]
    with pytest.raises(SpecError, match="a DaemonSet needs the node count"):
        manifests.load(_write(tmp_path, CONTROLLERS))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_statefulset_ordinals_and_pod_hostname_and_subdomain(tmp_path: Path) -> None:
    w = load(tmp_path, CONTROLLERS.split("---")[0].replace("serviceName: web-peers",
                                                           "ordinals: {start: 5}")
             + "---\n" + POD.replace("containers:", "hostname: db\n  subdomain: dbs\n  containers:"))
    assert [p.name for p in w.pods] == ["web-5", "web-6", "web-7", "p"]
    assert w.pods[0].subdomain is None and (w.pods[3].hostname, w.pods[3].subdomain) == ("db", "dbs")


def test_load_balancer_builds_on_node_port(tmp_path: Path) -> None:
    w = load(tmp_path, """
        apiVersion: v1
        kind: Service
        metadata: {name: front}
        spec:
          type: LoadBalancer
          loadBalancerIP: 192.168.1.240
          externalTrafficPolicy: Local
          ipFamilyPolicy: PreferDualStack
          ipFamilies: [IPv4]
          ports: [{name: http, port: 80, targetPort: http}, {name: https, port: 443}]
        status: {loadBalancer: {ingress: [{ip: 1.2.3.4}]}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: bare}
        spec:
          type: LoadBalancer
          allocateLoadBalancerNodePorts: false
          clusterIPs: [10.96.0.50]
          publishNotReadyAddresses: true
          ports: [{name: a, port: 80}, {name: b, port: 81, nodePort: 31000}]
        """)
    front, bare = w.services
    assert front.type == "LoadBalancer" and [p.node_port for p in front.ports] == [30000, 30001]
    assert front.load_balancer_ip == ipaddress.IPv4Address("192.168.1.240")
    assert front.external_traffic_policy == "Local" and w.ignored == ("Service default/front status",)
    assert bare.cluster_ip == ipaddress.IPv4Address("10.96.0.50") and bare.publish_not_ready
    assert [p.node_port for p in bare.ports] == [None, 31000]  # given ones are respected


def test_ignored_fields_are_counted_once_and_listed_with_v(tmp_path: Path, caplog,
                                                         capsys) -> None:
    import argparse
    import logging

    from k8stopo import cli
    text = (CONTROLLERS + textwrap.dedent("""
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: web}
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: agent}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: settings}
        """)).replace("- name: c\n", "- name: c\n        env: [{name: A, value: b}]\n", 1)
    args = argparse.Namespace(manifests=_write(tmp_path, text), nodes=2, strict=False,
                              proxy_mode="iptables")
    with caplog.at_level(logging.INFO, logger="k8stopo.manifests"):
        w = cli._workload(args, args.nodes)
    assert w is not None and "StatefulSet default/web spec.template.spec.containers[].env" \
        in w.ignored
    assert capsys.readouterr().err == ("k8stopo: accepted 2 ServiceAccounts, 1 ConfigMap and "
                                       "1 field that do not change the network (-v lists "
                                       "them)\n")
    assert any("ignored Container.env ×1: 'list of environment variables" in r.message
               for r in caplog.records)


def test_stdin_is_read_once_and_named_in_errors(tmp_path: Path) -> None:
    good = (DATA / "services.yaml").read_text()
    res = subprocess.run([sys.executable, "-m", "k8stopo", "probe", "--cni", "flannel-vxlan",
                          "--manifests", "-"], input=good + "---\n" + BAD["name"][0],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2
    bad = len(good.split("\n---\n")) + 1  # the first after the good ones
    assert res.stderr.startswith(f"k8stopo: error: <stdin>: document {bad}: Pod name 'P_1'")
    assert len(res.stderr.strip().splitlines()) == 1


def test_documents_from_stdin(monkeypatch) -> None:
    import io
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(POD.encode())))
    assert [p.name for p in manifests.load("-").pods] == ["p"]
