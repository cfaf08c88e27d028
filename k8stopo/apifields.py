"""Which Kubernetes kinds and fields k8stopo emulates, ignores or refuses, and why: data.

Real applications' manifests carry far more than the network: service accounts, config,
resources, security settings, probes. Each kind and field is decided here from its meaning
in the Kubernetes API reference (quoted or paraphrased in its reason):

* **emulated**: it changes who reaches whom or at which address, and k8stopo does it;
* **ignored**: it has no effect on reachability or addressing (accepted, reported once,
  refused under ``--strict``);
* **refused**: it would change reachability or addressing and is not emulated, so a run
  would be wrong; refused by name before anything is built. ``unless`` lists the values
  that mean what leaving the field out means (accepted as such).

Fields are keyed by the API's type names (``PodSpec``, ``Container``, ``ServiceSpec``…), so
a pod template's fields are decided once for Pods, Deployments, StatefulSets and the rest.
A field of a type that no row names is refused as unknown, as the API server's strict
decoding refuses it; ``*`` is every other field of a type. :func:`markdown` prints the
table for docs/services.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EMULATED, IGNORED, REFUSED = "emulated", "ignored", "refused"


@dataclass(frozen=True)
class Rule:
    verdict: str
    reason: str
    type: str | None = None  # its value's API type, walked field by field (a key of TYPES)
    many: bool = False  # a list of ``type``
    unless: tuple[Any, ...] = ()  # refused, but these values mean absence and pass


@dataclass(frozen=True)
class Kind:
    api_versions: tuple[str, ...]
    verdict: str
    reason: str
    spec: str | None = None  # the API type of ``.spec`` (emulated kinds)


def _e(reason: str, type: str | None = None, many: bool = False) -> Rule:
    return Rule(EMULATED, reason, type, many)


def _i(reason: str) -> Rule:
    return Rule(IGNORED, reason)


def _r(reason: str, unless: tuple[Any, ...] = ()) -> Rule:
    return Rule(REFUSED, reason, unless=unless)


_NO_PROCESS = "no container image runs here: each pod's servers answer on its declared ports"
_PLACEMENT = ("chooses a node; k8stopo spreads pods over its nodes in order (spec.nodeName "
              "pins one). Whom a pod reaches does not depend on its node: Services and "
              "NetworkPolicies select by labels (externalTrafficPolicy: Local then follows "
              "k8stopo's placement)")
_BOOKKEEPING = "written by the API server or controllers for their own bookkeeping"
_ROLLOUT = "how a controller replaces pods on a change; a run starts from the spec as given"

# The kinds: emulated ones have their .spec type below; ignored ones are not walked.
KINDS: dict[str, Kind] = {
    "Namespace": Kind(("v1",), EMULATED, "its labels are selected by NetworkPolicies' "
                      "namespaceSelector", "NamespaceSpec"),
    "Pod": Kind(("v1",), EMULATED, "a pod with its own network namespace and IP", "PodSpec"),
    "Deployment": Kind(("apps/v1",), EMULATED, "spec.replicas pods of its template, named "
                       "<name>-0…", "DeploymentSpec"),
    "ReplicaSet": Kind(("apps/v1",), EMULATED, "as a Deployment: spec.replicas pods of its "
                       "template", "ReplicaSetSpec"),
    "StatefulSet": Kind(("apps/v1",), EMULATED, "pods <name>-0…N-1 with hostname = pod name "
                        "and subdomain = spec.serviceName", "StatefulSetSpec"),
    "DaemonSet": Kind(("apps/v1",), EMULATED, "one pod per node, spec.nodeName set to it",
                      "DaemonSetSpec"),
    "Service": Kind(("v1",), EMULATED, "a ClusterIP (and NodePorts) programmed by kube-proxy, "
                    "a name in cluster DNS", "ServiceSpec"),
    "NetworkPolicy": Kind(("networking.k8s.io/v1",), EMULATED, "enforced by the variant's "
                          "policy agent; its spec is kept whole and every field checked by "
                          "k8stopo.policy"),
    # accepted and ignored: configuration, identity, storage and scheduling objects
    "ServiceAccount": Kind(("v1",), IGNORED, "'an identity for processes that run in a Pod': "
                           "API credentials, no address or rule"),
    "ConfigMap": Kind(("v1",), IGNORED, "'non-confidential data in key-value pairs' consumed "
                      "as env or files by processes that do not run here"),
    "Secret": Kind(("v1",), IGNORED, "confidential data for processes that do not run here"),
    "Role": Kind(("rbac.authorization.k8s.io/v1",), IGNORED, "API permissions (RBAC), not "
                 "network permissions"),
    "ClusterRole": Kind(("rbac.authorization.k8s.io/v1",), IGNORED, "API permissions (RBAC)"),
    "RoleBinding": Kind(("rbac.authorization.k8s.io/v1",), IGNORED, "grants a Role to a "
                        "subject: API permissions"),
    "ClusterRoleBinding": Kind(("rbac.authorization.k8s.io/v1",), IGNORED,
                               "grants a ClusterRole: API permissions"),
    "PodDisruptionBudget": Kind(("policy/v1",), IGNORED, "limits voluntary evictions (drains); "
                                "nothing is evicted here"),
    "HorizontalPodAutoscaler": Kind(("autoscaling/v2", "autoscaling/v1"), IGNORED,
                                    "scales replicas by observed metrics; k8stopo runs "
                                    "spec.replicas, alike pods behind the same selectors"),
    "PersistentVolumeClaim": Kind(("v1",), IGNORED, "a request for storage"),
    "PersistentVolume": Kind(("v1",), IGNORED, "a piece of storage"),
    "StorageClass": Kind(("storage.k8s.io/v1",), IGNORED, "a class of storage"),
    "LimitRange": Kind(("v1",), IGNORED, "default and maximum compute resources per pod"),
    "ResourceQuota": Kind(("v1",), IGNORED, "aggregate resource limits per namespace"),
    "PriorityClass": Kind(("scheduling.k8s.io/v1",), IGNORED, "a priority value for "
                          "scheduling and preemption"),
    "ServiceMonitor": Kind(("monitoring.coreos.com/v1",), IGNORED, "Prometheus Operator "
                           "scrape configuration: no pod, address or rule of its own"),
    "PodMonitor": Kind(("monitoring.coreos.com/v1",), IGNORED, "Prometheus Operator scrape "
                       "configuration: no pod, address or rule of its own"),
    # refused: they change reachability and are not emulated
    "Ingress": Kind(("networking.k8s.io/v1",), REFUSED, "HTTP routes served by an ingress "
                    "controller, and this cluster runs none"),
    "Endpoints": Kind(("v1",), REFUSED, "a Service's backends set by hand; k8stopo derives "
                      "them from selectors only"),
    "EndpointSlice": Kind(("discovery.k8s.io/v1",), REFUSED, "a Service's backends set by "
                          "hand; k8stopo derives them from selectors only"),
    "Job": Kind(("batch/v1",), REFUSED, "pods that run to completion (they hold an IP and "
                "connect while they run); not emulated"),
    "CronJob": Kind(("batch/v1",), REFUSED, "Jobs on a schedule: pods that come and go; not "
                    "emulated"),
    "MutatingWebhookConfiguration": Kind(("admissionregistration.k8s.io/v1",), REFUSED,
                                         "rewrites objects at admission (e.g. injects "
                                         "sidecars); no admission server runs here"),
}

_OBJECT_META: dict[str, Rule] = {
    "name": _e("unique per kind and namespace; a pod's is its handle and DNS hostname"),
    "namespace": _e("scopes names, Services' selectors and NetworkPolicies"),
    "labels": _e("what Services', controllers' and NetworkPolicies' selectors match"),
    "annotations": _i("'unstructured key value map … not queryable': read by tools, "
                      "not by the datapath (its shape is still checked)"),
    "generateName": _i("used by the server only when name is empty; here name is required"),
    "ownerReferences": _i("garbage-collection links between objects"),
    "finalizers": _i("deletion hooks of controllers"),
    "uid": _i(_BOOKKEEPING), "resourceVersion": _i(_BOOKKEEPING),
    "generation": _i(_BOOKKEEPING), "creationTimestamp": _i(_BOOKKEEPING),
    "deletionTimestamp": _i(_BOOKKEEPING), "deletionGracePeriodSeconds": _i(_BOOKKEEPING),
    "managedFields": _i(_BOOKKEEPING), "selfLink": _i(_BOOKKEEPING),
}

_CONTAINER: dict[str, Rule] = {
    "name": _e("'name of the container specified as a DNS_LABEL', unique in the pod; "
               "named probe ports resolve in it"),
    "ports": _e("'list of ports to expose from the container': the pod's servers listen on "
                "each, named targetPorts and NetworkPolicy ports resolve against them",
                "ContainerPort", many=True),
    "readinessProbe": _e("the container is Ready, and the pod an endpoint of its Services, "
                         "only while it succeeds", "Probe"),
    "image": _i("checked to be a name, not pulled: " + _NO_PROCESS),
    "command": _i("'entrypoint array': " + _NO_PROCESS),
    "args": _i("'arguments to the entrypoint': " + _NO_PROCESS),
    "workingDir": _i("the process's working directory: " + _NO_PROCESS),
    "env": _i("'list of environment variables to set in the container': " + _NO_PROCESS),
    "envFrom": _i("'sources to populate environment variables': " + _NO_PROCESS),
    "resources": _i("compute requests and limits (CPU, memory), not bandwidth"),
    "resizePolicy": _i("how resources are resized in place"),
    "restartPolicy": _i("restarts the container when it exits; the emulated pod never exits"),
    "volumeMounts": _i("'pod volumes to mount into the container's filesystem'"),
    "volumeDevices": _i("block devices for the container"),
    "livenessProbe": _i("restarts the container when it fails; it does not change the pod's "
                        "Ready condition, so not its Endpoints"),
    "startupProbe": _i("holds the other probes until it succeeds; on a served port it "
                       "succeeds at once here, so readiness follows readinessProbe"),
    "lifecycle": _i("postStart/preStop hooks of a process that does not run here"),
    "terminationMessagePath": _i("where the process writes its last words"),
    "terminationMessagePolicy": _i("how the termination message is filled"),
    "imagePullPolicy": _i("when the kubelet pulls the image; nothing is pulled here"),
    "securityContext": _i("the process's user, capabilities, seccomp and SELinux profile; no "
                          "process runs here, and NetworkPolicy binds privileged pods too"),
    "stdin": _i("a terminal for the process"), "stdinOnce": _i("a terminal for the process"),
    "tty": _i("a terminal for the process"),
}

TYPES: dict[str, dict[str, Rule]] = {
    "ObjectMeta": _OBJECT_META,
    "NamespaceSpec": {"finalizers": _i("deletion hooks of the namespace")},
    "PodTemplateSpec": {"metadata": _e("the pods' labels", "ObjectMeta"),
                        "spec": _e("the pods' spec", "PodSpec")},
    "PodSpec": {
        "containers": _e("the pod's containers: their ports and readiness", "Container",
                         many=True),
        "initContainers": _e("run to completion before the containers start, so their "
                             "ports serve nothing; with restartPolicy: Always (a sidecar) "
                             "they keep running and their ports and readinessProbe count",
                             "InitContainer", many=True),
        "nodeName": _e("'indicates in which node this pod is scheduled'"),
        "hostNetwork": _e("'use the host's network namespace': the pod has its node's IP"),
        "dnsPolicy": _e("'ClusterFirst' (default), 'ClusterFirstWithHostNet', 'Default' "
                        "(the node's resolv.conf) or 'None' (needs dnsConfig, refused)"),
        "hostname": _e("the pod's hostname; with subdomain its DNS name "
                       "<hostname>.<subdomain>.<namespace>.svc"),
        "subdomain": _e("with hostname, the pod's DNS name under a headless Service"),
        "hostAliases": _r("'hosts and IPs that will be injected into the pod's hosts file': "
                          "name resolution, not emulated", unless=([],)),
        "dnsConfig": _r("nameservers, searches and options merged into the pod's resolv.conf: "
                        "name resolution, not emulated"),
        "readinessGates": _r("'a pod is ready when all its containers are ready AND all "
                             "conditions in the readiness gates' are True: set by other "
                             "controllers, not emulated", unless=([],)),
        "schedulingGates": _r("'if specified will block scheduling the pod': it would never "
                              "run", unless=([],)),
        "activeDeadlineSeconds": _r("the pod is failed and its containers killed that long "
                                    "after it starts; pods here run until torn down"),
        "ephemeralContainers": _r("'cannot be specified when creating a pod'"),
        "resourceClaims": _r("devices (among them network interfaces) allocated to the pod "
                             "before it starts; not emulated", unless=([],)),
        "securityContext": _e("the pod's security settings; only sysctls reach the network",
                              "PodSecurityContext"),
        "affinity": _i(_PLACEMENT), "nodeSelector": _i(_PLACEMENT),
        "tolerations": _i(_PLACEMENT), "topologySpreadConstraints": _i(_PLACEMENT),
        "schedulerName": _i(_PLACEMENT), "priority": _i(_PLACEMENT),
        "priorityClassName": _i(_PLACEMENT), "preemptionPolicy": _i(_PLACEMENT),
        "serviceAccountName": _i("'the ServiceAccount to use to run this pod': API "
                                 "credentials"),
        "serviceAccount": _i("deprecated alias of serviceAccountName"),
        "automountServiceAccountToken": _i("mounts API credentials into the containers"),
        "imagePullSecrets": _i("credentials to pull images; nothing is pulled here"),
        "volumes": _i("'volumes that can be mounted by containers': storage"),
        "restartPolicy": _i("restarts containers that exit; the emulated pod never exits"),
        "terminationGracePeriodSeconds": _i("time a process gets to stop on deletion"),
        "enableServiceLinks": _i("injects Services' addresses as environment variables of "
                                 "processes that do not run here"),
        "shareProcessNamespace": _i("one PID namespace for the pod's containers"),
        "hostPID": _i("the host's PID namespace: processes, not network"),
        "hostIPC": _i("the host's IPC namespace: shared memory, not network"),
        "hostUsers": _i("the host's user namespace"),
        "setHostnameAsFQDN": _i("sets the kernel hostname to the pod's FQDN; no DNS record "
                                "or address changes"),
        "runtimeClassName": _i("the container runtime handler; the pod keeps its CNI "
                               "interface and IP"),
        "os": _i("the OS the containers need: validation of other fields"),
        "overhead": _i("resources of the runtime itself"),
    },
    "PodSecurityContext": {
        "sysctls": _r("namespaced sysctls, among them net.* ones of the pod's own network "
                      "namespace: not emulated", unless=([],)),
        "*": _i("the processes' users, groups, seccomp, SELinux and AppArmor profiles"),
    },
    "Container": _CONTAINER,
    "InitContainer": {**_CONTAINER, "restartPolicy": _e(
        "'Always' makes the init container a sidecar: it keeps running beside the "
        "containers, so its ports are served and its readinessProbe counts")},
    "ContainerPort": {
        "containerPort": _e("the port number served in the pod"),
        "protocol": _e("TCP (default) or UDP (SCTP refused)"),
        "name": _e("an IANA_SVC_NAME that targetPorts, probes and NetworkPolicies refer to"),
        "hostPort": _e("'number of port to expose on the host': the node's IP at this port "
                       "forwards to the pod (the portmap plugin)"),
        "hostIP": _r("'what host IP to bind the external port to': one of the node's "
                     "addresses only, not emulated", unless=("", "0.0.0.0")),
    },
    "Probe": {
        "tcpSocket": _e("ready when a TCP connection opens", "TCPSocketAction"),
        "httpGet": _e("ready on an HTTP answer (200-399)", "HTTPGetAction"),
        "grpc": _e("the gRPC health check: satisfied when the port is served (the pod "
                   "servers speak no gRPC)", "GRPCAction"),
        "exec": _e("a command in the container: counts as passing (" + _NO_PROCESS + ")"),
        "initialDelaySeconds": _e("seconds before the first check (default 0)"),
        "periodSeconds": _e("seconds between checks (default 10)"),
        "timeoutSeconds": _e("seconds a check may take (default 1)"),
        "successThreshold": _e("successes in a row to become Ready (default 1)"),
        "failureThreshold": _e("failures in a row to become not Ready (default 3)"),
        "terminationGracePeriodSeconds": _i("liveness/startup only: time to stop the process"),
    },
    "TCPSocketAction": {
        "port": _e("a number, or a container port's name (resolved at load)"),
        "host": _r("'host name to connect to, defaults to the pod IP': checking another "
                   "address is not emulated", unless=("",)),
    },
    "HTTPGetAction": {
        "port": _e("a number, or a container port's name (resolved at load)"),
        "path": _e("the path requested (default /)"),
        "scheme": _r("HTTPS: the pod servers answer plain HTTP", unless=("HTTP",)),
        "host": _r("'host name to connect to, defaults to the pod IP': not emulated",
                   unless=("",)),
        "httpHeaders": _i("request headers; the pod servers answer any request"),
    },
    "GRPCAction": {
        "port": _e("the port of the gRPC health service"),
        "service": _i("the service name in the health request; no gRPC is spoken here"),
    },
    "LabelSelector": {
        "matchLabels": _e("must match the template's labels (the API validates it)"),
        "matchExpressions": _e("In, NotIn, Exists, DoesNotExist: must match the template's "
                               "labels"),
    },
    "DeploymentSpec": {
        "replicas": _e("how many pods (default 1)"),
        "selector": _e("which pods it owns", "LabelSelector"),
        "template": _e("the pods", "PodTemplateSpec"),
        "paused": _r("a Deployment created paused makes no pods; not emulated",
                     unless=(False,)),
        "strategy": _i(_ROLLOUT), "revisionHistoryLimit": _i(_ROLLOUT),
        "progressDeadlineSeconds": _i(_ROLLOUT),
        "minReadySeconds": _i("how long a Ready pod waits to count as available for "
                              "rollouts; Endpoints follow Ready, not available"),
    },
    "ReplicaSetSpec": {
        "replicas": _e("how many pods (default 1)"),
        "selector": _e("which pods it owns", "LabelSelector"),
        "template": _e("the pods", "PodTemplateSpec"),
        "minReadySeconds": _i("how long a Ready pod waits to count as available; Endpoints "
                              "follow Ready"),
    },
    "StatefulSetSpec": {
        "replicas": _e("how many pods (default 1), named <name>-<ordinal>"),
        "selector": _e("which pods it owns", "LabelSelector"),
        "template": _e("the pods", "PodTemplateSpec"),
        "serviceName": _e("'the service that governs this StatefulSet … responsible for the "
                          "network identity': each pod's subdomain"),
        "ordinals": _e("the first ordinal (default 0)", "StatefulSetOrdinals"),
        "podManagementPolicy": _i("the order pods are created in; all run here"),
        "updateStrategy": _i(_ROLLOUT), "revisionHistoryLimit": _i(_ROLLOUT),
        "minReadySeconds": _i("how long a Ready pod waits to count as available"),
        "volumeClaimTemplates": _i("per-pod storage claims"),
        "persistentVolumeClaimRetentionPolicy": _i("what happens to the claims on deletion"),
    },
    "StatefulSetOrdinals": {"start": _e("'the number representing the first replica's "
                                        "index'")},
    "DaemonSetSpec": {
        "selector": _e("which pods it owns", "LabelSelector"),
        "template": _e("the pods, one per node", "PodTemplateSpec"),
        "updateStrategy": _i(_ROLLOUT), "revisionHistoryLimit": _i(_ROLLOUT),
        "minReadySeconds": _i("how long a Ready pod waits to count as available"),
    },
    "ServiceSpec": {
        "type": _e("ClusterIP (default), NodePort, or LoadBalancer ('builds on NodePort'; "
                   "its external IP from --lb-pool); ExternalName refused"),
        "clusterIP": _e("given (in the service CIDR, free), allocated, or None (headless)"),
        "clusterIPs": _e("as clusterIP; two entries (dual-stack) refused"),
        "selector": _e("'route service traffic to pods with label keys and values matching "
                       "this selector'"),
        "ports": _e("the Service's ports", "ServicePort", many=True),
        "sessionAffinity": _e("None or ClientIP", None),
        "sessionAffinityConfig": _e("ClientIP's timeout", "SessionAffinityConfig"),
        "publishNotReadyAddresses": _e("endpoints include pods that are not Ready"),
        "externalTrafficPolicy": _e("Cluster or Local: which nodes' NodePorts and external "
                                    "IP answer, and whether the client's IP is kept"),
        "allocateLoadBalancerNodePorts": _e("false: a LoadBalancer gets no NodePorts unless "
                                            "given"),
        "loadBalancerIP": _e("the external IP asked for (else one from --lb-pool)"),
        "loadBalancerClass": _i("which load-balancer implementation serves it; k8stopo has "
                                "one (--lb-pool)"),
        "externalIPs": _r("'IP addresses for which nodes in the cluster will also accept "
                          "traffic for this service': not emulated", unless=([],)),
        "loadBalancerSourceRanges": _r("restricts the load balancer to these client IPs: a "
                                       "filter, not emulated", unless=([],)),
        "internalTrafficPolicy": _r("Local: 'dropping the traffic if there are no local "
                                    "endpoints'; not emulated", unless=("Cluster",)),
        "ipFamilies": _r("IPv6 or dual-stack: this cluster is IPv4 only", unless=(["IPv4"],)),
        "ipFamilyPolicy": _r("RequireDualStack fails on a single-stack cluster; "
                             "PreferDualStack gets IPv4 only, as here",
                             unless=("SingleStack", "PreferDualStack")),
        "healthCheckNodePort": _r("the node port answering external load balancers' health "
                                  "checks for externalTrafficPolicy: Local; not emulated"),
        "externalName": _r("ExternalName: a DNS CNAME, not emulated"),
        "trafficDistribution": _i("'a hint' to prefer topologically close endpoints; there "
                                  "are no zones here"),
    },
    "ServicePort": {
        "name": _e("required when several; named in Endpoints and kube-proxy's chains"),
        "port": _e("the port on the ClusterIP"),
        "targetPort": _e("a number, or a container port's name looked up in each pod"),
        "protocol": _e("TCP (default) or UDP (SCTP refused)"),
        "nodePort": _e("given (30000-32767, free) or allocated for NodePort and LoadBalancer"),
        "appProtocol": _i("'the application protocol for this port', a hint for L7 "
                          "implementations; kube-proxy does not read it"),
    },
    "SessionAffinityConfig": {"clientIP": _e("ClientIP affinity", "ClientIPConfig")},
    "ClientIPConfig": {"timeoutSeconds": _e("1-86400, default 10800")},
}

#: top-level fields every object may have beside apiVersion, kind, metadata and spec
STATUS = _i("'most recently observed status', written by the cluster, never by the user")


def lookup(type_name: str, field: str) -> Rule | None:
    """The rule of ``field`` in ``type_name`` (its ``*`` row otherwise; None: unknown)."""
    fields = TYPES[type_name]
    return fields.get(field) or fields.get("*")


def markdown() -> str:
    """The whole table as markdown, for docs/services.md (a test keeps both equal)."""
    lines = ["| kind | apiVersion | verdict | why |", "|---|---|---|---|"]
    lines += [f"| {name} | {', '.join(k.api_versions)} | {k.verdict} | {k.reason} |"
              for name, k in KINDS.items()]
    lines += ["", "| field | verdict | why |", "|---|---|---|"]
    for type_name, fields in TYPES.items():
        for field, rule in fields.items():
            unless = (f" (accepted when {' or '.join(repr(v) for v in rule.unless)})"
                      if rule.unless else "")
            lines.append(f"| {type_name}.{field} | {rule.verdict} | {rule.reason}{unless} |")
    lines.append(f"| (any kind).status | {STATUS.verdict} | {STATUS.reason} |")
    return "\n".join(lines) + "\n"
