"""The application experiment: an application's own paths, from its front end pod to each
tier's Service, under each kube-proxy mode and with its NetworkPolicies on and off
(``k8stopo app --experiment experiments/apps/app.yaml``, docs/apps.md).

For every repeat, proxy mode and policy setting one cluster is built from the manifests
(policies off: the same manifests without their NetworkPolicies); the front end pod then
opens ``count`` new TCP connections to every TCP port of every Service that has a
ClusterIP, one after another (podprobe: each a new socket, so a new conntrack entry and a
new backend choice). Rows in the usual results CSV, appended (scenario
``app-to-service``, with ``proxy_mode``, ``policy`` and ``service`` columns): the share of
connections that got an answer, and the median and p99 of the connect time (SYN to
SYN-ACK) of those that did. One chart per metric: a group per Service, a bar per mode and
policy setting.
"""
from __future__ import annotations

import dataclasses
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from . import __version__, probe, yamlfile
from .cluster import Cluster
from .environment import Environment
from .kubeproxy import MODES, proxy_class
from .kubeproxy.model import service_ports
from .measure import Sample, percentile
from .results import Context, CsvSink, new_run_id, rows, utc_now
from .spec import ClusterSpec, SpecError
from .workload import Workload, pod_handle

if TYPE_CHECKING:
    from .agent import Agent
    from .cni.base import Variant

SCENARIO = "app-to-service"
KEYS = ("description", "manifests", "cni", "nodes", "client", "proxy_modes", "policies",
        "count", "repeat")


@dataclass(frozen=True)
class AppExperiment:
    name: str
    manifests: Path
    cni: str
    nodes: int
    client: str  # ns/name of the front end pod
    proxy_modes: tuple[str, ...]
    policies: tuple[bool, ...]
    count: int
    repeat: int


def load(path: Path) -> AppExperiment:
    """The experiment file, checked; ``manifests`` is relative to the file's directory."""
    docs = yamlfile.documents(path, "experiment")
    data = docs[0] if len(docs) == 1 else None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: an experiment is a YAML mapping of settings")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    for key in ("manifests", "client"):
        if not isinstance(data.get(key), str):
            raise SpecError(f"{path}: {key} must be given as a string")
    modes = tuple(data.get("proxy_modes", list(MODES)))
    for mode in modes:
        proxy_class(mode)
    policies = tuple(data.get("policies", ["on", "off"]))
    if not policies or any(p not in ("on", "off") for p in policies):
        raise SpecError(f"{path}: policies must be a list of on, off")
    numbers = {k: data.get(k, d) for k, d in (("nodes", 3), ("count", 50), ("repeat", 1))}
    for key, value in numbers.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecError(f"{path}: {key} must be a positive integer, not {value!r}")
    manifests = (path.parent / data["manifests"]).resolve()
    if not manifests.exists():
        raise SpecError(f"{path}: manifests {manifests} do not exist")
    return AppExperiment(path.stem, manifests, str(data.get("cni", "calico-bgp")),
                         numbers["nodes"], data["client"], modes,
                         tuple(p == "on" for p in policies), numbers["count"],
                         numbers["repeat"])


def client_of(workload: Workload, ref: str) -> str:
    """The pod handle of ``ns/name``; SpecError when the manifests hold no such pod."""
    namespace, _, name = ref.rpartition("/")
    if not any((p.namespace, p.name) == (namespace or "default", name) for p in workload.pods):
        raise SpecError(f"client {ref!r} is not a pod of the manifests")
    return pod_handle(name, namespace or "default")


def measure(cluster: Cluster, client: str,
            count: int) -> dict[str, tuple[str, list[Sample]]]:
    """Per Service port (``ns/svc:port``): its ClusterIP, and the answered share and the
    connect time's median and p99."""
    pod = cluster.pod(client)
    out = {}
    for s in service_ports(cluster.spec.workload, cluster.pods):
        if s.protocol != "tcp":
            continue
        target = probe.Target(f"svc:{s.namespace}/{s.service}", str(s.cluster_ip), s.port, "tcp")
        results = probe.probe_from(cluster, pod, [target], count)
        ok = sorted(r.connect_us / 1000 for r in results if r.connected)
        values = [Sample("answered_ratio", len(ok) / len(results), "ratio")]
        if ok:
            values += [Sample("connect_median_ms", statistics.median(ok), "ms"),
                       Sample("connect_p99_ms", percentile(ok, 99), "ms")]
        out[f"{s.namespace}/{s.service}:{s.port}"] = (str(s.cluster_ip), values)
    return out


def run(exp: AppExperiment, variant: type[Variant], workload: Workload,
        agents: Callable[[Workload, str], Sequence[type[Agent]]], out: Path, command: str) -> str:
    """Every repeat x mode x policy setting into ``out``; returns the run id.

    ``variant`` is ``exp.cni``'s class and ``agents(workload, mode)`` the agent classes of
    one cluster (the command line's choice, so that this module holds no policy of its own
    about them)."""
    client = client_of(workload, exp.client)
    sink = CsvSink(out)
    run_id, env = new_run_id(), Environment.here(command)
    for repeat in range(exp.repeat):
        for mode in exp.proxy_modes:
            for policy_on in exp.policies:
                wl = workload if policy_on else dataclasses.replace(workload, network_policies=())
                spec = ClusterSpec(cni=exp.cni, nodes=exp.nodes, pods_per_node=0, workload=wl)
                with Cluster(spec, agents=agents(wl, mode), variant=variant) as cluster:
                    started = utc_now()
                    measured = measure(cluster, client, exp.count)
                    source = cluster.pod(client)
                for service, (address, values) in measured.items():
                    ctx = Context(run_id, exp.cni, SCENARIO, "tcp", repeat, exp.nodes, 0, 1,
                                  0.0, spec.mtu, platform.release(), __version__,
                                  f"{source.namespace}/{source.k8s_name}", service,
                                  str(source.ip), address, "",
                                  {"proxy_mode": mode, "policy": "on" if policy_on else "off",
                                   "connections": exp.count, "experiment": exp.name,
                                   **env.columns()})
                    sink.write(rows(ctx, started, values))
    return run_id


def chart(csv: Path, run_id: str, directory: Path) -> list[Path]:
    """One bar chart per metric of the run: a group per Service, a bar per mode/policy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .results import load as load_results
    df = load_results([csv])
    df = df[(df.run_id == run_id) & (df.scenario == SCENARIO)]
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, part in df.groupby("metric"):
        table = part.groupby(["server", "proxy_mode", "policy"])["value"].median().unstack(
            ["proxy_mode", "policy"])
        ax = table.plot.bar(figsize=(max(6, 1.5 * len(table)), 4), rot=30)
        ax.set_ylabel(f"{metric} ({part.unit.iloc[0]})")
        ax.set_xlabel("Service (from the front end pod)")
        ax.set_title(f"{metric}: front end to each tier's Service (run {run_id})")
        ax.legend(title="proxy mode, policy", fontsize="small")
        path = directory / f"app-{metric}.png"
        ax.figure.tight_layout()
        ax.figure.savefig(path)
        plt.close(ax.figure)
        written.append(path)
    return written
