"""The experiment runner: variants × sweep points × scenarios × protocols × repeats -> rows.

Every cluster (one per variant and per value of a parameter that shapes the
cluster: MTU, offloads) is built once, up front, and kept up for the whole run;
nothing is measured while one is being built, and no two measurements ever run
at once (they would share the two cores). Measurements are interleaved (repeat 0
of every variant, then repeat 1, …) so that the machine's slow drift spreads over
all variants instead of biasing one. Each measurement's rows are appended to the
CSV (flushed) the moment it ends, and the tool's raw output is kept in a directory
of that run alone, ``<csv stem>.raw/<run_id>/``, so a later run appending to the
same CSV never overwrites what an earlier row's ``raw_file`` points to.

Only what is distinct is measured (docs/bench.md):

* a scenario whose client and server are, by construction, the same namespaces
  and address as an earlier scenario of the same variant is not measured again
  (hostNetwork pods are their node's stack: for ``host``, pod-to-pod-cross-node
  and node-to-pod are host-to-host);
* a scenario the variant's real datapath cannot do (its capability flags say so)
  is not measured: a node reaching its own pods without ``reaches_own_node``, a
  pod IP dialled from another node without ``pod_ip_routable``, a node dialling
  another node's pod without ``nodes_reach_pods``, a pod across the router of the
  routed underlay for a variant with a ``routed_caveat`` (the bench's first and
  last node are always on different subnets there), a Service scenario where
  kube-proxy cannot forward to the pods (``Variant.kube_proxy_reaches_pods``).

Both are printed as one line each before the run starts, never written as rows:
every row holds a value a tool measured, or says that a measurement that was tried
failed (metric ``failed``, the reason in ``error``; the run goes on). A variant whose
cluster fails to build (a :class:`~k8stopo.errors.RunError`: a tool, a plugin, a daemon)
gets such a row for each of its planned measurements, with no client, server or path
MTU, and the other variants are measured.

With ``faults`` (k8stopo.faults), each repeat's regular steps are followed by the same
scenarios and protocols measured again under each fault in turn, one measurement per
injection, tagged in the ``fault`` column. With a budget (``--budget``), the planned repeats
are followed by verdict rounds (:func:`settle`): host-to-host and cross-node TCP of only the
variants whose verdict pairs are still undecided, until the budget or the undecided pairs
run out; their rows are ordinary rows, the repeat index going on. ``--resume`` (:func:`last_run`,
:func:`remaining`) continues the last run of a CSV: the plan is the same, so the steps it
had measured are the first ones of each (variant, scenario, protocol, repeat, fault).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

import pandas as pd
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__, faults, measure, results, runstate, verdict
from .agent import Agent
from .cluster import Cluster
from .cni import variant as variant_class
from .cni.base import Variant
from .dns import ClusterDNS
from .dns import perf as _dnsperf  # noqa: F401 (registers the dns protocol)
from .environment import Environment
from .errors import RunError, one_line
from .kubeproxy.scenarios import SERVICE_SCENARIOS, service_ends
from .node import Endpoint, Pod
from .results import FAILED
from .spec import CLUSTER_PARAMS, BenchSpec, SpecError
from .topo import segment_index
from .workload import Workload

log = logging.getLogger("k8stopo.bench")


# --- where each scenario's ends are -------------------------------------------------

@dataclass(frozen=True)
class Place:
    """One end of a scenario: a node's own stack (``pod`` None) or one of its pods.
    ``node`` 0 is node A, -1 node B (the last)."""

    node: int
    pod: int | None = None


#: SPEC's scenario table as data: (client, server)
SCENARIO_ENDS: dict[str, tuple[Place, Place]] = {
    "host-to-host": (Place(0), Place(-1)),
    "pod-to-pod-same-node": (Place(0, 0), Place(0, 1)),
    "pod-to-pod-cross-node": (Place(0, 0), Place(-1, 0)),
    "node-to-pod": (Place(0), Place(-1, 0)),
}
#: scenarios whose server is an agent's Service, not a pod of the plan: agent class
SERVICE_ENDS: dict[str, type[Agent]] = {"pod-to-dns": ClusterDNS}
#: protocols that go with one scenario only (dnsperf asks cluster DNS, nothing else)
ONLY_WITH: dict[str, str] = {"dns": "pod-to-dns"}


def agents(spec: BenchSpec) -> list[type[Agent]]:
    """The agents beside the variant that the scenarios need."""
    return list(dict.fromkeys(SERVICE_ENDS[s] for s in spec.scenarios if s in SERVICE_ENDS))


def endpoints(cluster: Cluster, scenario: str) -> tuple[Endpoint, str, Endpoint]:
    """(client, address the client dials, endpoint the server runs in) of a scenario."""
    def resolve(place: Place) -> Endpoint:
        node = cluster.nodes[place.node]
        return node if place.pod is None else node.pods[place.pod]
    if scenario in SERVICE_SCENARIOS:  # kube-proxy sends the Service's address to a backend
        client, address, port, backend = service_ends(cluster, scenario)
        return client, f"{address}:{port}", backend
    if scenario in SERVICE_ENDS:
        agent = next(a for a in cluster.agents if isinstance(a, SERVICE_ENDS[scenario]))
        server = agent.service_endpoint()  # type: ignore[attr-defined]
        return resolve(Place(0, 0)), str(server.ip), server
    client, server = (resolve(p) for p in SCENARIO_ENDS[scenario])
    return client, str(server.ip), server


def not_measured(cls: type[Variant], scenarios: tuple[str, ...], nodes: int,
                 underlay: str = "l2") -> dict[str, str]:
    """Scenarios of ``cls`` left out, each with the reason (module docstring)."""
    def node_of(place: Place) -> int:
        return place.node % nodes

    def as_built(place: Place) -> Place:  # a hostNetwork pod is its node's own stack
        return Place(node_of(place), None if cls.host_network else place.pod)

    def subnet_of(place: Place) -> int:
        return segment_index(node_of(place), nodes, underlay)

    reasons: dict[str, str] = {}
    seen: dict[tuple[Place, Place], str] = {}
    for scenario in scenarios:
        if scenario in SERVICE_SCENARIOS and not cls.kube_proxy_reaches_pods():
            reasons[scenario] = (f"impossible by design: kube-proxy on a {cls.name} node "
                                 "cannot forward to its pods")
        if scenario in SERVICE_ENDS or scenario in SERVICE_SCENARIOS:
            continue
        client, server = SCENARIO_ENDS[scenario]
        cross = node_of(client) != node_of(server)
        to_pod = server.pod is not None and not cls.host_network
        if to_pod and cross and not cls.pod_ip_routable:
            reasons[scenario] = (f"impossible by design: {cls.name}'s pod IPs are not "
                                 "routable from other nodes")
        elif to_pod and client.pod is None and cross and not cls.nodes_reach_pods:
            reasons[scenario] = (f"impossible by design: {cls.name}'s nodes have no route "
                                 "into the pod network")
        elif to_pod and client.pod is None and not cross and not cls.reaches_own_node:
            reasons[scenario] = f"impossible by design: a {cls.name} node cannot reach its own pods"
        elif to_pod and cls.routed_caveat and subnet_of(client) != subnet_of(server):
            reasons[scenario] = f"impossible by design on the routed underlay: {cls.routed_caveat}"
        else:
            ends = (as_built(client), as_built(server))
            if ends in seen:
                reasons[scenario] = (f"identical to {seen[ends]} by construction (same "
                                     "namespaces, same address)")
            else:
                seen[ends] = scenario
    return reasons


# --- the plan -------------------------------------------------------------------------

ClusterKey = tuple[object, ...]  # (cni, *CLUSTER_PARAMS values)


def cluster_key(cni: str, point: BenchSpec) -> ClusterKey:
    return (cni, *(getattr(point, p) for p in CLUSTER_PARAMS))


@dataclass(frozen=True)
class Step:
    repeat: int
    cni: str
    point: BenchSpec  # the spec at one sweep value (sweep None)
    scenario: str
    protocol: str
    fault: str = ""  # measured under this fault (k8stopo.faults); "" for a regular step

    @property
    def key(self) -> tuple[str, str, str, int, str]:
        """What a row records of its step (the sweep value not always: see remaining)."""
        return (self.cni, self.scenario, self.protocol, self.repeat, self.fault)


def not_under_fault(fault: str, scenario: str) -> str | None:
    """Why ``scenario`` is not measured under ``fault`` (None: it is). A fault hits the
    server's node, which only the scenario table and the Service scenarios fix (their
    backend is on another node than the client); a stopped node runs no client."""
    if scenario in SERVICE_SCENARIOS:
        return None
    if scenario not in SCENARIO_ENDS:
        return "its server's node is not fixed by the scenario"
    client, server = SCENARIO_ENDS[scenario]
    if faults.FAULTS[fault].needs_other_node and client.node == server.node:
        return "its client runs on the stopped node"
    return None


def plan(spec: BenchSpec) -> list[Step]:
    """Interleaved order: every variant and sweep point within a repeat before the next
    repeat, then the same under each fault; scenarios that are not measured
    (:func:`not_measured`, :func:`not_under_fault`) are left out."""
    kept = {cni: [s for s in spec.scenarios
                  if s not in not_measured(variant_class(cni), spec.scenarios, spec.nodes,
                                           spec.underlay)]
            for cni in spec.cnis}
    return [Step(r, cni, point, scenario, protocol, fault)
            for r in range(spec.repeat) for fault in ("", *spec.faults) for cni in spec.cnis
            for point in spec.points() for scenario in kept[cni] for protocol in spec.protocols
            if ONLY_WITH.get(protocol, scenario) == scenario
            and (scenario not in ONLY_WITH.values() or protocol in ONLY_WITH)
            and (scenario not in SERVICE_SCENARIOS or protocol in ("tcp", "udp"))
            and not (fault and not_under_fault(fault, scenario))]


def skipped_lines(spec: BenchSpec) -> list[str]:
    """One line per variant and scenario that the plan leaves out, with why."""
    lines = [f"not measured: {cni} {scenario}: {why}" for cni in spec.cnis
             for scenario, why in not_measured(variant_class(cni), spec.scenarios,
                                               spec.nodes, spec.underlay).items()]
    return lines + [f"not measured under {fault}: {scenario}: {why}" for fault in spec.faults
                    for scenario in spec.scenarios
                    if (why := not_under_fault(fault, scenario))]


# --- resuming an interrupted run -------------------------------------------------------

@dataclass(frozen=True)
class Resume:
    """What the last run of a CSV holds: its id, its command, and the measurements on
    record per step key."""

    run_id: str
    command: str
    done: Counter[tuple[str, str, str, int, str]]


def last_run(out: Path) -> Resume:
    """The last run recorded in ``out`` (the run of its last row); SpecError if none.

    A measurement is one raw file (a failed one has its ``.error.txt``), so it counts once
    whatever number of rows it wrote."""
    rows = [r for r in csv.DictReader(io.StringIO(results.complete_text(out)))
            if r.get("run_id")] if out.is_file() else []
    if not rows:
        raise SpecError(f"--resume: {out} holds no run to resume")
    run_id = rows[-1]["run_id"]
    mine = [r for r in rows if r["run_id"] == run_id]
    raws = {r["raw_file"]: r for r in mine}
    done = Counter((r["cni"], r["scenario"], r["protocol"], int(r["repeat"]), r.get("fault") or "")
                   for r in raws.values())
    return Resume(run_id, mine[-1].get("command") or "", done)


def remaining(steps: list[Step], done: Counter[tuple[str, str, str, int, str]]) -> list[Step]:
    """The steps not yet measured: of each key's steps (one per sweep value, in plan
    order, which is measurement order), the first ``done[key]`` are."""
    seen: Counter[tuple[str, str, str, int, str]] = Counter()
    left = []
    for step in steps:
        if seen[step.key] < done[step.key]:
            seen[step.key] += 1
        else:
            left.append(step)
    return left


def clusters(spec: BenchSpec, workload: Workload | None = None,
             extra: Sequence[type[Agent]] = ()) -> dict[ClusterKey, Cluster]:
    """One (validated, not yet built) cluster per variant and cluster-shaping point, with
    the manifests' ``workload`` and the agents serving it (``extra``: pods' servers,
    kube-proxy) beside those the scenarios need."""
    from . import policy
    enforce = workload is not None and bool(workload.network_policies)
    return {cluster_key(cls.name, point): Cluster(
                dataclasses.replace(point.cluster(cls.name, cls.options), workload=workload),
                [*extra, *(policy.agents_for(cls) if enforce else []), *agents(spec)],
                variant=cls)
            for cls in map(variant_class, spec.cnis) for point in spec.points()}


# --- running it -----------------------------------------------------------------------

def path_mtu(cluster: Cluster, client: Endpoint, server: Endpoint) -> int:
    """The smaller interface MTU of the two ends (pods carry the CNI's MTU)."""
    def mtu(e: Endpoint) -> int:
        return e.mtu if isinstance(e, Pod) else cluster.spec.mtu
    return min(mtu(client), mtu(server))


def raw_root(out: Path) -> Path:
    """Where the raw outputs of the runs appending to ``out`` go, one directory per run."""
    return out.parent / f"{out.stem}.raw"


def _build(stack: contextlib.ExitStack, pending: dict[ClusterKey, Cluster]
           ) -> tuple[dict[ClusterKey, Cluster], dict[ClusterKey, RunError]]:
    """Build every cluster. One that fails (a tool, a plugin, a daemon, BGP not converging)
    has torn itself down; it is reported once and left out, its error kept so that its
    steps are recorded as failed while the other variants are measured."""
    built: dict[ClusterKey, Cluster] = {}
    failed: dict[ClusterKey, RunError] = {}
    for key, cluster in pending.items():
        log.info("building %s", cluster.spec.cni)
        try:
            built[key] = stack.enter_context(cluster)
        except RunError as exc:
            failed[key] = exc
            log.error("%s (mtu %s, offloads %s) failed to build: %s; its measurements are "
                      "recorded as failed", cluster.spec.cni, cluster.spec.mtu,
                      cluster.spec.offloads, one_line(exc))
    return built, failed


def _context(run_id: str, spec: BenchSpec, step: Step, env: Environment, cluster: Cluster,
             ends: tuple[Endpoint, str, Endpoint] | None, raw_file: str, error: str = ""
             ) -> results.Context:
    """A step's row context; ``ends`` None for a cluster that failed to build (no client,
    server or path MTU: nothing was built to have them)."""
    client, target, server = ends if ends else (None, "", None)  # server_ip: the address dialled
    p = step.point
    return results.Context(
        run_id=run_id, cni=step.cni, scenario=step.scenario, protocol=step.protocol,
        repeat=step.repeat, nodes=p.nodes, pods_per_node=p.pods_per_node,
        streams=p.streams if step.protocol in ("tcp", "udp") else 1,
        duration_s=p.duration, kernel=env.kernel, k8stopo_version=__version__,
        mtu=path_mtu(cluster, client, server) if client and server else None,
        client=client.name if client else "", server=server.name if server else "",
        client_ip=str(client.ip) if client else "", server_ip=target.split(":")[0],
        raw_file=raw_file,
        extra={"udp_bandwidth": p.udp_bandwidth if step.protocol == "udp" else "",
               "udp_length": (p.udp_length or "") if step.protocol == "udp" else "",
               "msg_size": p.msg_size if step.protocol == "tcp_rr" else "",
               "offloads": p.offloads, "underlay": p.underlay, "underlay_mtu": p.mtu,
               "bgp_mode": _bgp_mode(step.cni, p), "ipip_mode": _own(step.cni, p, "ipip_mode"),
               **env.columns(), "experiment": spec.experiment,
               "fault": step.fault, "error": error})


#: the parameter and environment columns every bench row adds to results.COLUMNS
EXTRA_COLUMNS = ("udp_bandwidth", "udp_length", "msg_size", "offloads", "underlay",
                 "underlay_mtu", "bgp_mode", "ipip_mode", "cpu_model", "iptables_mode", "commit", "command",
                 "experiment", "fault", "error")


def _own(cni: str, point: BenchSpec, option: str) -> object:
    """A variant's own option's value on its rows (empty for variants without it)."""
    return getattr(point, option) if option in variant_class(cni).options else ""


def _bgp_mode(cni: str, point: BenchSpec) -> str:
    if "bgp" not in variant_class(cni).options:
        return ""
    return "mesh" if point.bgp == "mesh" else f"rr{point.route_reflectors}"


def run(spec: BenchSpec, out: Path, pending: dict[ClusterKey, Cluster], env: Environment,
        progress_stream: TextIO = sys.stderr, resume: Resume | None = None,
        budget_s: float = 0.0) -> tuple[str, int]:
    """Run the whole matrix on ``pending`` (from :func:`clusters`, validated, not built),
    or with ``resume`` what the last run of ``out`` lacks, under its run id (only the
    clusters still needed are built); then, within ``budget_s`` seconds counted from
    here, verdict rounds while they can settle pairs (:func:`settle`); return (run_id,
    number of failed measurements and builds)."""
    deadline = time.monotonic() + budget_s
    run_id = resume.run_id if resume else results.new_run_id()
    todo = remaining(plan(spec), resume.done) if resume else plan(spec)
    needed = todo + (verdict_round(spec, spec.cnis, 0, run_id) if budget_s else [])
    pending = {k: c for k, c in pending.items()
               if any(cluster_key(s.cni, s.point) == k for s in needed)}
    for line in skipped_lines(spec):
        print(f"k8stopo: {line}", file=progress_stream)
    with contextlib.ExitStack() as stack, results.CsvSink(out) as sink:
        built, failed = _build(stack, pending)
        steps = [s for s in todo if cluster_key(s.cni, s.point) in built]
        raw_dir = raw_root(out) / run_id
        raw_dir.mkdir(parents=True, exist_ok=resume is not None)  # a new run id is never reused
        # numbering goes on after every file there, a crash's orphan without a row included
        numbers = (re.match(r"\d+", f.name) for f in raw_dir.iterdir())
        writer = _Writer(run_id, spec, env, sink, raw_dir, out.parent,
                         max((int(n.group()) for n in numbers if n), default=0))
        for step in todo:  # a broken variant's steps: rows that say so, the others go on
            if (key := cluster_key(step.cni, step.point)) in failed:
                writer.unbuilt(pending[key], step, failed[key])
        bar = tqdm(total=len(steps), file=progress_stream, unit="measurement",
                   smoothing=0, dynamic_ncols=True, disable=not progress_stream.isatty())

        def measure_steps(todo: list[Step]) -> None:
            if bar.n + len(todo) > (bar.total or 0):  # a verdict round: more than the plan
                bar.total = bar.n + len(todo)
                bar.refresh()
            for cell in _cells(todo):
                runstate.raise_delivered()  # a signal whose exception was swallowed
                bar.set_description(f"{cell[0].cni} {cell[0].scenario} r{cell[0].repeat}")
                cluster = built[cluster_key(cell[0].cni, cell[0].point)]
                (_measure_faulted if cell[0].fault else _measure_cell)(cluster, cell, writer)
                bar.update(len(cell))  # per cell: a cell's measurements end together

        with bar, (logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext()):
            started = time.monotonic()
            measure_steps(steps)
            if budget_s:
                per_step = (time.monotonic() - started) / max(len(steps), 1)
                settle(spec, [c for c in spec.cnis if any(k[0] == c for k in built)],
                       lambda: _rows_of(out, run_id), measure_steps, Clock(deadline), per_step,
                       run_id, lambda d, t: bar.set_postfix_str(f"pairs resolved {d}/{t}"))
        return run_id, len(failed) + writer.failures


def _rows_of(out: Path, run_id: str) -> pd.DataFrame:
    df = results.load([out])
    return df[df["run_id"] == run_id]


# --- rounds until settled (--budget) ---------------------------------------------------

_BUDGET = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600}
BASELINE_SCENARIO = "host-to-host"
CROSS_NODE_SCENARIO = "pod-to-pod-cross-node"


def parse_budget(text: str) -> float:
    """``8m``, ``90s``, ``90``, ``1h`` or ``0`` (no extra rounds) -> seconds; SpecError else."""
    match = _BUDGET.fullmatch(str(text).strip())
    if not match:
        raise SpecError(f"--budget: {text!r} is not a duration such as 8m, 90s or 0")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def verdict_round(spec: BenchSpec, cnis: Sequence[str], repeat: int, seed: str,
                  metrics: Sequence[str] = verdict.DEFAULT_METRICS) -> list[Step]:
    """The steps of one verdict round: for each of ``cnis`` (in an order shuffled per round,
    ``seed`` and ``repeat`` fixing it) and sweep point, what the verdict metrics need, as
    the plan would measure it: host-to-host TCP right before pod-to-pod-cross-node (the two
    halves of a TCP ratio), cross-node the metrics' protocols. A variant the plan does not
    measure cross-node is left out."""
    protocols = list(dict.fromkeys(verdict.METRICS[m].protocol for m in metrics))
    base = {(s.cni, s.point, s.scenario, s.protocol) for s in plan(spec)
            if s.repeat == 0 and not s.fault}
    wanted = [(BASELINE_SCENARIO, "tcp")] if "tcp" in protocols else []
    wanted += [(CROSS_NODE_SCENARIO, p) for p in protocols]
    order = list(cnis)
    random.Random(f"{seed}-{repeat}").shuffle(order)
    steps = []
    for cni in order:
        for point in spec.points():
            mine = [Step(repeat, cni, point, scenario, protocol) for scenario, protocol in wanted
                    if (cni, point, scenario, protocol) in base]
            if any(s.scenario == CROSS_NODE_SCENARIO for s in mine):
                steps += mine
    return steps


@dataclass
class Clock:
    """Seconds left until a deadline (a test gives a fake ``now``)."""

    deadline: float
    now: Callable[[], float] = time.monotonic

    def left(self) -> float:
        return self.deadline - self.now()


def settle(spec: BenchSpec, cnis: Sequence[str], rows: Callable[[], pd.DataFrame],
           measure_steps: Callable[[list[Step]], None], clock: Clock, per_step: float,
           seed: str, progress: Callable[[int, int], None] = lambda decided, total: None,
           metrics: Sequence[str] = verdict.DEFAULT_METRICS) -> int:
    """Verdict rounds after the planned repeats while the budget lasts; returns how many ran.

    Before each round the verdict is decided again from ``rows()`` (every row of the run so
    far). The round measures only the variants of undecided pairs that more rounds could
    still settle (:func:`k8stopo.verdict.next_round`, told how many rounds the time left
    buys), and runs only if its cost fits in the time left: ``per_step`` seconds a
    measurement, measured (the planned steps' average at first, then the last round's).
    Its repeat index goes on after the run's last one, so its rows are ordinary rows.
    """
    done = 0
    full = verdict_round(spec, cnis, 0, seed, metrics)
    while True:
        df = rows()
        rounds_more = max(1, int(clock.left() // max(per_step * len(full), 1e-9)))
        want, decided, undecided = verdict.next_round(df, metrics, rounds_more=rounds_more)
        progress(decided, decided + undecided)
        repeat = int(df["repeat"].max()) + 1 if len(df) else spec.repeat
        steps = verdict_round(spec, [c for c in cnis if c in want], repeat, seed, metrics)
        if not steps:
            log.info("verdict: %d pairs decided, %d undecided; no round can settle more",
                     decided, undecided)
            return done
        if per_step * len(steps) > clock.left():
            log.info("verdict: a round of %d measurements (~%.0f s) does not fit in the %.0f s "
                     "of budget left", len(steps), per_step * len(steps), clock.left())
            return done
        log.info("verdict round %d: %s", repeat, ", ".join(want))
        started = clock.now()
        measure_steps(steps)
        per_step = (clock.now() - started) / len(steps)
        done += 1


def _cells(steps: list[Step]) -> list[list[Step]]:
    """Consecutive steps of one variant, point, scenario and repeat: one cell."""
    cells: list[list[Step]] = []
    for step in steps:
        if cells and _cell_of(cells[-1][0]) == _cell_of(step):
            cells[-1].append(step)
        else:
            cells.append([step])
    return cells


def _cell_of(step: Step) -> tuple[object, ...]:
    return (step.repeat, step.cni, step.point, step.scenario, step.fault)


class _Writer:
    """Turns one step's measurement (or failure) into rows and a raw file of this run."""

    def __init__(self, run_id: str, spec: BenchSpec, env: Environment, sink: results.CsvSink,
                 raw_dir: Path, csv_dir: Path, index: int = 0) -> None:
        self.run_id, self.spec, self.env, self.sink = run_id, spec, env, sink
        self.raw_dir, self.csv_dir = raw_dir, csv_dir
        self.index = index  # numbers the raw files in the order they were measured
        self.failures = 0

    def write(self, cluster: Cluster, step: Step, started_at: str,
              m: measure.Measurement | measure.MeasurementError) -> None:
        """A measurement's rows, or one ``failed`` row with the reason; either way a raw
        file (a failure's holds the whole message), created exclusively."""
        ends = endpoints(cluster, step.scenario)
        if isinstance(m, measure.MeasurementError):
            # under a fault a failure is the expected outcome, not a failure of the run
            self.failures += not step.fault
            log.log(logging.INFO if step.fault else logging.ERROR,
                    "%s %s %s repeat %d%s failed: %s", step.cni, step.scenario, step.protocol,
                    step.repeat, f" under {step.fault}" if step.fault else "", m)
            self._failed(cluster, step, started_at, ends, m)
            return
        stem = self._stem(step)
        if m.server_raw:  # the iperf3 server's own view of the same test
            with (self.raw_dir / f"{stem}.server.json").open("x") as f:
                f.write(m.server_raw)
        self._rows(cluster, step, started_at, ends, self.raw_dir / (stem + m.suffix), m.raw,
                   "", m.samples)

    def unbuilt(self, cluster: Cluster, step: Step, exc: RunError) -> None:
        """One ``failed`` row for a step whose cluster failed to build (counted once per
        cluster by :func:`run`, not per step)."""
        self._failed(cluster, step, results.utc_now(), None, exc)

    def _failed(self, cluster: Cluster, step: Step, started_at: str,
                ends: tuple[Endpoint, str, Endpoint] | None, exc: RunError) -> None:
        self._rows(cluster, step, started_at, ends, self.raw_dir / f"{self._stem(step)}.error.txt",
                   f"{exc}\n", measure.reason(exc), [measure.Sample(FAILED, 1, "count")])

    def _stem(self, step: Step) -> str:
        """The next raw file's name without suffix (numbered in the order measured)."""
        self.index += 1
        fault = f"_{step.fault}" if step.fault else ""
        return (f"{self.index:04d}_{step.cni}_{step.scenario}_{step.protocol}_r{step.repeat}"
                f"{fault}")

    def _rows(self, cluster: Cluster, step: Step, started_at: str,
              ends: tuple[Endpoint, str, Endpoint] | None, raw: Path, text: str, error: str,
              samples: Sequence[results.Sample]) -> None:
        with raw.open("x") as f:  # "x": never overwrite
            f.write(text)
        ctx = _context(self.run_id, self.spec, step, self.env, cluster, ends,
                       str(raw.relative_to(self.csv_dir)), error)
        self.sink.write(results.rows(ctx, started_at, samples))


Outcome = tuple[str, measure.Measurement | measure.MeasurementError]  # (started_at, result)


def _params(point: BenchSpec) -> measure.Params:
    return measure.Params(duration=point.duration, streams=point.streams,
                          udp_bandwidth=point.udp_bandwidth, msg_size=point.msg_size,
                          udp_length=point.udp_length)


def _one(cluster: Cluster, step: Step) -> Outcome:
    client, target, server = endpoints(cluster, step.scenario)
    log.info("%s %s %s repeat %d", step.cni, step.scenario, step.protocol, step.repeat)
    started_at = results.utc_now()
    try:
        return started_at, measure.measure(client, target, server, step.protocol,
                                           _params(step.point))
    except measure.MeasurementError as exc:
        return started_at, exc


def _measure_faulted(cluster: Cluster, cell: list[Step], writer: _Writer) -> None:
    """Each step of a cell under its fault, injected on the scenario's server side for
    that one measurement and lifted (the cluster ready again) before the next."""
    for step in cell:
        with faults.injected(step.fault, cluster, endpoints(cluster, step.scenario)[2]):
            outcome = _one(cluster, step)
        writer.write(cluster, step, *outcome)


def _measure_cell(cluster: Cluster, cell: list[Step], writer: _Writer) -> None:
    """Measure one cell's protocols, one at a time, and write their rows in plan order.

    With tcp_rr in the cell, the others that fit are measured while sockperf sits in its
    fixed idle sleep (:class:`measure.TcpRR`); if one overran it, the test and the
    measurements run in that time are thrown away and measured again one after another.
    """
    outcomes: dict[str, Outcome] = {}
    rr = next((s for s in cell if s.protocol == "tcp_rr"), None)
    params = _params(cell[0].point)
    hosted = [s for s in cell if s.protocol in
              measure.fits_idle([s.protocol for s in cell], params)] if rr else []
    if rr is not None and hosted:
        client, target, server = endpoints(cluster, rr.scenario)
        started_at = results.utc_now()
        try:
            with measure.TcpRR(client, target, server, params) as sockperf:
                with sockperf.idle():
                    for step in hosted:
                        outcomes[step.protocol] = _one(cluster, step)
                outcomes["tcp_rr"] = (started_at,
                                      measure.measurement("tcp_rr", sockperf.run()))
        except measure.Overlap as exc:
            log.warning("%s %s repeat %d: %s; measuring them again one by one", rr.cni,
                        rr.scenario, rr.repeat, exc)
            outcomes.clear()
        except measure.MeasurementError as exc:
            outcomes["tcp_rr"] = (started_at, exc)
    for step in cell:
        if step.protocol not in outcomes:
            outcomes[step.protocol] = _one(cluster, step)
    for step in cell:
        writer.write(cluster, step, *outcomes[step.protocol])
