"""The emulated / ignored / refused table (k8stopo.apifields), one test per row: an ignored
kind or field loads and is reported (and --strict refuses it by name), a refused one is
refused by name unless given a value that means its absence; docs/services.md shows it."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8stopo import apifields, manifests
from k8stopo.spec import SpecError

REPO = Path(__file__).resolve().parent.parent

POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "c", "ports": [
        {"containerPort": 8080, "name": "http"}],
        "readinessProbe": {"tcpSocket": {"port": 8080}}}],
        "initContainers": [{"name": "init"}]}}
_TEMPLATE = {"metadata": {"labels": {"app": "a"}}, "spec": copy.deepcopy(POD["spec"])}


def _controller(kind: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                     "template": copy.deepcopy(_TEMPLATE), **spec}}


def _probe_pod(handler: str, action: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(POD)
    doc["spec"]["containers"][0]["readinessProbe"] = {handler: action}
    return doc


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"type": "LoadBalancer", "selector": {"app": "a"},
                    "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
CONTAINER = ["spec", "containers", 0]
PROBE = [*CONTAINER, "readinessProbe"]

# where a field of each API type sits: (a valid document, the path to the mapping)
PLACES: dict[str, tuple[dict[str, Any], list[Any]]] = {
    "ObjectMeta": (POD, ["metadata"]),
    "NamespaceSpec": ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"},
                       "spec": {}}, ["spec"]),
    "PodTemplateSpec": (_controller("Deployment"), ["spec", "template"]),
    "PodSpec": (POD, ["spec"]),
    "PodSecurityContext": (POD, ["spec", "securityContext"]),
    "Container": (POD, CONTAINER),
    "InitContainer": (POD, ["spec", "initContainers", 0]),
    "ContainerPort": (POD, [*CONTAINER, "ports", 0]),
    "Probe": (POD, PROBE),
    "TCPSocketAction": (POD, [*PROBE, "tcpSocket"]),
    "HTTPGetAction": (_probe_pod("httpGet", {"port": "http"}), [*PROBE, "httpGet"]),
    "GRPCAction": (_probe_pod("grpc", {"port": 8080}), [*PROBE, "grpc"]),
    "LabelSelector": (_controller("Deployment"), ["spec", "selector"]),
    "DeploymentSpec": (_controller("Deployment"), ["spec"]),
    "ReplicaSetSpec": (_controller("ReplicaSet"), ["spec"]),
    "StatefulSetSpec": (_controller("StatefulSet", serviceName="d"), ["spec"]),
    "StatefulSetOrdinals": (_controller("StatefulSet", ordinals={}), ["spec", "ordinals"]),
    "DaemonSetSpec": (_controller("DaemonSet"), ["spec"]),
    "ServiceSpec": (SERVICE, ["spec"]),
    "ServicePort": (SERVICE, ["spec", "ports", 0]),
    "SessionAffinityConfig": (SERVICE, ["spec", "sessionAffinityConfig"]),
    "ClientIPConfig": (SERVICE, ["spec", "sessionAffinityConfig", "clientIP"]),
}
# a value of the API's type where a reader still checks an ignored field's shape
SAMPLES: dict[str, Any] = {"image": "busybox", "command": ["sleep"], "args": ["1"],
                           "annotations": {"a": "b"}}


def _with(type_name: str, field: str, value: Any) -> dict[str, Any]:
    doc, path = PLACES[type_name]
    doc = copy.deepcopy(doc)
    here = doc
    for step in path:
        here = here.setdefault(step, {}) if isinstance(step, str) else here[step]
    here[field] = value
    return doc


def _load(tmp_path: Path, doc: dict[str, Any], strict: bool = False):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    return manifests.load(path, nodes=2, strict=strict)


def _rows(verdict: str) -> list[tuple[str, str]]:
    return [(t, f) for t, fields in apifields.TYPES.items() for f, rule in fields.items()
            if rule.verdict == verdict]


def test_every_type_has_a_place_and_every_place_loads(tmp_path: Path) -> None:
    assert set(PLACES) == set(apifields.TYPES)
    for doc, _ in PLACES.values():
        _load(tmp_path, doc)


def test_every_reason_is_given_and_every_walked_type_exists() -> None:
    for fields in apifields.TYPES.values():
        for rule in fields.values():
            assert rule.reason and rule.verdict in (apifields.EMULATED, apifields.IGNORED,
                                                    apifields.REFUSED)
            assert rule.type is None or rule.type in apifields.TYPES
            assert not rule.unless or rule.verdict == apifields.REFUSED
    for kind in apifields.KINDS.values():
        assert kind.reason and (kind.spec is None or kind.spec in apifields.TYPES)


@pytest.mark.parametrize("type_name,field", _rows(apifields.IGNORED),
                         ids=lambda v: v)
def test_an_ignored_field_loads_and_is_reported(tmp_path: Path, type_name: str,
                                                field: str) -> None:
    name = "metadata" if field == "*" else field  # any other field of the type
    name = "fsGroup" if (type_name, field) == ("PodSecurityContext", "*") else name
    doc = _with(type_name, name, SAMPLES.get(name, "x"))
    w = _load(tmp_path, doc)
    assert any(entry.endswith(f".{name}") for entry in w.ignored), w.ignored
    assert "that do not change the network" in (manifests.summary(w) or "")
    with pytest.raises(SpecError, match=rf"\.{name} has no effect on the network.*--strict"):
        _load(tmp_path, doc, strict=True)


@pytest.mark.parametrize("type_name,field", _rows(apifields.REFUSED), ids=lambda v: v)
def test_a_refused_field_is_refused_by_name(tmp_path: Path, type_name: str, field: str) -> None:
    rule = apifields.TYPES[type_name][field]
    with pytest.raises(SpecError, match=rf"field [\w.\[\]]*\.{field} is not implemented: ") as err:
        _load(tmp_path, _with(type_name, field, "x"))
    assert "\n" not in str(err.value)
    for value in rule.unless:  # what means the field's absence is accepted
        assert not _load(tmp_path, _with(type_name, field, value), strict=True).ignored


@pytest.mark.parametrize("kind", [k for k, d in apifields.KINDS.items()
                                  if d.verdict == apifields.IGNORED])
def test_an_ignored_kind_loads_and_is_reported(tmp_path: Path, kind: str) -> None:
    decided = apifields.KINDS[kind]
    other = {"apiVersion": decided.api_versions[0], "kind": kind,
             "metadata": {"name": "system:thing", "namespace": "default"}, "anything": [1]}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all([POD, other]))
    w = manifests.load(path)
    assert w.ignored == (f"{kind} default/system:thing",)
    assert manifests.summary(w).startswith(f"accepted 1 {kind} that")  # type: ignore[union-attr]
    with pytest.raises(SpecError, match=f"kind '{kind}' has no effect on the network"):
        manifests.load(path, strict=True)


@pytest.mark.parametrize("kind", [k for k, d in apifields.KINDS.items()
                                  if d.verdict == apifields.REFUSED])
def test_a_refused_kind_is_refused_by_name(tmp_path: Path, kind: str) -> None:
    doc = {"apiVersion": apifields.KINDS[kind].api_versions[0], "kind": kind,
           "metadata": {"name": "n"}}
    with pytest.raises(SpecError, match=f"kind '{kind}' is not implemented: "):
        _load(tmp_path, doc)


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="kind 'Gateway' is not implemented \\(implemented: "):
        _load(tmp_path, {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                         "metadata": {"name": "g"}})


def test_status_is_ignored_on_every_kind(tmp_path: Path) -> None:
    w = _load(tmp_path, {**POD, "status": {"phase": "Running", "podIP": "10.1.1.1"}})
    assert w.ignored == ("Pod default/p status",)


def test_the_doc_shows_the_table() -> None:
    assert apifields.markdown() in (REPO / "docs" / "services.md").read_text()
