"""The ``k8stopo`` command line (SPEC: doctor, up, bench, plot, clean).

Bad input exits with status 2 and one line, before anything is created.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Sequence

from . import __version__
from .cni import names as cni_names
from .measure import MeasurementError
from .pods import CNIError
from .proc import CommandError
from .spec import PROTOCOLS, SCENARIOS, BenchSpec, ClusterSpec, SpecError, pick

if TYPE_CHECKING:  # pandas is imported only by the commands that read results
    import pandas

    from .cluster import Cluster

log = logging.getLogger("k8stopo")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2
        self.exit(2, f"k8stopo: error: {message} (see {self.prog} --help)\n")


def _cluster_args(p: argparse.ArgumentParser, nodes: int, pods: int) -> None:
    p.add_argument("--nodes", type=int, default=nodes, help=f"Kubernetes nodes (default {nodes})")
    p.add_argument("--pods-per-node", type=int, default=pods, help=f"pods per node (default {pods})")
    p.add_argument("--mtu", type=int, default=1500, help="underlay MTU (default 1500)")
    p.add_argument("--underlay", default="l2", help="l2: one segment (default); routed: "
                   "two subnets behind a router")


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

    bench = sub.add_parser("bench", help="measure variants × scenarios × protocols into a CSV")
    bench.add_argument("--cni", default="all", help="comma list of variants, or all")
    bench.add_argument("--scenarios", default="host-to-host,pod-to-pod-same-node,"
                       "pod-to-pod-cross-node,node-to-pod")
    bench.add_argument("--protocols", default="tcp,udp,icmp")
    _cluster_args(bench, 2, 2)
    bench.add_argument("--duration", type=int, default=10,
                       help="whole seconds per measurement (iperf3 -t)")
    bench.add_argument("--repeat", type=int, default=3, help="repeats, interleaved across variants")
    bench.add_argument("--streams", type=int, default=1, help="parallel iperf3 streams (-P)")
    bench.add_argument("--udp-bandwidth", default="0",
                       help="iperf3 -b for UDP (default 0: unlimited, as published benchmarks)")
    bench.add_argument("--out", type=Path, required=True, help="CSV to append the rows to")
    bench.add_argument("--plots", type=Path, help="also draw the charts of this run into DIR")
    bench.add_argument("--published", type=Path, metavar="CSV",
                       help="with --plots: also write DIR/published_comparison.md, our ratios "
                       "to host beside these published ones")

    plot = sub.add_parser("plot", help="charts and a summary table from result CSVs")
    plot.add_argument("csv", type=Path, nargs="+")
    plot.add_argument("--out", type=Path, required=True, help="directory for PNG/SVG/summary")
    plot.add_argument("--published", type=Path, metavar="CSV",
                      help="also write OUT/published_comparison.md, our ratios to host beside "
                      "these published ones")

    sub.add_parser("clean", help="remove what crashed k8stopo runs left behind")
    return p


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SpecError("k8stopo creates network namespaces and must run as root")


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
    from .cni import NOT_BUILT, VARIANTS
    print(doctor.report(doctor.probe_all(), {n: c.requires for n, c in VARIANTS.items()}))
    print(f"Not built in this version: {', '.join(NOT_BUILT)}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .cluster import Cluster
    _require_root()
    names = cni_names(args.cni)
    if len(names) != 1 or args.cni.strip() == "all":
        raise SpecError("up builds one cluster: give exactly one --cni variant")
    cni = names[0]
    cluster = Cluster(ClusterSpec(cni=cni, nodes=args.nodes, pods_per_node=args.pods_per_node,
                                  mtu=args.mtu, underlay=args.underlay))
    _runnable({cni: cluster.requires}, False)
    _say_caveats(cluster)
    with cluster:
        print(cluster.describe(), flush=True)
        if args.cli:
            _mininet_cli(cluster.net)
        else:
            print("cluster is up; Ctrl-C (or SIGTERM) tears it down", flush=True)
            signal.pause()
    return 0


def _mininet_cli(net: object) -> None:
    """Mininet's CLI, taught that '-' belongs in a node name (pod-n1-0)."""
    from mininet.cli import CLI
    from mininet.log import lg, setLogLevel

    class K8sCLI(CLI):
        identchars = CLI.identchars + "-"

    if lg.getEffectiveLevel() > 25:  # Mininet prints command output at its "output" level
        setLogLevel("output")
    K8sCLI(net)


def _published(path: Path | None) -> pandas.DataFrame | None:
    """The published figures to compare with, read up front: a bad file is bad input."""
    if path is None:
        return None
    from . import published
    try:
        return published.load_published(path)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def _write_comparison(df: pandas.DataFrame, pub: pandas.DataFrame, out_dir: Path) -> Path:
    """Published figures go to their own file, never into the results or summary."""
    from . import published
    path = out_dir / "published_comparison.md"
    path.write_text(published.comparison_markdown(df, pub))
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench, plots, results
    from .cluster import Cluster
    _require_root()
    all_requested = args.cni.strip() == "all"
    names = cni_names(args.cni)
    spec = BenchSpec(cnis=names, scenarios=pick(args.scenarios, SCENARIOS, "scenario"),
                     protocols=pick(args.protocols, PROTOCOLS, "protocol"), nodes=args.nodes,
                     pods_per_node=args.pods_per_node, duration=args.duration,
                     repeat=args.repeat, streams=args.streams, mtu=args.mtu,
                     udp_bandwidth=args.udp_bandwidth, underlay=args.underlay)
    spec.check()
    clusters = {cni: Cluster(spec.cluster(cni)) for cni in names}  # checks each cluster's shape
    results.check_appendable(args.out)
    if args.published and not args.plots:
        raise SpecError("--published needs --plots DIR (the comparison is written there)")
    pub = _published(args.published)
    spec = dataclasses.replace(spec, cnis=_runnable({c: clusters[c].requires for c in names},
                                                    all_requested))
    run_id, failures = bench.run(spec, args.out, {cni: clusters[cni] for cni in spec.cnis})
    print(f"run {run_id}: rows in {args.out}")
    if args.plots:
        df = results.load([args.out])
        run = df[df.run_id == run_id]
        written = plots.plot_all(run, args.plots)
        if pub is not None:
            written.append(_write_comparison(run, pub, args.plots))
        for path in written:
            print(f"  {path}")
    if failures:
        print(f"k8stopo: {failures} measurement(s) failed; see the log above", file=sys.stderr)
        return 1
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from . import plots, results
    for path in args.csv:
        if not path.is_file():
            raise SpecError(f"no such CSV file: {path}")
    pub = _published(args.published)
    try:
        df = results.load(args.csv)
        written = plots.plot_all(df, args.out)
        if pub is not None:
            written.append(_write_comparison(df, pub, args.out))
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    for path in written:
        print(path)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from . import runstate
    _require_root()
    removed = runstate.clean()
    print("\n".join(removed) if removed else "nothing left behind by k8stopo runs")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from mininet.log import lg, setLogLevel
    setLogLevel({0: "error", 1: "warning"}.get(args.verbose, "info"))
    lg.propagate = False  # Mininet has its own handler; ours would print everything twice
    # SIGTERM unwinds like Ctrl-C, so every cluster's teardown runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    handler = {"doctor": cmd_doctor, "up": cmd_up, "bench": cmd_bench,
               "plot": cmd_plot, "clean": cmd_clean}[args.command]
    try:
        return handler(args)
    except SpecError as exc:
        print(f"k8stopo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("k8stopo: interrupted; everything this run created was removed", file=sys.stderr)
        return 130
    except (CommandError, CNIError, MeasurementError, TimeoutError, RuntimeError) as exc:
        # The run failed (a tool, a plugin, BGP not converging); teardown has already run.
        log.debug("failure", exc_info=True)
        print(f"k8stopo: failed: {exc} (run with -vv for the commands and a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
