"""Kubernetes manifests in, a checked :class:`~k8stopo.workload.Workload` out.

Users' own YAML must work as it is shipped, and nothing that changes the network may be
silently dropped (an ignored policy field is a security hole). So every document is walked
against :mod:`k8stopo.apifields`, the table of what is emulated, ignored (no effect on
reachability or addressing: accepted and reported, refused under ``strict``) or refused;
a refused or unknown kind or field is a :class:`SpecError` naming the file, the document
and the field, before anything is built.

Controllers are expanded as theirs expand: Deployments and ReplicaSets into
``<name>-0…``, StatefulSets into ``<name>-<ordinal>`` with hostname and subdomain,
DaemonSets into one pod per node. Allocation follows the API server: a Service without
``clusterIP`` gets one from the service CIDR (10.96.0.1 is the ``kubernetes`` Service's and
10.96.0.10 the cluster DNS's, so both are never handed out), NodePort and LoadBalancer
ones NodePorts from 30000-32767, both in document order so a run is reproducible.
"""
from __future__ import annotations

import copy
import ipaddress
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import apifields, apinames, yamlfile
from .apifields import EMULATED, IGNORED, REFUSED
from .spec import SpecError
from .workload import ContainerPort, PodSpec, Probe, ServicePort, ServiceSpec, Workload

log = logging.getLogger(__name__)

SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
RESERVED_IPS = (SERVICE_CIDR[1], SERVICE_CIDR[10])  # kubernetes.default, kube-dns
NODE_PORT_RANGE = range(30000, 32768)
DEFAULT_AFFINITY_TIMEOUT = 10800  # the API's default for sessionAffinityConfig
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
STDIN = "-"  # --manifests -: the documents on standard input
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default")  # None: needs dnsConfig
PROBE_HANDLERS = ("tcpSocket", "httpGet", "grpc", "exec")
# (field, default, least value) of a Probe, as the API defaults and validates them
PROBE_TIMES = (("initialDelaySeconds", 0, 0), ("periodSeconds", 10, 1), ("timeoutSeconds", 1, 1),
               ("successThreshold", 1, 1), ("failureThreshold", 3, 1))
CONTROLLERS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")  # ExternalName is refused


def _field(key: Any) -> str:
    """A key as a message shows it: quoted unless a plain field name (one line always)."""
    return key if isinstance(key, str) and re.fullmatch(r"[A-Za-z]\w*", key) else repr(key)


def _given(value: Any, values: tuple[Any, ...]) -> bool:
    """``value`` is one of ``values`` (False is not 0, as YAML means them)."""
    return any(type(value) is type(v) and value == v for v in values)


class _Walk:
    """One document's fields against the table: refuses the first refused or unknown
    field, and collects the ignored ones as (document path, API field, reason)."""

    def __init__(self) -> None:
        self.ignored: list[tuple[str, str, str, str]] = []  # path, API field, why, where

    def mapping(self, value: Any, type_name: str, where: str, path: str) -> None:
        if not isinstance(value, dict):
            raise SpecError(f"{where} must be a mapping, not {type(value).__name__}")
        for key, sub in value.items():
            rule = apifields.lookup(type_name, key) if isinstance(key, str) else None
            here = f"{where}.{_field(key)}"
            if rule is None:
                raise SpecError(f"field {here} is not implemented in this version")
            if sub is None:
                continue  # null is an absent field, as in the API
            if rule.verdict == REFUSED and not _given(sub, rule.unless):
                raise SpecError(f"field {here} is not implemented: {rule.reason}")
            if rule.verdict == IGNORED:
                self.ignored.append((f"{path}.{key}", f"{type_name}.{key}", rule.reason,
                                     here))
            elif rule.verdict == EMULATED and rule.type is not None:
                self.value(sub, rule, here, f"{path}.{key}")

    def value(self, value: Any, rule: apifields.Rule, where: str, path: str) -> None:
        assert rule.type is not None
        if not rule.many:
            self.mapping(value, rule.type, where, path)
            return
        if not isinstance(value, list):
            raise SpecError(f"{where} must be a list, not {type(value).__name__}")
        for i, item in enumerate(value):
            if item is None:
                raise SpecError(f"{where}[{i}] is null")
            self.mapping(item, rule.type, f"{where}[{i}]", f"{path}[]")


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


def _int(value: Any, what: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SpecError(f"{what} {value!r} must be a whole number of at least {least}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{what} {value!r} must be true or false")
    return value


def _protocol(value: Any, what: str) -> str:
    value = "TCP" if value is None else value
    if value not in ("TCP", "UDP"):
        raise SpecError(f"{what} {value!r} is not implemented (TCP or UDP)")
    return value


def _ipv4(value: Any, what: str) -> ipaddress.IPv4Address:
    if not isinstance(value, str):  # ipaddress would take an int as an address
        raise SpecError(f"{what} {value!r} is not an IPv4 address")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise SpecError(f"{what} {value!r} is not an IPv4 address") from None


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


def _numbered(name: str, docs: list[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise SpecError(f"{name}: document {i + 1}: not a Kubernetes object")
        yield f"{name}: document {i + 1}", doc


def documents(path: Path | str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, document) for every non-empty document under ``path`` (``-``: standard
    input, read once and whole)."""
    if str(path) == STDIN:
        yield from _numbered("<stdin>", yamlfile.parse(yamlfile.read_stdin(), "<stdin>"))
        return
    for file in _files(Path(path)):
        yield from _numbered(str(file), yamlfile.documents(file, "manifest"))


def _kind(where: str, doc: dict[str, Any]) -> tuple[str, apifields.Kind]:
    """The document's kind, refused unless implemented or ignored, at its apiVersion."""
    kind = doc.get("kind")
    decided = apifields.KINDS.get(kind) if isinstance(kind, str) else None
    if not isinstance(kind, str) or decided is None or decided.verdict == REFUSED:
        why = f": {decided.reason}" if decided else ""
        emulated = ", ".join(k for k, d in apifields.KINDS.items() if d.verdict == EMULATED)
        raise SpecError(f"{where}: kind {kind!r} is not implemented{why} (implemented: "
                        f"{emulated}; docs/services.md lists what is ignored)")
    if doc.get("apiVersion") not in decided.api_versions:
        raise SpecError(f"{where}: {kind} must have apiVersion "
                        f"{' or '.join(decided.api_versions)}, not {doc.get('apiVersion')!r}")
    return kind, decided


def _check_shape(where: str, doc: dict[str, Any], kind: str,
                 decided: apifields.Kind) -> tuple[str, str, list[tuple[str, str, str, str]]]:
    """Name, namespace and ignored fields of one emulated document whose fields are all
    emulated or ignored."""
    walk = _Walk()
    for key, value in doc.items():
        here = f"{kind}.{_field(key)}"
        if key not in ("apiVersion", "kind", "metadata", "spec", "status"):
            raise SpecError(f"field {_field(key)} is not implemented in this version")
        if key in ("apiVersion", "kind") or value is None:
            continue
        if key == "metadata":
            walk.mapping(value, "ObjectMeta", here, "metadata")
        elif key == "spec" and decided.spec is not None:
            walk.mapping(value, decided.spec, here, "spec")
        elif key == "status":
            walk.ignored.append(("status", f"{kind}.status", apifields.STATUS.reason, here))
    meta = doc.get("metadata") or {}
    name = _name(meta.get("name"), f"{kind} name")
    try:  # every kind's, though only Namespaces' and Pods' labels are selected
        _labels(meta.get("labels"), "labels")
        _annotations(meta.get("annotations"))
    except SpecError as exc:
        raise SpecError(f"{kind} {name}: {exc}") from None
    if kind == "Namespace":
        if "namespace" in meta:
            raise SpecError("a Namespace has no namespace")
        return name, "", walk.ignored
    return name, _name(meta.get("namespace", "default"), "namespace"), walk.ignored


def _label_selector(spec: dict[str, Any], labels: dict[str, str]) -> None:
    """A controller's selector: non-empty and matching its template's labels, as the API
    server validates it."""
    from .policy.model import parse_selector
    raw = spec.get("selector")
    selector = parse_selector(raw or {}, "spec.selector")
    if selector.empty or not selector.matches(labels):
        raise SpecError("spec.selector must be non-empty and match the template's labels")


class _Reader:
    """Turns checked documents into the workload, expanding controllers and allocating as
    the API server does."""

    def __init__(self, nodes: int | None, strict: bool) -> None:
        self.nodes = nodes
        self.strict = strict
        self.namespaces: dict[str, dict[str, str]] = {"default": {NAMESPACE_LABEL: "default"}}
        self.pods: list[PodSpec] = []
        self.services: list[tuple[str, dict[str, Any], str, str]] = []
        self.policies: list[dict[str, Any]] = []
        self.seen: set[tuple[str, str, str]] = set()
        self.ignored: list[tuple[str, str, str]] = []  # (Workload.ignored entry, API name, why)

    def add(self, where: str, doc: dict[str, Any]) -> None:
        kind, decided = _kind(where, doc)
        if decided.verdict == IGNORED:
            self._ignore_object(where, kind, decided, doc)
            return
        try:
            name, namespace, ignored = _check_shape(where, doc, kind, decided)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
        key = (kind, namespace, name)
        if key in self.seen:
            raise SpecError(f"{where}: {kind} {namespace + '/' if namespace else ''}{name} "
                            "is defined twice")
        self.seen.add(key)
        ref = f"{kind} {namespace + '/' if namespace else ''}{name}"
        for path, api, reason, at in ignored:
            if self.strict:
                raise SpecError(f"{where}: field {at} has no effect on the network and is "
                                f"not emulated ({api}: {reason}); --strict refuses it")
            self.ignored.append((f"{ref} {path}", api, reason))
        meta = doc["metadata"]
        spec = doc.get("spec") or {}
        try:
            if kind == "Namespace":
                labels = _labels(meta.get("labels"), "labels")
                self.namespaces[name] = {**labels, NAMESPACE_LABEL: name}
            elif kind == "Pod":
                self.pods.append(_pod(name, namespace, meta, spec))
            elif kind in CONTROLLERS:
                self.pods += self._controller(kind, name, namespace, spec)
            elif kind == "Service":
                self.services.append((where, spec, name, namespace))
            else:
                self.policies.append(self._policy(doc, namespace))
        except SpecError as exc:
            raise SpecError(f"{where}: {kind} {name}: {exc}") from None

    def _ignore_object(self, where: str, kind: str, decided: apifields.Kind,
                       doc: dict[str, Any]) -> None:
        if self.strict:
            raise SpecError(f"{where}: kind {kind!r} has no effect on the network and is not "
                            f"emulated ({decided.reason}); --strict refuses it")
        meta = doc.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[^\s/%]+", name):
            raise SpecError(f"{where}: {kind} needs a metadata.name (no space, / or %)")
        namespace = meta.get("namespace") if isinstance(meta, dict) else None
        ref = f"{namespace}/{name}" if isinstance(namespace, str) else name
        self.ignored.append((f"{kind} {ref}", kind, decided.reason))

    def _controller(self, kind: str, name: str, namespace: str,
                    spec: dict[str, Any]) -> list[PodSpec]:
        """The pods a controller makes from its template, named as here explained."""
        if kind == "DaemonSet":
            if self.nodes is None:
                raise SpecError("a DaemonSet needs the node count (one pod per node)")
            count = self.nodes
        else:
            count = spec.get("replicas", 1)
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1000:
                raise SpecError(f"spec.replicas {count!r} must be 0 to 1000")
        template = spec.get("template") or {}
        tmeta = template.get("metadata") or {}
        labels = _labels(tmeta.get("labels"), "template labels")
        _label_selector(spec, labels)
        pod = _pod(name, namespace, tmeta, template.get("spec") or {})
        owner = f"{kind}/{name}"
        if kind == "StatefulSet":
            service = spec.get("serviceName")
            if service is not None:
                _name(service, "spec.serviceName")
            start = (spec.get("ordinals") or {}).get("start", 0)
            _int(start, "spec.ordinals.start", 0)
            return [_copy(pod, f"{name}-{i}", owner, hostname=f"{name}-{i}", subdomain=service)
                    for i in range(start, start + count)]
        if kind == "DaemonSet":
            from .topo import node_name
            return [_copy(pod, f"{name}-{node_name(i)}", owner, node_name=node_name(i))
                    for i in range(count)]
        return [_copy(pod, f"{name}-{i}", owner) for i in range(count)]

    @staticmethod
    def _policy(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
        policy = copy.deepcopy(doc)
        policy["metadata"].setdefault("namespace", namespace)
        return policy

    def workload(self) -> Workload:
        names = [(p.namespace, p.name) for p in self.pods]
        for ns, name in names:
            if names.count((ns, name)) > 1:
                raise SpecError(f"pod {ns}/{name} is defined twice (a Pod and a controller's "
                                "pod, or two controllers' pods, share the name)")
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
                        services=tuple(services), network_policies=tuple(self.policies),
                        ignored=tuple(entry for entry, _, _ in self.ignored))


def _copy(pod: PodSpec, name: str, owner: str, **changes: Any) -> PodSpec:
    from dataclasses import replace
    return replace(pod, name=name, owner=owner, **changes)


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers that run beside the pod's life: its containers and its sidecars
    (init containers with restartPolicy: Always); every name unique among all of them."""
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise SpecError("spec.containers must list at least one container")
    inits = spec.get("initContainers") or []
    names = [_name(c.get("name"), "container name") for c in [*containers, *inits]]
    if len(set(names)) != len(names):
        raise SpecError(f"container name {max(names, key=names.count)!r} is used twice")
    for c in [*containers, *inits]:
        image = c.get("image")
        if image is not None and (not isinstance(image, str) or not image.strip()):
            raise SpecError(f"container {c['name']}: image {image!r} is not an image name")
        for field in ("command", "args"):
            if not all(isinstance(a, str) for a in c.get(field) or []):
                raise SpecError(f"container {c['name']}: {field} must be a list of strings")
    for c in inits:
        if c.get("restartPolicy") not in (None, "Always"):
            raise SpecError(f"init container {c['name']}: restartPolicy "
                            f"{c['restartPolicy']!r} must be Always (a sidecar) or absent")
        if c.get("restartPolicy") is None and c.get("readinessProbe") is not None:
            raise SpecError(f"init container {c['name']}: only a sidecar (restartPolicy: "
                            "Always) may have a readinessProbe")
    return [*containers, *(c for c in inits if c.get("restartPolicy") == "Always")]


def _container_ports(c: dict[str, Any], host_network: bool) -> list[ContainerPort]:
    out = []
    for p in c.get("ports") or []:
        number = _port(p.get("containerPort"), "containerPort")
        host_port = p.get("hostPort")
        if host_port is not None:
            _port(host_port, "hostPort")
        if host_network:  # the API defaults hostPort to containerPort, and wants them equal
            if host_port not in (None, number):
                raise SpecError(f"hostPort {host_port} must equal containerPort {number} "
                                "with hostNetwork")
            host_port = number
        out.append(ContainerPort(
            number, _protocol(p.get("protocol"), "protocol"),
            _port_name(p["name"], "port name") if p.get("name") is not None else None,
            host_port))
    return out


def _probe(raw: Any, ports: list[ContainerPort], container: str) -> Probe:
    """A readinessProbe with the API's defaults, a named port resolved in its container."""
    what = f"container {container}: readinessProbe"
    handlers = [h for h in PROBE_HANDLERS if raw.get(h) is not None]
    if len(handlers) != 1:
        raise SpecError(f"{what} needs exactly one of {', '.join(PROBE_HANDLERS)}")
    kind = handlers[0]
    action = raw[kind]
    times = {f: _int(raw.get(f, default), f"{what}.{f}", least)
             for f, default, least in PROBE_TIMES}
    port: int | None = None
    path = "/"
    if kind != "exec":
        value = action.get("port")
        if isinstance(value, str) and kind != "grpc":
            _port_name(value, f"{what}.{kind}.port")
            found = [p.container_port for p in ports if p.name == value]
            if not found:
                raise SpecError(f"{what}.{kind}.port {value!r} names no port of the container "
                                "(the kubelet's probe could never succeed)")
            port = found[0]
        else:
            port = _port(value, f"{what}.{kind}.port")
        if kind == "httpGet":
            path = action.get("path", "/")
            if not isinstance(path, str) or not path.startswith("/"):
                raise SpecError(f"{what}.httpGet.path {path!r} must start with /")
    return Probe(kind, port, path, times["initialDelaySeconds"], times["periodSeconds"],
                 times["timeoutSeconds"], times["successThreshold"], times["failureThreshold"])


def _pod(name: str, namespace: str, meta: dict[str, Any], spec: dict[str, Any]) -> PodSpec:
    host_network = _bool(spec.get("hostNetwork", False), "spec.hostNetwork")
    ports: list[ContainerPort] = []
    probes: list[Probe] = []
    for c in _containers(spec):
        own = _container_ports(c, host_network)
        for port in own:
            if any((q.container_port, q.protocol) == (port.container_port, port.protocol)
                   or (port.name and q.name == port.name)
                   or (port.host_port and (q.host_port, q.protocol) == (port.host_port,
                                                                          port.protocol))
                   for q in ports):
                raise SpecError(f"container port {port.name or port.container_port} "
                                "is declared twice")
            ports.append(port)
        if c.get("readinessProbe") is not None:
            probes.append(_probe(c["readinessProbe"], own, c["name"]))
    if len(probes) > 1:
        raise SpecError("a readinessProbe on more than one container is not implemented "
                        "(the pod is Ready only when all are)")
    for c in spec.get("initContainers") or []:  # ports of a finished container: checked only
        if c.get("restartPolicy") is None:
            _container_ports(c, host_network)
    node = spec.get("nodeName")
    if node is not None and not isinstance(node, str):
        raise SpecError(f"spec.nodeName {node!r} is not a node name")
    dns_policy = spec.get("dnsPolicy", "ClusterFirst")
    if dns_policy == "None":
        raise SpecError("spec.dnsPolicy None needs spec.dnsConfig, which is not implemented")
    if dns_policy not in DNS_POLICIES:
        raise SpecError(f"spec.dnsPolicy {dns_policy!r} must be one of {', '.join(DNS_POLICIES)}")
    hostname, subdomain = spec.get("hostname"), spec.get("subdomain")
    return PodSpec(name=name, namespace=namespace, labels=_labels(meta.get("labels"), "labels"),
                   node_name=node, ports=tuple(ports),
                   readiness=probes[0] if probes else None, host_network=host_network,
                   dns_policy=dns_policy,
                   hostname=None if hostname is None else _name(hostname, "spec.hostname"),
                   subdomain=None if subdomain is None else _name(subdomain, "spec.subdomain"))


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
                ip = _cluster_ip(spec)
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
        ip = _ipv4(value, "spec.clusterIP")
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
        if kind not in SERVICE_TYPES:
            raise SpecError(f"spec.type {kind!r} is not implemented "
                            f"({', '.join(SERVICE_TYPES)})")
        external = kind != "ClusterIP"  # NodePort, and LoadBalancer which builds on it
        raw_ip = _cluster_ip(spec)
        headless = raw_ip == "None"
        if headless and external:
            raise SpecError(f"a {kind} Service cannot be headless (clusterIP: None)")
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
        for field, allowed in (("externalTrafficPolicy", external),
                               ("allocateLoadBalancerNodePorts", kind == "LoadBalancer"),
                               ("loadBalancerIP", kind == "LoadBalancer")):
            if spec.get(field) is not None and not allowed:
                raise SpecError(f"spec.{field} does not apply to type {kind}")
        traffic = spec.get("externalTrafficPolicy", "Cluster")
        if traffic not in ("Cluster", "Local"):
            raise SpecError(f"spec.externalTrafficPolicy {traffic!r} must be Cluster or Local")
        allocate = kind != "ClusterIP" and _bool(spec.get("allocateLoadBalancerNodePorts", True),
                                                 "spec.allocateLoadBalancerNodePorts")
        lb_ip = spec.get("loadBalancerIP") or None
        raw_ports = spec.get("ports") or []
        if not raw_ports and not headless:
            raise SpecError("spec.ports must list at least one port")
        ports = [self._port(p, external, allocate, len(raw_ports)) for p in raw_ports]
        names = [p.name for p in ports]
        if len(set(names)) != len(names) or len({(p.port, p.protocol) for p in ports}) != len(ports):
            raise SpecError("two ports share a name or a port and protocol")
        return ServiceSpec(name=name, namespace=namespace, type=kind, cluster_ip=ip,
                           selector=_labels(spec.get("selector"), "spec.selector"),
                           ports=tuple(ports), session_affinity_timeout=timeout,
                           load_balancer_ip=None if lb_ip is None else _ipv4(
                               lb_ip, "spec.loadBalancerIP"),
                           external_traffic_policy=traffic,
                           publish_not_ready=_bool(spec.get("publishNotReadyAddresses", False),
                                                   "spec.publishNotReadyAddresses"))

    def _port(self, p: dict[str, Any], external: bool, allocate: bool,
              count: int) -> ServicePort:
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
        if node_port is not None and not external:
            raise SpecError("nodePort is only allowed with type: NodePort or LoadBalancer")
        protocol = _protocol(p.get("protocol"), "protocol")
        if allocate and node_port is None:
            node_port = self._next_node_port(protocol)
        return ServicePort(port=port, target_port=target, protocol=protocol, name=name,
                           node_port=node_port)


def _cluster_ip(spec: dict[str, Any]) -> Any:
    """spec.clusterIP, or clusterIPs[0] (one IPv4 family only; both must agree)."""
    ips = spec.get("clusterIPs")
    if ips is None:
        return spec.get("clusterIP")
    if not isinstance(ips, list) or len(ips) != 1:
        raise SpecError(f"spec.clusterIPs {ips!r}: one address only (dual-stack is not "
                        "implemented: this cluster is IPv4 only)")
    if spec.get("clusterIP") not in (None, ips[0]):
        raise SpecError("spec.clusterIP and spec.clusterIPs[0] must be the same")
    return ips[0]



def load(path: Path | str, nodes: int | None = None, strict: bool = False) -> Workload:
    """Read a YAML file, a directory of them or standard input (``-``) into a checked
    workload (SpecError otherwise). ``nodes`` is the cluster's node count (a DaemonSet
    runs a pod on each); ``strict`` refuses what would otherwise be ignored."""
    reader = _Reader(nodes, strict)
    for where, doc in documents(path):
        reader.add(where, doc)
    if not reader.seen:
        raise SpecError(f"{path}: no Kubernetes object that k8stopo runs in it (Namespace, "
                        f"Pod, {', '.join(CONTROLLERS)}, Service or NetworkPolicy)")
    workload = reader.workload()
    by_name = Counter(api for _, api, _ in reader.ignored)
    why = {api: reason for _, api, reason in reader.ignored}
    for api, count in by_name.items():
        log.info("ignored %s ×%d: %s", api, count, why[api])
    for entry, _, _ in reader.ignored:
        log.debug("ignored %s", entry)
    return workload


def _plural(kind: str, count: int) -> str:
    return f"{count} {kind}{'' if count == 1 else 'es' if kind.endswith('s') else 's'}"


def summary(workload: Workload) -> str | None:
    """The one line that says what was accepted as having no effect on the network
    (None when nothing was)."""
    if not workload.ignored:
        return None
    kinds = Counter(entry.split(" ")[0] for entry in workload.ignored if entry.count(" ") == 1)
    fields = sum(1 for entry in workload.ignored if entry.count(" ") > 1)
    parts = [_plural(kind, n) for kind, n in kinds.items()]
    if fields:
        parts.append(f"{fields} field{'' if fields == 1 else 's'}")
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"accepted {listed} that do not change the network (-v lists them)"
