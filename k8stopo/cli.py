"""The ``k8stopo`` command line (SPEC: doctor, up, bench, plot, clean).

Bad input exits with status 2 and one line, before anything is created.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import shlex
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from . import __version__
from .cni import names as cni_names
from .cni import variant as variant_class
from .errors import RunError, one_line
from .measure import REQUIRES
from .spec import FAULTS, PROTOCOLS, SCENARIOS, BenchSpec, ClusterSpec, SpecError, pick

if TYPE_CHECKING:  # pandas is imported only by the commands that read results
    import pandas

    from . import bench, controlplane
    from .agent import Agent
    from .cluster import Cluster
    from .cni.base import Variant
    from .workload import Workload

log = logging.getLogger("k8stopo")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2
        self.exit(2, f"k8stopo: error: {message} (see {self.prog} --help)\n")


def _cluster_args(p: argparse.ArgumentParser, nodes: int, pods: int) -> None:
    p.add_argument("--nodes", type=int, default=nodes, help=f"Kubernetes nodes (default {nodes})")
    p.add_argument("--pods-per-node", type=int, default=pods, help=f"pods per node (default {pods})")
    p.add_argument("--mtu", type=int, default=1500, help="underlay MTU (default 1500)")
    p.add_argument("--bgp", default="mesh", help="Calico BIRD peering: mesh (node-to-node, "
                   "default) or rr (route reflectors; see --route-reflectors)")
    p.add_argument("--route-reflectors", type=int, default=1,
                   help="with --bgp rr: 1 (n1) or 2 (n1, n2) reflectors (default 1)")
    p.add_argument("--ipip-mode", default="always",
                   help="calico-ipip: always (default) or cross-subnet")
    p.add_argument("--underlay", default="l2", help="l2: one segment (default); routed: "
                   "two subnets behind a router")
    _workload_args(p)


def _published_args(p: argparse.ArgumentParser, when: str) -> None:
    p.add_argument("--published", type=Path, metavar="CSV",
                   help=f"{when}also write published_comparison.md, our ratios to host beside "
                   "these published ones (default: the repository's results/published.csv)")
    p.add_argument("--no-published", action="store_true", help="no published comparison")


#: bench's settings when neither an experiment file nor a flag gives them
BENCH_DEFAULTS: dict[str, object] = {
    "cni": "all", "scenarios": "host-to-host,pod-to-pod-same-node,pod-to-pod-cross-node,node-to-pod",
    "protocols": "tcp,udp,icmp", "nodes": 2, "pods_per_node": 2, "mtu": 1500, "duration": 10,
    "repeat": 3, "streams": 1, "udp_bandwidth": "0", "udp_length": 0,
    "offloads": "on", "msg_size": 64,
    "bgp": "mesh", "route_reflectors": 1, "ipip_mode": "always", "underlay": "l2",
    "faults": "", "budget": "0",
}


def _bench_args(p: argparse.ArgumentParser) -> None:
    """bench's flags; each one given overrides the experiment file's setting."""
    def opt(flag: str, help: str, **kw: Any) -> None:
        key = flag[2:].replace("-", "_")
        p.add_argument(flag, help=f"{help} (default {BENCH_DEFAULTS[key]})", **kw)
    p.add_argument("--experiment", type=Path, metavar="YAML",
                   help="run experiments/NAME.yaml; the flags below override its settings")
    opt("--cni", "comma list of variants, or all")
    opt("--scenarios", "comma list of scenarios")
    opt("--protocols", f"comma list of {', '.join(PROTOCOLS)}")
    opt("--nodes", "Kubernetes nodes", type=int)
    opt("--pods-per-node", "pods per node", type=int)
    opt("--mtu", "underlay MTU", type=int)
    opt("--duration", "whole seconds per measurement (iperf3 -t, sockperf -t)", type=int)
    opt("--repeat", "repeats, interleaved across variants", type=int)
    opt("--streams", "parallel iperf3 streams (-P)", type=int)
    opt("--udp-bandwidth", "iperf3 -b for UDP, per stream; 0 is unlimited as in published "
        "benchmarks")
    opt("--udp-length", "iperf3 -l for UDP: datagram payload bytes; 0 leaves iperf3's choice "
        "(the path MSS)", type=int)
    opt("--offloads", "segmentation/checksum offloads on the emulated wire's veths",
        choices=("on", "off"))
    opt("--msg-size", "tcp_rr request and response size in bytes (sockperf -m)", type=int)
    opt("--bgp", "Calico BIRD peering: mesh (node-to-node) or rr (route reflectors)")
    opt("--route-reflectors", "with --bgp rr: 1 (n1) or 2 (n1, n2) reflectors", type=int)
    opt("--ipip-mode", "calico-ipip: always or cross-subnet")
    opt("--underlay", "l2 (one segment) or routed (two subnets behind a router)")
    opt("--budget", "time for extra interleaved rounds after the repeats, e.g. 8m or 90s, "
        "spent only while verdict pairs stay undecided (docs/bench.md, Rounds until settled)")
    p.add_argument("--faults", help=f"comma list of {', '.join(FAULTS)}: each repeat is "
                   "measured again under each (docs/bench.md, Faults; default none)")
    p.add_argument("--resume", action="store_true", help="continue the last run recorded in "
                   "--out: same command, its missing steps only, same run id")
    p.add_argument("--out", type=Path, help="CSV to append the rows to (required without "
                   "--experiment; with it: results/NAME/NAME-<UTC time>.csv)")
    p.add_argument("--plots", type=Path, help="also draw the charts of this run into DIR "
                   "(with --experiment: results/NAME/plots)")
    _published_args(p, "with --plots: ")
    _workload_args(p)


def _workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifests", type=Path, metavar="PATH",
                   help="Kubernetes YAML (file, directory, or - for standard input): "
                   "Namespaces, Pods, Deployments, ReplicaSets, StatefulSets, DaemonSets, "
                   "Services, NetworkPolicies; what has no effect on the network is accepted "
                   "and reported (see docs/services.md)")
    p.add_argument("--strict", action="store_true",
                   help="with --manifests: refuse also what would be ignored as having no "
                   "effect on the network")
    p.add_argument("--proxy-mode", default="iptables",
                   help="kube-proxy mode: iptables (default), nftables or userspace")


def _workload(args: argparse.Namespace, nodes: int) -> Workload | None:
    """The manifests' workload (checked, and the proxy mode and ``--lb-pool`` with it, before
    anything is built; standard input read here, once); None without manifests. ``nodes``
    places a DaemonSet's pods and bounds the pool. Says once what was accepted and ignored,
    after every check passed (bad input is one line)."""
    from . import loadbalancer, manifests
    from .kubeproxy import proxy_class
    proxy_class(args.proxy_mode)
    pool = getattr(args, "lb_pool", None)
    pool = loadbalancer.parse_pool(pool, nodes) if pool is not None else None
    if not args.manifests:
        if pool is not None:
            raise SpecError("--lb-pool needs --manifests with a Service of type LoadBalancer")
        return None
    workload = manifests.load(args.manifests, nodes=nodes, strict=args.strict)
    if pool is not None:  # MetalLB's controller (k8stopo.loadbalancer.assign)
        workload = loadbalancer.assign(workload, pool)
    said = manifests.summary(workload)
    if said:
        print(f"k8stopo: {said}", file=sys.stderr, flush=True)
    return workload


def _agents(args: argparse.Namespace, workload: Workload | None,
            dns: bool = False) -> list[type[Agent]]:
    """What serves a workload beside the CNI: the pods' servers and kube-proxy (none
    without one, so plain runs stay as they were); with ``dns`` (up, probe) cluster DNS
    when it holds Services, as every real cluster has; kubelet's readiness prober when a
    pod has a readinessProbe; MetalLB's layer-2 speakers when a LoadBalancer got an IP
    from ``--lb-pool``; the portmap plugin when a container port has a hostPort. The
    NetworkPolicy agent is the variant's (:func:`_policy_agents`)."""
    from .dns import ClusterDNS
    from .hostport import HostPorts
    from .kubeproxy import proxy_class
    from .loadbalancer import L2Announcer
    from .readiness import Readiness
    from .servers import PodServers
    if workload is None:
        return []
    agents: list[type[Agent]] = [PodServers, proxy_class(args.proxy_mode)]
    if dns and workload.services:
        agents.append(ClusterDNS)
    if any(p.readiness for p in workload.pods):
        agents.append(Readiness)  # after kube-proxy: stopped before it
    if any(s.load_balancer_ip for s in workload.services):
        agents.append(L2Announcer)
    if any(c.host_port for p in workload.pods for c in p.ports):
        agents.append(HostPorts)
    return agents


def _lb_pool_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lb-pool", metavar="CIDR",
                   help="give LoadBalancer Services external IPs from CIDR (on the underlay "
                   "172.20.0.0/16, outside the nodes' addresses), answered by ARP as MetalLB's "
                   "layer-2 mode does (docs/apps.md)")


def _policy_agents(variant: type[Variant], workload: Workload | None) -> list[type[Agent]]:
    """The variant's NetworkPolicy agent when the manifests hold policies; a variant whose
    project enforces nothing says so once."""
    from . import policy
    if workload is None or not workload.network_policies:
        return []
    notice = policy.not_enforced_notice(variant)
    if notice:
        print(f"k8stopo: {notice}", file=sys.stderr)
    return policy.agents_for(variant)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="k8stopo", description="Kubernetes networking emulated with Mininet.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v progress, -vv commands")
    p.add_argument("--version", action="version", version=f"k8stopo {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("doctor", help="what this kernel and machine can run")

    up = sub.add_parser("up", help="build a cluster, print it, hold it (or open the Mininet CLI)")
    up.add_argument("--cni", required=True, help="CNI variant (see `k8stopo doctor`)")
    _cluster_args(up, 2, 2)
    up.add_argument("--cli", action="store_true", help="drop into the Mininet CLI")
    up.add_argument("--keep-on-failure", action="store_true",
                    help="if the build fails, keep the cluster up for inspection until Ctrl-C")
    _lb_pool_arg(up)

    bench = sub.add_parser("bench", help="measure variants × scenarios × protocols into a CSV")
    _bench_args(bench)
    _lb_pool_arg(bench)

    plot = sub.add_parser("plot", help="charts and a summary table from result CSVs")
    plot.add_argument("csv", type=Path, nargs="+")
    plot.add_argument("--out", type=Path, required=True, help="directory for PNG/SVG/summary")
    _published_args(plot, "")

    probe = sub.add_parser("probe", help="reachability truth tables: every pod to every pod "
                           "and Service port")
    probe.add_argument("--cni", required=True, help="CNI variant (see `k8stopo doctor`)")
    probe.add_argument("--nodes", type=int, default=3, help="Kubernetes nodes (default 3)")
    probe.add_argument("--mtu", type=int, default=1500, help="underlay MTU (default 1500)")
    _workload_args(probe)
    probe.add_argument("--ports", help="comma list of ports (default: every declared port)")
    probe.add_argument("--protocols", default="tcp", help="comma list of tcp, udp (default tcp)")
    probe.add_argument("--count", type=int, default=1, help="attempts per pair (default 1)")
    probe.add_argument("--json", action="store_true", help="one JSON object per probe and line")
    probe.add_argument("--by-name", action="store_true",
                       help="dial Services by DNS name (svc.ns.svc.cluster.local, resolved in "
                       "the client pod through cluster DNS) instead of their ClusterIP")
    probe.add_argument("--serial", action="store_true",
                       help="probe one pair at a time (the same table, slower)")
    _lb_pool_arg(probe)

    app = sub.add_parser("app", help="an application's paths: its front end pod to each "
                         "tier's Service, per proxy mode, policies on and off (docs/apps.md)")
    app.add_argument("--experiment", type=Path, required=True, metavar="YAML",
                     help="e.g. experiments/apps/app.yaml: manifests, client pod, modes, policies")
    app.add_argument("--out", type=Path, help="CSV to append the rows to "
                     "(default: results/NAME/NAME-<UTC time>.csv)")
    app.add_argument("--plots", type=Path, help="directory of the charts "
                     "(default: results/NAME/plots)")

    scale = sub.add_parser("scale", help="bring-up/teardown times and, for Calico, BGP "
                           "sessions, convergence, withdrawal and memory per cluster size")
    scale.add_argument("--cni", default="calico-bgp", help="one variant (default calico-bgp)")
    scale.add_argument("--nodes", default="4,100", help="comma list of cluster sizes")
    scale.add_argument("--pods-per-node", type=int, default=0, help="pods per node (default 0)")
    scale.add_argument("--bgp-modes", default="mesh",
                       help="comma list of mesh, rr1, rr2 (Calico's BIRD variants)")
    scale.add_argument("--repeat", type=int, default=1, help="repeats (default 1)")
    scale.add_argument("--out", type=Path, required=True, help="CSV to append the rows to")
    scale.add_argument("--plots", type=Path,
                       help="also draw scale.png of every row of --out (earlier runs' too) into DIR")

    notebooks = sub.add_parser("notebooks", help="execute the notebooks headless over "
                               "results CSVs (what `make notebooks` runs)")
    notebooks.add_argument("notebook", type=Path, nargs="*",
                           help="default: every notebook in experiments/notebooks/")
    notebooks.add_argument("--results", type=Path, default=Path("results"),
                           help="folder of results CSVs, searched recursively (default results)")
    notebooks.add_argument("--out", type=Path, help="write the executed notebooks here")

    clean = sub.add_parser("clean", help="remove what crashed k8stopo runs left behind")
    clean.add_argument("--force", action="store_true",
                       help="also remove runs whose k8stopo process still runs (a stuck run)")
    return p


def _one_variant(value: str, why: str) -> type[Variant]:
    """The class of the one variant a command that builds one cluster at a time was given
    (looked up here, once: the cluster and the agents are handed the class)."""
    names = cni_names(value)
    if len(names) != 1 or value.strip() == "all":
        raise SpecError(f"{why}: give exactly one --cni variant")
    return variant_class(names[0])


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SpecError("k8stopo creates network namespaces and must run as root")


def _clean_dead_runs() -> None:
    """What crashed runs left behind goes before a new run starts (their owners are gone)."""
    from . import runstate
    removed, left = runstate.clean()
    for line in removed:
        print(f"k8stopo: removed leftover of a crashed run: {line}", file=sys.stderr)
    for line in left:
        print(f"k8stopo: could not remove leftover {line}", file=sys.stderr)


def _runnable(needs: dict[str, tuple[str, ...]], all_requested: bool) -> tuple[str, ...]:
    """Drop (for ``all``) or refuse (when named) variants this kernel cannot run.

    ``needs`` maps each variant to the doctor probes its cluster requires; only those
    are probed."""
    from . import doctor
    probes = doctor.probe(r for reqs in needs.values() for r in reqs)
    keep = []
    for name, requires in needs.items():
        missing = doctor.missing(requires, probes)
        if not missing:
            keep.append(name)
        elif all_requested:
            print(f"k8stopo: skipping {name}: this machine lacks {', '.join(missing)}",
                  file=sys.stderr)
        else:
            raise SpecError(f"{name} cannot run here: missing {', '.join(missing)} "
                            "(see `k8stopo doctor`)")
    if not keep:
        raise SpecError("none of the requested variants can run here (see `k8stopo doctor`)")
    return tuple(keep)


def _say_caveats(cluster: Cluster) -> None:
    """One line per thing a run cannot show by design (e.g. host-gw across a router);
    ``bench`` says it instead beside each scenario it cannot measure."""
    for line in cluster.caveats():
        print(f"k8stopo: note: {line}", file=sys.stderr)


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor
    from .cni import VARIANTS
    print(doctor.report(doctor.probe_all(), {n: c.requires for n, c in VARIANTS.items()}))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .cluster import Cluster
    _require_root()
    variant = _one_variant(args.cni, "up builds one cluster")
    cni = variant.name
    workload = _workload(args, args.nodes)
    cluster = Cluster(ClusterSpec(cni=cni, nodes=args.nodes, pods_per_node=args.pods_per_node,
                                  mtu=args.mtu, bgp=args.bgp,
                                  route_reflectors=args.route_reflectors,
                                  ipip_mode=args.ipip_mode, underlay=args.underlay,
                                  workload=workload),
                      agents=[*_agents(args, workload, dns=True),
                              *_policy_agents(variant, workload)],
                      keep_on_failure=args.keep_on_failure, variant=variant)
    _runnable({cni: cluster.requires}, False)
    _say_caveats(cluster)
    _clean_dead_runs()
    with cluster:
        from .kubeproxy.model import describe, service_ports
        from .loadbalancer import L2Announcer
        print(cluster.describe(), flush=True)
        if workload is not None:
            print(describe(service_ports(workload, cluster.pods)), flush=True)
        for agent in cluster.agents:
            if isinstance(agent, L2Announcer) and agent.client is not None:
                print(f"  outside client {agent.client.name} {agent.client.ip}; ARP answered: "
                      + ", ".join(f"{ip} by {n}" for ip, n in agent.owners.items()), flush=True)
        if args.cli:
            _mininet_cli(cluster.cli_net())
        else:
            print("cluster is up; Ctrl-C (or SIGTERM) tears it down", flush=True)
            signal.pause()
    return 0


def _mininet_cli(net: object) -> None:
    """Mininet's CLI, taught that '-' belongs in a node name (pod-n1-0)."""
    from mininet.cli import CLI
    from mininet.log import lg, setLogLevel

    class K8sCLI(CLI):
        identchars = CLI.identchars + "-."  # pods from manifests are name.namespace

    if lg.getEffectiveLevel() > 25:  # Mininet prints command output at its "output" level
        setLogLevel("output")
    K8sCLI(net)


def _published(args: argparse.Namespace) -> pandas.DataFrame | None:
    """The published figures to compare with, read up front: a bad file is bad input.
    Without --published, the repository's own copy when it is there."""
    from . import published
    if args.no_published:
        return None
    path = args.published
    if path is None:
        if not published.DEFAULT.is_file():
            return None
        path = published.DEFAULT
    try:
        return published.load_published(path)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def _bench_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the experiment file, then the flags given on the command line."""
    from . import experiment
    settings: dict[str, Any] = {**BENCH_DEFAULTS, "sweep": None, "experiment": "",
                                "kind": "bench"}
    if args.experiment:
        settings.update(experiment.load(args.experiment))
    given = _given(args)
    swept = settings["sweep"][0] if settings["sweep"] else None
    if swept in given:
        raise SpecError(f"--{swept.replace('_', '-')} conflicts with the experiment's sweep over it")
    return {**settings, **given}


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """bench's settings given as flags (they override the experiment file's)."""
    return {k: getattr(args, k) for k in BENCH_DEFAULTS if getattr(args, k) is not None}


def _experiment_out(name: str) -> Path:
    """Where an experiment's rows go without --out: a new file per run."""
    return Path("results", name, f"{name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.csv")


def _bench_spec(s: dict[str, Any]) -> BenchSpec:
    spec = BenchSpec(cnis=cni_names(s["cni"]),
                     scenarios=pick(s["scenarios"], SCENARIOS, "scenario"),
                     protocols=pick(s["protocols"], PROTOCOLS, "protocol"), nodes=s["nodes"],
                     pods_per_node=s["pods_per_node"], duration=s["duration"],
                     repeat=s["repeat"], streams=s["streams"], mtu=s["mtu"],
                     udp_bandwidth=s["udp_bandwidth"], udp_length=s["udp_length"],
                     offloads=s["offloads"],
                     msg_size=s["msg_size"], sweep=s["sweep"], experiment=s["experiment"],
                     bgp=s["bgp"], route_reflectors=s["route_reflectors"],
                     ipip_mode=s["ipip_mode"], underlay=s["underlay"],
                     faults=pick(s["faults"], FAULTS, "fault") if s["faults"] else ())
    spec.check()
    if "node-stopped" in spec.faults:
        from .runstate import cgroup2_root
        if cgroup2_root() is None:
            raise SpecError("fault node-stopped needs cgroup v2 (its freezer); not mounted here")
    for option in ("bgp", "route_reflectors", "ipip_mode"):
        if getattr(spec, option) != getattr(BenchSpec, option) and not any(
                option in variant_class(cni).options for cni in spec.cnis):
            raise SpecError(f"--{option.replace('_', '-')} applies to none of the requested "
                            "variants")
    return spec


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench, environment, plots, results
    _require_root()
    settings = _bench_settings(args)
    if settings["kind"] != "bench":
        return _bench_control_plane(args, settings)
    spec = _bench_spec(settings)
    budget_s = bench.parse_budget(settings["budget"])
    workload = _workload(args, spec.nodes)
    if workload is not None or {"pod-to-service", "pod-to-nodeport"} & set(spec.scenarios):
        from .kubeproxy.scenarios import bench_workload
        workload = bench_workload(spec.nodes, spec.pods_per_node, workload)
    pending = bench.clusters(spec, workload, _agents(args, workload))  # checks their shapes
    name = spec.experiment
    out = args.out
    if args.resume and out is None:
        raise SpecError("--resume needs --out: the CSV of the run to continue")
    if out is None:
        if not name:
            raise SpecError("--out FILE.csv is required without --experiment")
        out = _experiment_out(name)
    plots_dir = args.plots or (Path("results", name, "plots") if name else None)
    results.check_appendable(out)
    results.check_output_dir(bench.raw_root(out), "raw output directory")
    if plots_dir:
        results.check_output_dir(plots_dir, "--plots")
    if args.published and not plots_dir:
        raise SpecError("--published needs --plots DIR (the comparison is written there)")
    pub = _published(args) if plots_dir else None
    tools = tuple(t for protocol in spec.protocols for t in REQUIRES[protocol])
    runnable = _runnable({c.spec.cni: (*c.requires, *tools) for c in pending.values()},
                         settings["cni"].strip() == "all")
    spec = dataclasses.replace(spec, cnis=runnable)
    pending = {key: c for key, c in pending.items() if key[0] in runnable}
    resume = _resume(args, settings, out) if args.resume else None
    if resume is not None and not budget_s and not bench.remaining(bench.plan(spec),
                                                                    resume.done):
        print(f"run {resume.run_id}: every step is already measured in {out}")
        return 0
    _clean_dead_runs()
    command = resume.command if resume else args.command_line
    run_id, failures = bench.run(spec, out, pending, environment.Environment.here(command),
                                 resume=resume, budget_s=budget_s)
    print(f"run {run_id}: rows in {out}")
    if plots_dir:
        df = results.load([out])
        run = df[df.run_id == run_id]
        try:
            written = plots.plot_all(run, plots_dir, pub)
        except ValueError as exc:  # the rows are safe; say why there are no charts
            print(f"k8stopo: no charts drawn: {exc}", file=sys.stderr)
            return 1
        print(f"charts ({sum(p.suffix == '.png' for p in written)}) and summary in {plots_dir} "
              f"({plots_dir / 'summary.md'})")
        for line in plots.closing_lines(run, plots_dir):
            print(line)
    if failures:
        print(f"k8stopo: {failures} measurement(s) or build(s) failed; see the log above",
              file=sys.stderr)
        return 1
    return 0


def _bench_control_plane(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    """bench of a control-plane kind (k8stopo.controlplane): the kind's own loop, with the
    network bench's checks, cleanup, output, environment columns and charts."""
    from . import controlplane, controlplane_plots, environment, results
    from .kubeproxy import DEFAULT_MODE
    k = controlplane.kind(settings["kind"])
    for flag, value in (("--faults", args.faults), ("--manifests", args.manifests),
                        ("--published", args.published),
                        ("--proxy-mode", args.proxy_mode != DEFAULT_MODE)):
        if value:
            raise SpecError(f"{flag} does not apply to a {k.name} experiment")
    params = controlplane.with_flags(k, settings["params"], _given(args))
    needs = k.needs(params)  # every cluster's shape checked, none built
    name = settings["experiment"]
    if args.resume and args.out is None:
        raise SpecError("--resume needs --out: the CSV of the run to continue")
    out = args.out or _experiment_out(name)
    plots_dir = args.plots or Path("results", name, "plots")
    results.check_appendable(out)
    results.check_output_dir(plots_dir, "--plots")
    resume = _resume_control_plane(k, params, out) if args.resume else None
    _runnable(needs, False)
    _clean_dead_runs()
    command = resume.command if resume else args.command_line
    run_id, failures = controlplane.run(k, params, name, out,
                                        environment.Environment.here(command), resume)
    print(f"run {run_id}: rows in {out}")
    df = results.load([out])
    for path in controlplane_plots.charts(df[df.run_id == run_id], plots_dir):
        print(f"  {path}")
    if failures:
        print(f"k8stopo: {failures} cluster(s) failed; see the log above", file=sys.stderr)
        return 1
    return 0


def _resume_control_plane(k: controlplane.Kind, params: object, out: Path
                          ) -> controlplane.Resume:
    """The last run of ``out``, refused unless its recorded command measures the same kind
    with the same parameters (file and flags)."""
    from . import controlplane
    resume = controlplane.last_run(k, out)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its usage error is not ours
            recorded = parser().parse_args(shlex.split(resume.command)[1:])
        settings = _bench_settings(recorded)
        same = settings["kind"] == k.name and controlplane.with_flags(
            k, settings["params"], _given(recorded)) == params
    except (SpecError, SystemExit, ValueError, AttributeError):
        same = False  # not a bench command line of this version, or its file moved
    if not same:
        raise SpecError(f"--resume: the last run in {out} ({resume.run_id}) was "
                        f"{resume.command!r}, which measures something else; refusing to mix")
    return resume


def _resume(args: argparse.Namespace, settings: dict[str, Any], out: Path) -> bench.Resume:
    """The last run of ``out``, refused unless its recorded command asks for what this one
    does: the same settings (experiment file, flags, defaults) and workload; where the rows
    and charts go and how verbose it is may differ."""
    from . import bench
    resume = bench.last_run(out)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its usage error is not ours
            recorded = parser().parse_args(shlex.split(resume.command)[1:])
        same = (recorded.command == "bench" and _bench_settings(recorded) == settings
                and (recorded.manifests, recorded.proxy_mode) == (args.manifests,
                                                                  args.proxy_mode))
    except SpecError as exc:  # e.g. its experiment file, relative to another directory
        raise SpecError(f"--resume: the last run in {out} ({resume.run_id}) was "
                        f"{resume.command!r}, which cannot be read again from here ({exc}); "
                        "resume from the directory it was started in") from exc
    except (SystemExit, ValueError):  # not a bench command line of this version
        same = False
    if not same:
        raise SpecError(f"--resume: the last run in {out} ({resume.run_id}) was "
                        f"{resume.command!r}, which measures something else; refusing to mix")
    return resume


def cmd_plot(args: argparse.Namespace) -> int:
    from . import controlplane_plots, plots, results
    for path in args.csv:
        if not path.is_file():
            raise SpecError(f"no such CSV file: {path}")
    results.check_output_dir(args.out, "--out")
    pub = _published(args)
    try:
        df = results.load(args.csv)
        control = controlplane_plots.control_rows(df)  # control-plane kinds draw their own
        written = controlplane_plots.charts(control, args.out) if not control.empty else []
        if len(control) < len(df):
            written += plots.plot_all(df.drop(control.index), args.out, pub)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    for path in written:
        print(path)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from . import probe
    from .cluster import Cluster
    _require_root()
    variant = _one_variant(args.cni, "probe builds one cluster")
    cni = variant.name
    if args.manifests is None:
        raise SpecError("probe needs --manifests PATH (the pods and Services to probe)")
    protocols = pick(args.protocols, ("tcp", "udp"), "protocol")
    ports = [_port_arg(v.strip()) for v in args.ports.split(",") if v.strip()] \
        if args.ports else None
    if not 1 <= args.count <= 100:
        raise SpecError(f"--count must be between 1 and 100, not {args.count}")
    workload = _workload(args, args.nodes)
    if args.by_name and not (workload and workload.services):
        raise SpecError("--by-name needs Services in the manifests (their names are dialled)")
    cluster = Cluster(ClusterSpec(cni=cni, nodes=args.nodes, pods_per_node=0, mtu=args.mtu,
                                  workload=workload),
                      agents=[*_agents(args, workload, dns=True),
                              *_policy_agents(variant, workload)], variant=variant)
    _runnable({cni: cluster.requires}, False)
    with cluster:
        started = time.monotonic()
        clients = probe.workload_pods(cluster)
        wanted = probe.targets(cluster, ports or probe.declared_ports(cluster), protocols,
                               by_name=args.by_name)
        results = probe.probe(cluster, wanted, args.count, clients=clients, retry=True,
                              parallel=not args.serial)
        log.info("probed %d targets from %d pods in %.1f s", len(wanted), len(clients),
                 time.monotonic() - started)
    if args.json:
        print("\n".join(r.json() for r in results))
    else:
        print(probe.truth_tables(results))
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from . import apppaths, manifests, results
    from .cluster import Cluster
    _require_root()
    exp = apppaths.load(args.experiment)
    workload = manifests.load(exp.manifests, nodes=exp.nodes)
    apppaths.client_of(workload, exp.client)
    out = args.out or Path("results", exp.name,
                           f"{exp.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.csv")
    plots_dir = args.plots or Path("results", exp.name, "plots")
    results.check_appendable(out)
    results.check_output_dir(plots_dir, "--plots")
    probe_args = argparse.Namespace(proxy_mode=exp.proxy_modes[0])
    variant = _one_variant(exp.cni, f"{args.experiment}: an app experiment builds one cluster")
    cni = variant.name

    def agents(wl: Workload, mode: str) -> list[type[Agent]]:
        probe_args.proxy_mode = mode
        return [*_agents(probe_args, wl), *_policy_agents(variant, wl)]

    spec = ClusterSpec(cni=cni, nodes=exp.nodes, pods_per_node=0, workload=workload)
    needs = [Cluster(spec, agents=agents(workload, mode), variant=variant).requires
             for mode in exp.proxy_modes]  # each mode checked now
    _runnable({cni: tuple(r for reqs in needs for r in reqs)}, False)
    _clean_dead_runs()
    run_id = apppaths.run(exp, variant, workload, agents, out, args.command_line)
    print(f"run {run_id}: rows in {out}")
    for path in apppaths.chart(out, run_id, plots_dir):
        print(f"  {path}")
    return 0


def _port_arg(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 65535:
        raise SpecError(f"--ports: {value!r} is not a port number")
    return int(value)


def cmd_scale(args: argparse.Namespace) -> int:
    from . import environment, plots, results, scale
    _require_root()
    variant = _one_variant(args.cni, "scale measures one variant at a time")
    cni = variant.name
    sizes = tuple(_count_arg(v, "--nodes") for v in args.nodes.split(",") if v.strip())
    spec = scale.ScaleSpec(cni=cni, nodes=sizes, pods_per_node=args.pods_per_node,
                           modes=pick(args.bgp_modes, tuple(scale.MODES), "BGP mode"),
                           repeat=args.repeat)
    spec.check()
    results.check_appendable(args.out)
    if args.plots:
        results.check_output_dir(args.plots, "--plots")
    _runnable({cni: variant.requires}, False)
    _clean_dead_runs()
    run_id, failures = scale.run(spec, args.out, environment.Environment.here(args.command_line))
    print(f"run {run_id}: rows in {args.out}")
    if args.plots:
        df = results.load([args.out])
        for path in plots.scale_charts(df, args.plots):
            print(f"  {path}")
    if failures:
        print(f"k8stopo: {failures} cluster(s) failed; see the log above", file=sys.stderr)
        return 1
    return 0


def _count_arg(value: str, flag: str) -> int:
    if not (value.isascii() and value.strip().isdigit()):
        raise SpecError(f"{flag}: {value!r} is not a whole number")
    return int(value)


def cmd_notebooks(args: argparse.Namespace) -> int:
    from . import notebooks, results
    for path in args.notebook:
        if not path.is_file():
            raise SpecError(f"no such notebook: {path}")
    if not args.results.is_dir():
        raise SpecError(f"--results {args.results} is not a directory")
    if args.out is not None:
        results.check_output_dir(args.out, "--out")
    return 1 if notebooks.run(args.notebook, args.results, args.out) else 0


def cmd_clean(args: argparse.Namespace) -> int:
    from . import runstate
    _require_root()
    removed, left = runstate.clean(include_live=args.force)
    print("\n".join(removed) if removed else "nothing left behind by k8stopo runs")
    if left:
        print("k8stopo: could not remove (kept on record, try again):\n  " + "\n  ".join(left),
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.command_line = shlex.join(["k8stopo", *argv])  # recorded on every result row
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        from mininet.log import lg, setLogLevel
    except ImportError:  # `plot` on a machine with the CSVs only
        pass
    else:
        setLogLevel({0: "error", 1: "warning"}.get(args.verbose, "info"))
        lg.propagate = False  # Mininet has its own handler; ours would print everything twice
    # Importing mininet.log makes every later logger a MininetLogger with a handler of its
    # own, so each line of ours would print once per logger up the tree: ours use basicConfig's.
    logging.setLoggerClass(logging.Logger)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.split(".")[0] == "k8stopo" and isinstance(logger, logging.Logger):
            logger.handlers.clear()
            logger.setLevel(logging.NOTSET)  # a MininetLogger's own level (25) hid -v's INFO
    # SIGTERM unwinds like Ctrl-C, so every cluster's teardown runs.
    from . import runstate
    runstate.forget_delivered()
    signal.signal(signal.SIGTERM, lambda *_: runstate.deliver(SystemExit(143)))
    signal.signal(signal.SIGINT, lambda *_: runstate.deliver(KeyboardInterrupt()))
    handler = {"doctor": cmd_doctor, "up": cmd_up, "bench": cmd_bench, "probe": cmd_probe,
               "app": cmd_app, "plot": cmd_plot, "scale": cmd_scale,
               "notebooks": cmd_notebooks, "clean": cmd_clean}[args.command]
    try:
        return handler(args)
    except SpecError as exc:
        print(f"k8stopo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("k8stopo: interrupted; everything this run created was removed", file=sys.stderr)
        return 130
    except RunError as exc:
        # The run failed (a tool, a plugin, a daemon, BGP not converging: errors.py);
        # teardown has already run. Anything else is a bug: its traceback is shown.
        log.debug("failure", exc_info=True)
        print(f"k8stopo: failed: {one_line(exc)} (run with -vv for the commands and a "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
