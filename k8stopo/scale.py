"""The scale benchmark and the BGP experiment: what a cluster's size costs the control plane.

For each size and BGP mode (Calico's node-to-node mesh, one or two route reflectors)
one cluster is built and measured, then torn down:

* bring-up, per phase (underlay, agents, pods, ready) and in all, and teardown, in all and
  per phase (agents' daemons, pods, Mininet, what the run's record still lists);
* for Calico's BIRD variants: BGP sessions (per node at most, and in total, counted from
  ``birdc show protocols``), the time from the first BIRD's start until every node's
  kernel holds every peer's block (``converge_ms``; the pods are attached meanwhile, so
  this is an upper bound when pods are many), and until one node (the last, never a
  reflector) held half and 90% of its peers' blocks (``blocks_50pct_ms``,
  ``blocks_90pct_ms``: a long way from 90% to all is a tail of late blocks); BIRD's CPU
  seconds and memory (VmRSS) per node, average and largest, once converged; and how many
  BIRDs logged "Kernel dropped some netlink messages" (``netlink_drop_birds``: each such
  BIRD fell back to rescanning its kernel table), counted at the end of the run;
* then a node's BIRD is stopped as calico-node stops it (``withdraw_ms``: until no node
  routes to its block any more) and started again (``rejoin_ms``: until every node routes
  to it again, which is what a new node's block costs to spread).

Before each cluster is built, the kernel's freeing of the last one's namespaces (which
goes on after teardown returns) is waited out, so that no cluster is measured against it.
Every value is a clock or counter read during that run; the rows go to the same tidy CSV
as ``bench`` (scenario ``bring-up`` or ``bgp``, protocol ``control``), one per value.
Times are polled: a poll round asks every node once (about a second at a thousand
nodes on two cores), which bounds their resolution; the row's ``poll_ms`` says how long
rounds took.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import __version__, results
from .cluster import Cluster
from .cni import variant
from .cni.base import Variant
from .cni.calico import CalicoBird
from .environment import Environment
from .errors import NotReady, RunError
from .measure import Sample, reason
from .spec import ClusterSpec, SpecError

log = logging.getLogger("k8stopo.scale")

MODES = {"mesh": ("mesh", 1), "rr1": ("rr", 1), "rr2": ("rr", 2)}
EVENT_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 120.0  # the kernel's freeing of the last cluster's namespaces


@dataclass(frozen=True)
class ScaleSpec:
    """One ``k8stopo scale`` invocation: variant × sizes × BGP modes × repeats."""

    cni: str
    nodes: tuple[int, ...]
    pods_per_node: int
    modes: tuple[str, ...] = ("mesh",)
    repeat: int = 1

    @property
    def variant_cls(self) -> type[Variant]:
        """The variant's class, from the registry (SpecError if unknown)."""
        return variant(self.cni)

    def clusters(self) -> Iterator[tuple[int, str, ClusterSpec]]:
        for size in self.nodes:
            for mode in self.modes:
                bgp, reflectors = MODES[mode]
                yield size, mode, ClusterSpec(cni=self.cni, nodes=size,
                                              pods_per_node=self.pods_per_node,
                                              bgp=bgp, route_reflectors=reflectors)

    def check(self) -> None:
        """Every cluster's shape is checked before the first is built."""
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise SpecError(f"unknown BGP mode {unknown[0]!r} (known: {', '.join(MODES)})")
        if not 1 <= self.repeat <= 20:
            raise SpecError(f"--repeat must be between 1 and 20, not {self.repeat}")
        cls = self.variant_cls
        if self.modes != ("mesh",) and not issubclass(cls, CalicoBird):
            raise SpecError(f"BGP modes apply to Calico's BIRD variants, not {self.cni}")
        for size, mode, spec in self.clusters():
            if mode != "mesh" and size < 3:
                raise SpecError(f"BGP mode {mode} needs 3 nodes or more, not {size}")
            Cluster(spec, variant=cls)  # the variant's and the spec's own checks (SpecError)


def _ms(seconds: float) -> Sample:
    return Sample("", seconds * 1000.0, "ms")


def _wait(condition: Callable[[], bool], timeout: float = EVENT_TIMEOUT_S) -> tuple[float, float]:
    """Seconds until ``condition()`` holds, and the longest poll round; NotReady after."""
    started = time.monotonic()
    longest = 0.0
    while True:
        before = time.monotonic()
        done = condition()
        longest = max(longest, time.monotonic() - before)
        if done:
            return time.monotonic() - started, longest
        if time.monotonic() - started > timeout:
            raise NotReady(f"not within {timeout:.0f}s")
        time.sleep(0.05)


def bird_accounts(cluster: Cluster) -> list[tuple[str, Sample]]:
    """The nodes' BIRDs' CPU (user + system seconds since each started) and memory (VmRSS),
    average and largest per node, from /proc; and how many of the run's BIRDs (the routed
    underlay's router's too) logged that the kernel dropped netlink messages meant for them."""
    variant = cluster.variant
    assert isinstance(variant, CalicoBird)
    birds = [variant.birds[n.name] for n in cluster.nodes]
    cpu = [b.cpu_seconds() for b in birds]
    rss = [float(b.rss_kib()) for b in birds]
    return [("bird_cpu_s_per_node", Sample("", sum(cpu) / len(cpu), "s")),
            ("bird_cpu_s_max_node", Sample("", max(cpu), "s")),
            ("bird_rss_per_node", Sample("", sum(rss) / len(rss), "KiB")),
            ("bird_rss_max_node", Sample("", max(rss), "KiB")),
            ("netlink_drop_birds", Sample("", float(len(variant.netlink_drops())), "count"))]


def _spread_ms(variant: CalicoBird, share: float) -> Sample:
    """From the first BIRD's start until the witness node held ``share`` of its peers'
    blocks (:attr:`CalicoBird.witness_blocks`)."""
    assert variant.started_at is not None
    peers = len(variant.cluster.nodes) - 1
    at = next(t for t, held in variant.witness_blocks if held >= share * peers)
    return _ms(at - variant.started_at)


def bgp_samples(cluster: Cluster) -> list[tuple[str, Sample]]:
    """Sessions, memory, convergence, withdrawal and rejoin of one built Calico cluster."""
    variant = cluster.variant
    assert isinstance(variant, CalicoBird)
    assert variant.started_at is not None and variant.converged_at is not None
    sessions = [variant.established(n) for n in cluster.nodes]
    # what the BIRDs cost to converge, before the withdrawal and rejoin add to it
    out = [*bird_accounts(cluster),
           ("bgp_sessions_total", Sample("", float(sum(sessions)), "count")),
           ("bgp_sessions_max_per_node", Sample("", float(max(sessions)), "count")),
           ("blocks_50pct_ms", _spread_ms(variant, 0.5)),
           ("blocks_90pct_ms", _spread_ms(variant, 0.9)),
           ("converge_ms", _ms(variant.converged_at - variant.started_at))]
    # The last node: never a reflector, so what is measured is a client's block.
    node = cluster.nodes[-1]
    block = str(node.pod_cidr)

    def nobody_routes() -> bool:
        return all(block in variant.missing_blocks(n) for n in cluster.nodes if n is not node)

    variant.stop_bird(node)
    withdraw, poll_w = _wait(nobody_routes)
    variant.start_bird(node)
    rejoin, poll_r = _wait(lambda: not variant.missing_everywhere())
    out += [("withdraw_ms", _ms(withdraw)), ("rejoin_ms", _ms(rejoin)),
            ("poll_ms", _ms(max(poll_w, poll_r)))]
    drops = variant.netlink_drops()
    if drops:  # the flag of the run: these BIRDs rescanned their kernel tables
        log.warning("netlink messages dropped for BIRD on %d of %d: %s", len(drops),
                    len(variant.birds), ", ".join(drops[:10]))
    return out


def measure_one(spec: ClusterSpec, cls: type[Variant]) -> list[tuple[str, str, Sample]]:
    """Build one cluster of variant ``cls``, measure it, tear it down: (scenario, metric,
    sample) triples."""
    started = time.monotonic()
    cluster = Cluster(spec, variant=cls)
    with cluster:
        build = time.monotonic() - started
        found = [("bring-up", f"{phase}_ms", _ms(secs)) for phase, secs in cluster.timings.items()]
        found.append(("bring-up", "build_ms", _ms(build)))
        if isinstance(cluster.variant, CalicoBird):
            found += [("bgp", metric, sample) for metric, sample in bgp_samples(cluster)]
    found += [("bring-up", f"{phase}_ms", _ms(secs)) for phase, secs in cluster.timings.items()
              if phase.startswith("teardown")]  # in all, and per phase (Cluster._teardown)
    return found


def netns_cleanup_busy(proc_root: Path = Path("/proc")) -> bool:
    """Whether the kernel is still freeing network namespaces: a kernel worker runs an item
    of the ``netns`` workqueue (its name then ends in ``+netns``, as ps shows)."""
    for comm in proc_root.glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip().endswith("+netns"):
                return True
        except OSError:  # exited meanwhile
            continue
    return False


def wait_netns_cleanup(timeout: float = SETTLE_TIMEOUT_S) -> float:
    """Seconds waited until the kernel has freed the last cluster's namespaces (seen idle
    three times in a row), so that the next cluster is not measured against that work."""
    started = time.monotonic()
    idle = 0
    while idle < 3 and time.monotonic() - started < timeout:
        idle = 0 if netns_cleanup_busy() else idle + 1
        time.sleep(0.1)
    return time.monotonic() - started


def run(spec: ScaleSpec, out: Path, env: Environment) -> tuple[str, int]:
    """Every cluster of ``spec``, one after the other; rows appended as each is measured,
    each saying where and with what it was measured (``env``), as bench's rows do."""
    run_id = results.new_run_id()
    sink = results.CsvSink(out)
    failures = 0
    cls = spec.variant_cls
    bird = issubclass(cls, CalicoBird)
    for repeat in range(spec.repeat):
        for size, mode, cluster_spec in spec.clusters():
            waited = wait_netns_cleanup()
            if waited > 1.0:
                log.info("waited %.1fs for the kernel to free the last cluster's namespaces",
                         waited)
            print(f"scale: {spec.cni} {size} nodes × {spec.pods_per_node} pods, {mode}, "
                  f"repeat {repeat}", flush=True)
            started_at = results.utc_now()
            error = ""
            try:
                found = measure_one(cluster_spec, cls)
            except RunError as exc:
                failures += 1
                log.error("%d nodes %s: %s", size, mode, exc)
                # the failure is a result too (a mesh that does not converge): a row says so
                error = reason(exc)
                found = [("bring-up", results.FAILED, Sample("", 1.0, "count"))]
            for scenario, metric, sample in found:
                ctx = results.Context(
                    run_id=run_id, cni=spec.cni, scenario=scenario, protocol="control",
                    repeat=repeat, nodes=size, pods_per_node=spec.pods_per_node, streams=1,
                    duration_s=0, mtu=cluster_spec.mtu, kernel=env.kernel,
                    k8stopo_version=__version__, client="", server="", client_ip="",
                    server_ip="", raw_file="",
                    extra={"bgp_mode": mode if bird else "", **env.columns(),
                           "experiment": "scale", "error": error})
                sink.write(results.rows(ctx, started_at,
                                        [dataclasses.replace(sample, metric=metric)]))
    return run_id, failures
