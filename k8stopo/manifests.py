"""Kubernetes manifests in, a checked :class:`~k8stopo.workload.Workload` out.

Users' own YAML must work as it is, and anything this version does not implement
must be refused rather than silently ignored (an ignored policy field is a
security hole). So every document is walked against an explicit allow-list of
the fields we serve; the first field or kind outside it is a :class:`SpecError`
naming the file, the document and the field, before anything is built.

Allocation follows the API server: a Service without ``clusterIP`` gets one from
the service CIDR (10.96.0.1 is the ``kubernetes`` Service's and 10.96.0.10 the
cluster DNS's, so both are never handed out), a NodePort one from
30000-32767, both in document order so a run is reproducible.
"""
from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import apinames, yamlfile
from .spec import SpecError
from .workload import ContainerPort, PodSpec, ServicePort, ServiceSpec, Workload

SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
RESERVED_IPS = (SERVICE_CIDR[1], SERVICE_CIDR[10])  # kubernetes.default, kube-dns
NODE_PORT_RANGE = range(30000, 32768)
DEFAULT_AFFINITY_TIMEOUT = 10800  # the API's default for sessionAffinityConfig
NAMESPACE_LABEL = "kubernetes.io/metadata.name"

# The allow-list: kind -> apiVersion, and per path the fields we implement.
# ``None`` marks a leaf whose value is checked by the reader itself; ``[x]`` a list of x.
_META = {"name": None, "namespace": None, "labels": None, "annotations": None}
_CONTAINER = {"name": None, "image": None, "command": [None], "args": [None],
              "ports": [{"containerPort": None, "protocol": None, "name": None}]}
_POD_SPEC = {"nodeName": None, "containers": [_CONTAINER]}
FIELDS: dict[str, tuple[str, dict[str, Any]]] = {
    "Namespace": ("v1", {"metadata": _META}),
    "Pod": ("v1", {"metadata": _META, "spec": _POD_SPEC}),
    "Deployment": ("apps/v1", {"metadata": _META, "spec": {
        "replicas": None, "selector": {"matchLabels": None},
        "template": {"metadata": _META, "spec": _POD_SPEC}}}),
    "Service": ("v1", {"metadata": _META, "spec": {
        "type": None, "clusterIP": None, "selector": None, "sessionAffinity": None,
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": None}},
        "ports": [{"name": None, "port": None, "targetPort": None, "protocol": None,
                   "nodePort": None}]}}),
    # Kept whole for k8stopo.policy, which walks its fields itself.
    "NetworkPolicy": ("networking.k8s.io/v1", {"metadata": _META, "spec": None}),
}


def _field(key: Any) -> str:
    """A key as a message shows it: quoted unless a plain field name (one line always)."""
    return key if isinstance(key, str) and re.fullmatch(r"[A-Za-z]\w*", key) else repr(key)


def _walk(value: Any, allowed: dict[str, Any] | list[Any] | None, where: str) -> None:
    """Refuse the first field not in ``allowed``, and a list or a mapping in the other's
    place (null is an absent field, as in the API)."""
    if allowed is None or value is None:
        return
    if isinstance(allowed, list):
        if not isinstance(value, list):
            raise SpecError(f"{where} must be a list, not {type(value).__name__}")
        for i, item in enumerate(value):
            if item is None and allowed[0] is not None:
                raise SpecError(f"{where}[{i}] is null")
            _walk(item, allowed[0], f"{where}[{i}]")
        return
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be a mapping, not {type(value).__name__}")
    for key, sub in value.items():
        if key not in allowed:
            raise SpecError(f"field {where}.{_field(key)} is not implemented in this version")
        _walk(sub, allowed[key], f"{where}.{key}")


def _name(value: Any, what: str) -> str:
    if not apinames.dns_label(value):
        raise SpecError(f"{what} {value!r} is not a valid name "
                        "(lowercase letters, digits and '-', at most 63)")
    return value


def _port_name(value: Any, what: str) -> str:
    if not apinames.port_name(value):
        raise SpecError(f"{what} {value!r} is not a valid port name (at most 15 lowercase "
                        "letters, digits and single '-', with a letter)")
    return value


def _labels(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{what} must be a mapping of strings")
    for key, val in value.items():
        if not apinames.label_key(key):
            raise SpecError(f"{what}: {key!r} is not a valid label key")
        if not apinames.label_value(val):
            raise SpecError(f"{what}: value {val!r} of {key} is not a valid label value "
                            "(quote numbers and booleans in YAML)")
    return dict(value)


def _annotations(value: Any) -> None:
    """Kept for nobody, but still the API's shape: qualified keys, string values."""
    if value is None:
        return
    if not isinstance(value, dict) or not all(
            apinames.label_key(k) and isinstance(v, str) for k, v in value.items()):
        raise SpecError(f"metadata.annotations {value!r} must map qualified names to strings")


def _port(value: Any, what: str, ports: Iterable[int] = range(1, 65536)) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in ports:
        raise SpecError(f"{what} {value!r} is not a port number")
    return value


def _protocol(value: Any, what: str) -> str:
    value = "TCP" if value is None else value
    if value not in ("TCP", "UDP"):
        raise SpecError(f"{what} {value!r} is not implemented (TCP or UDP)")
    return value


def _containers(containers: list[Any]) -> None:
    """Each container named once; an image, command and args, though never run, of the
    API's types."""
    names = [_name(c.get("name"), "container name") for c in containers]
    if len(set(names)) != len(names):
        raise SpecError(f"container name {max(names, key=names.count)!r} is used twice")
    for c in containers:
        image = c.get("image")
        if image is not None and (not isinstance(image, str) or not image.strip()):
            raise SpecError(f"container {c['name']}: image {image!r} is not an image name")
        for field in ("command", "args"):
            if not all(isinstance(a, str) for a in c.get(field) or []):
                raise SpecError(f"container {c['name']}: {field} must be a list of strings")


# -- reading -----------------------------------------------------------------------

def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir()
                       if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
        if not found:
            raise SpecError(f"no .yaml, .yml or .json file in {path}")
        return found
    if not path.is_file():
        raise SpecError(f"no such manifest file or directory: {path}")
    return [path]


def documents(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, document) for every non-empty document under ``path``."""
    for file in _files(path):
        for i, doc in enumerate(yamlfile.documents(file, "manifest")):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise SpecError(f"{file} document {i + 1}: not a Kubernetes object")
            yield f"{file} document {i + 1}", doc


def _check_shape(where: str, doc: dict[str, Any]) -> tuple[str, str, str]:
    """kind, name and namespace of one document whose fields are all allowed."""
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise SpecError(f"{where}: kind {kind!r} is not implemented "
                        f"(implemented: {', '.join(FIELDS)})")
    api, fields = FIELDS[kind]
    if doc.get("apiVersion") != api:
        raise SpecError(f"{where}: {kind} must have apiVersion {api}, "
                        f"not {doc.get('apiVersion')!r}")
    extra = set(doc) - {"apiVersion", "kind", *fields}
    if extra:
        first = sorted(extra, key=repr)[0]
        raise SpecError(f"{where}: field {_field(first)} is not implemented in this version")
    try:
        _walk({k: v for k, v in doc.items() if k in fields}, fields, kind)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    meta = doc.get("metadata") or {}
    name = _name(meta.get("name"), f"{where}: {kind} name")
    try:  # every kind's, though only Namespaces' and Pods' labels are selected
        _labels(meta.get("labels"), "labels")
        _annotations(meta.get("annotations"))
    except SpecError as exc:
        raise SpecError(f"{where}: {kind} {name}: {exc}") from None
    if kind == "Namespace":
        if "namespace" in meta:
            raise SpecError(f"{where}: a Namespace has no namespace")
        return kind, name, ""
    return kind, name, _name(meta.get("namespace", "default"), f"{where}: namespace")


class _Reader:
    """Turns checked documents into the workload, allocating as the API server does."""

    def __init__(self) -> None:
        self.namespaces: dict[str, dict[str, str]] = {"default": {NAMESPACE_LABEL: "default"}}
        self.pods: list[PodSpec] = []
        self.services: list[tuple[str, dict[str, Any], str, str]] = []
        self.policies: list[dict[str, Any]] = []
        self.seen: set[tuple[str, str, str]] = set()

    def add(self, where: str, doc: dict[str, Any]) -> None:
        kind, name, namespace = _check_shape(where, doc)
        key = ("Pod" if kind == "Deployment" else kind, namespace, name)
        if key in self.seen:
            raise SpecError(f"{where}: {kind} {namespace + '/' if namespace else ''}{name} "
                            "is defined twice")
        self.seen.add(key)
        meta = doc["metadata"]
        try:
            if kind == "Namespace":
                labels = _labels(meta.get("labels"), "labels")
                self.namespaces[name] = {**labels, NAMESPACE_LABEL: name}
            elif kind == "Pod":
                self.pods.append(self._pod(name, namespace, meta, doc.get("spec") or {}))
            elif kind == "Deployment":
                self.pods += self._deployment(name, namespace, doc.get("spec") or {})
            elif kind == "Service":
                self.services.append((where, doc.get("spec") or {}, name, namespace))
            else:
                self.policies.append(self._policy(doc, namespace))
        except SpecError as exc:
            raise SpecError(f"{where}: {kind} {name}: {exc}") from None

    @staticmethod
    def _pod(name: str, namespace: str, meta: dict[str, Any], spec: dict[str, Any]) -> PodSpec:
        containers = spec.get("containers")
        if not isinstance(containers, list) or not containers:
            raise SpecError("spec.containers must list at least one container")
        ports: list[ContainerPort] = []
        _containers(containers)
        for c in containers:
            for p in c.get("ports") or []:
                port = ContainerPort(
                    _port(p.get("containerPort"), "containerPort"),
                    _protocol(p.get("protocol"), "protocol"),
                    _port_name(p["name"], "port name") if p.get("name") is not None else None)
                if any((q.container_port, q.protocol) == (port.container_port, port.protocol)
                       or (port.name and q.name == port.name) for q in ports):
                    raise SpecError(f"container port {port.name or port.container_port} "
                                    "is declared twice")
                ports.append(port)
        node = spec.get("nodeName")
        if node is not None and not isinstance(node, str):
            raise SpecError(f"spec.nodeName {node!r} is not a node name")
        return PodSpec(name=name, namespace=namespace, labels=_labels(meta.get("labels"), "labels"),
                       node_name=node, ports=tuple(ports))

    def _deployment(self, name: str, namespace: str, spec: dict[str, Any]) -> list[PodSpec]:
        replicas = spec.get("replicas", 1)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 1000:
            raise SpecError(f"spec.replicas {replicas!r} must be 0 to 1000")
        selector = _labels((spec.get("selector") or {}).get("matchLabels"), "selector")
        template = spec.get("template") or {}
        tmeta = template.get("metadata") or {}
        _annotations(tmeta.get("annotations"))
        labels = _labels(tmeta.get("labels"), "template labels")
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            raise SpecError("spec.selector.matchLabels must be non-empty and match the "
                            "template's labels")
        pod = self._pod(name, namespace, tmeta, template.get("spec") or {})
        return [PodSpec(name=f"{name}-{i}", namespace=namespace, labels=pod.labels,
                        node_name=pod.node_name, ports=pod.ports) for i in range(replicas)]

    @staticmethod
    def _policy(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
        policy = copy.deepcopy(doc)
        policy["metadata"].setdefault("namespace", namespace)
        return policy

    def workload(self) -> Workload:
        names = [(p.namespace, p.name) for p in self.pods]
        for ns, name in names:
            if names.count((ns, name)) > 1:
                raise SpecError(f"pod {ns}/{name} is defined twice (a Pod and a Deployment's "
                                "replica share the name)")
        for pod in self.pods:
            if pod.namespace not in self.namespaces:
                raise SpecError(f"pod {pod.namespace}/{pod.name}: namespace {pod.namespace!r} "
                                "is not defined (add a Namespace document)")
        services = _Allocator(self.services, self.namespaces).services()
        for policy in self.policies:
            ns = policy["metadata"]["namespace"]
            if ns not in self.namespaces:
                raise SpecError(f"NetworkPolicy {ns}/{policy['metadata']['name']}: namespace "
                                f"{ns!r} is not defined (add a Namespace document)")
        from .policy.model import parse_all
        parse_all(self.policies)  # every field of every policy checked, enforced or not
        return Workload(namespaces=self.namespaces, pods=tuple(self.pods),
                        services=tuple(services), network_policies=tuple(self.policies))


class _Allocator:
    """ClusterIPs and NodePorts: given ones first (they must be free), then the rest in order."""

    def __init__(self, services: list[tuple[str, dict[str, Any], str, str]],
                 namespaces: dict[str, dict[str, str]]) -> None:
        self.docs = services
        self.namespaces = namespaces
        self.ips: set[ipaddress.IPv4Address] = set(RESERVED_IPS)
        self.node_ports: set[tuple[int, str]] = set()  # TCP and UDP may share a number

    def services(self) -> list[ServiceSpec]:
        for where, spec, name, _ns in self.docs:  # reserve what is given, first
            try:
                ip = spec.get("clusterIP")
                if ip not in (None, "None", ""):
                    self._claim_ip(ip)
                for p in spec.get("ports") or []:
                    if p.get("nodePort") is not None:
                        self._claim_node_port(p["nodePort"], _protocol(p.get("protocol"),
                                                                       "protocol"))
            except SpecError as exc:
                raise SpecError(f"{where}: Service {name}: {exc}") from None
        out = []
        for where, spec, name, namespace in self.docs:
            try:
                out.append(self._service(spec, name, namespace))
            except SpecError as exc:
                raise SpecError(f"{where}: Service {name}: {exc}") from None
        return out

    def _claim_ip(self, value: Any) -> None:
        if not isinstance(value, str):  # ipaddress would take an int as an address
            raise SpecError(f"spec.clusterIP {value!r} is not an IPv4 address")
        try:
            ip = ipaddress.IPv4Address(value)
        except ValueError:
            raise SpecError(f"spec.clusterIP {value!r} is not an IPv4 address") from None
        if ip not in SERVICE_CIDR or ip in (SERVICE_CIDR.network_address,
                                            SERVICE_CIDR.broadcast_address):
            raise SpecError(f"spec.clusterIP {ip} is not in the service CIDR {SERVICE_CIDR}")
        if ip in self.ips:
            raise SpecError(f"spec.clusterIP {ip} is already allocated")
        self.ips.add(ip)

    def _claim_node_port(self, value: Any, protocol: str) -> None:
        port = _port(value, "nodePort", NODE_PORT_RANGE)
        if (port, protocol) in self.node_ports:
            raise SpecError(f"nodePort {port} is already allocated")
        self.node_ports.add((port, protocol))

    def _next_ip(self) -> ipaddress.IPv4Address:
        for ip in SERVICE_CIDR.hosts():
            if ip not in self.ips:
                self.ips.add(ip)
                return ip
        raise SpecError(f"the service CIDR {SERVICE_CIDR} is full")

    def _next_node_port(self, protocol: str) -> int:
        taken = {port for port, _ in self.node_ports}
        for port in NODE_PORT_RANGE:
            if port not in taken:
                self.node_ports.add((port, protocol))
                return port
        raise SpecError("the NodePort range 30000-32767 is full")

    def _service(self, spec: dict[str, Any], name: str, namespace: str) -> ServiceSpec:
        if namespace not in self.namespaces:
            raise SpecError(f"namespace {namespace!r} is not defined (add a Namespace document)")
        kind = spec.get("type", "ClusterIP")
        if kind not in ("ClusterIP", "NodePort"):
            raise SpecError(f"spec.type {kind!r} is not implemented (ClusterIP or NodePort)")
        raw_ip = spec.get("clusterIP")
        headless = raw_ip == "None"
        if headless and kind == "NodePort":
            raise SpecError("a NodePort Service cannot be headless (clusterIP: None)")
        ip = None if headless else (ipaddress.IPv4Address(raw_ip) if raw_ip else self._next_ip())
        affinity = spec.get("sessionAffinity", "None")
        if affinity not in ("None", "ClientIP"):
            raise SpecError(f"spec.sessionAffinity {affinity!r} must be None or ClientIP")
        timeout = None
        if affinity == "ClientIP":
            timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
                "timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
            if isinstance(timeout, bool) or not isinstance(timeout, int) \
                    or not 0 < timeout <= 86400:
                raise SpecError(f"timeoutSeconds {timeout!r} must be 1 to 86400")
        elif "sessionAffinityConfig" in spec:
            raise SpecError("sessionAffinityConfig needs sessionAffinity: ClientIP")
        raw_ports = spec.get("ports") or []
        if not raw_ports and not headless:
            raise SpecError("spec.ports must list at least one port")
        ports = [self._port(p, kind, len(raw_ports)) for p in raw_ports]
        names = [p.name for p in ports]
        if len(set(names)) != len(names) or len({(p.port, p.protocol) for p in ports}) != len(ports):
            raise SpecError("two ports share a name or a port and protocol")
        return ServiceSpec(name=name, namespace=namespace, type=kind, cluster_ip=ip,
                           selector=_labels(spec.get("selector"), "spec.selector"),
                           ports=tuple(ports), session_affinity_timeout=timeout)

    def _port(self, p: dict[str, Any], kind: str, count: int) -> ServicePort:
        port = _port(p.get("port"), "port")
        name = p.get("name")
        if name is None and count > 1:
            raise SpecError("every port needs a name when a Service has several")
        if name is not None:
            _port_name(name, "port name")
        target = p.get("targetPort", port)
        if isinstance(target, str):
            _port_name(target, "targetPort")
        else:
            _port(target, "targetPort")
        node_port = p.get("nodePort")
        if node_port is not None and kind != "NodePort":
            raise SpecError("nodePort is only allowed with type: NodePort")
        protocol = _protocol(p.get("protocol"), "protocol")
        if kind == "NodePort" and node_port is None:
            node_port = self._next_node_port(protocol)
        return ServicePort(port=port, target_port=target, protocol=protocol, name=name,
                           node_port=node_port)


def load(path: Path | str) -> Workload:
    """Read a YAML file or a directory of them into a checked workload (SpecError otherwise)."""
    reader = _Reader()
    for where, doc in documents(Path(path)):
        reader.add(where, doc)
    if not reader.seen:
        raise SpecError(f"{path}: no Kubernetes object in it (Namespace, Pod, Deployment, "
                        "Service or NetworkPolicy)")
    return reader.workload()
