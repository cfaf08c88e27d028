"""The experiment runner: variants × scenarios × protocols × repeats -> CSV rows.

Every variant's cluster is built once, up front, and kept up for the whole run;
the measurements are then interleaved (repeat 0 of every variant, then repeat 1
of every variant, …) so that the machine's slow drift (±15% between runs on two
shared cores) spreads over all variants instead of biasing one. Idle clusters
cost nothing but a few sleeping processes. Each measurement's rows are appended
to the CSV (flushed) the moment it ends, and the tool's raw output is kept next
to it, so an interrupted run loses nothing already measured.
"""
from __future__ import annotations

import contextlib
import logging
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from . import __version__, measure, results
from .cluster import Cluster
from .node import Endpoint, Pod
from .spec import BenchSpec

log = logging.getLogger("k8stopo.bench")


def endpoints(cluster: Cluster, scenario: str) -> tuple[Endpoint, Endpoint]:
    """Client and server of a scenario (SPEC's scenario table)."""
    a, b = cluster.nodes[0], cluster.nodes[-1]
    return {
        "host-to-host": lambda: (a, b),
        "pod-to-pod-same-node": lambda: (a.pods[0], a.pods[1]),
        "pod-to-pod-cross-node": lambda: (a.pods[0], b.pods[0]),
        "node-to-pod": lambda: (a, b.pods[0]),
    }[scenario]()


def path_mtu(cluster: Cluster, client: Endpoint, server: Endpoint) -> int:
    """The smaller interface MTU of the two ends (pods carry the CNI's MTU)."""
    def mtu(e: Endpoint) -> int:
        return e.mtu if isinstance(e, Pod) else cluster.spec.mtu
    return min(mtu(client), mtu(server))


@dataclass(frozen=True)
class Step:
    repeat: int
    cni: str
    scenario: str
    protocol: str


def plan(spec: BenchSpec) -> list[Step]:
    """Interleaved order: all variants within a repeat before the next repeat."""
    return [Step(r, cni, scenario, protocol)
            for r in range(spec.repeat) for cni in spec.cnis
            for scenario in spec.scenarios for protocol in spec.protocols]


class Progress:
    """A one-line bar on stderr: done/total, what runs now, time left."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.started = time.monotonic()
        self.tty = stream.isatty()

    def show(self, what: str) -> None:
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done) if self.done else None
        eta = f"{left / 60:.0f}m{left % 60:02.0f}s left" if left is not None else "estimating"
        width = 24
        filled = width * self.done // self.total
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{what} — {eta}")
        self.stream.write(("\r\x1b[K" + line) if self.tty else line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")


def run(spec: BenchSpec, out: Path, pending: dict[str, Cluster],
        progress_stream: TextIO = sys.stderr) -> tuple[str, int]:
    """Run the whole matrix on ``pending`` (one validated, not yet built cluster per
    variant); return (run_id, number of failed measurements)."""
    run_id = results.new_run_id()
    raw_dir = out.parent / f"{out.stem}.raw"
    steps = plan(spec)
    failures = 0
    with contextlib.ExitStack() as stack, results.CsvSink(out) as sink:
        clusters = {}
        for cni, cluster in pending.items():
            log.info("building %s", cni)
            clusters[cni] = stack.enter_context(cluster)
        raw_dir.mkdir(parents=True, exist_ok=True)
        bar = Progress(len(steps), progress_stream)
        said: set[str] = set()
        for step in steps:
            bar.show(f"{step.cni} {step.scenario} {step.protocol} r{step.repeat}")
            cluster = clusters[step.cni]
            why = cluster.impossible(step.scenario)
            if why is not None:  # by design of the real datapath: not measured, not a failure
                if why not in said:
                    said.add(why)
                    progress_stream.write(f"\nk8stopo: note: {why}: {step.scenario} is "
                                          "impossible by design, not measured\n")
                bar.done += 1
                continue
            client, server = endpoints(cluster, step.scenario)
            started_at = results.utc_now()
            try:
                m = measure.measure(client, server, step.protocol, spec.duration,
                                    streams=spec.streams, udp_bandwidth=spec.udp_bandwidth)
            except measure.MeasurementError as exc:
                failures += 1
                log.error("%s %s %s repeat %d failed: %s", step.cni, step.scenario,
                          step.protocol, step.repeat, exc)
                bar.done += 1
                continue
            stem = f"{step.cni}_{step.scenario}_{step.protocol}_r{step.repeat}"
            raw = raw_dir / (stem + (".txt" if step.protocol == "icmp" else ".json"))
            raw.write_text(m.raw)
            if m.server_raw:  # the iperf3 server's own view of the same test
                (raw_dir / f"{stem}.server.json").write_text(m.server_raw)
            ctx = results.Context(
                run_id=run_id, cni=step.cni, scenario=step.scenario, protocol=step.protocol,
                repeat=step.repeat, nodes=spec.nodes, pods_per_node=spec.pods_per_node,
                streams=spec.streams if step.protocol != "icmp" else 1,
                duration_s=spec.duration, mtu=path_mtu(cluster, client, server),
                kernel=platform.release(), k8stopo_version=__version__,
                client=client.name, server=server.name, client_ip=str(client.ip),
                server_ip=str(server.ip), raw_file=str(raw.relative_to(out.parent)))
            sink.write(results.rows(ctx, started_at, m.samples))
            bar.done += 1
        bar.show("done")
        bar.finish()
    return run_id, failures
