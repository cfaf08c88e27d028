"""Control-plane experiments as kinds of ``k8stopo bench`` (``kind:`` in the experiment file).

A network bench measures variants × scenarios × protocols on clusters built once; the
control-plane experiments each build their own clusters in their own order (one per
Service count, one per proxy mode, one updated in between), so each kind brings its own
loop. What they share with bench is everything around that loop, and it lives here: the
parameters read from the file and overridden by bench's flags, the rows (results.CsvSink:
appended, flushed and fsynced as each value is measured, with the environment columns
and a run id), a failed cluster as a ``failed`` row while the run goes on, ``--resume``
by cluster (:class:`Resume`), the raw outputs' directory of the run, and the progress bar. The command
line around it (root check, doctor's check of what the clusters need, cleanup of dead
runs, SIGTERM unwinding through every cluster's ``with``) is bench's own (cli.py).

Kinds (docs/SPEC.md, "Commands"): ``kube-proxy-rules`` and ``kube-proxy-no-retry``
(:mod:`k8stopo.kubeproxy.experiments`), ``dns`` (:mod:`k8stopo.dns.experiment`),
``policy-cost`` (:mod:`k8stopo.policy.cost`).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import importlib
import io
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__, results
from .environment import Environment
from .errors import RunError
from .measure import Sample, reason
from .node import Endpoint
from .spec import SpecError

log = logging.getLogger("k8stopo.controlplane")

#: the network bench: experiments/*.yaml without a ``kind`` key
BENCH = "bench"
#: kind -> the module that defines it (in its ``EXPERIMENTS``); imported only when asked for
KINDS: dict[str, str] = {
    "kube-proxy-rules": "k8stopo.kubeproxy.experiments",
    "kube-proxy-no-retry": "k8stopo.kubeproxy.experiments",
    "dns": "k8stopo.dns.experiment",
    "policy-cost": "k8stopo.policy.cost",
}


@dataclass(frozen=True)
class Panel:
    """One axes of a chart: the median of ``metric`` over repeats (a dot per repeat) against
    ``x``, one series per value of ``by``, of the rows matching ``where``. ``lines`` for a
    numeric ``x`` (``log``: both axes logarithmic), ``bars`` for a categorical one."""

    title: str
    metric: str
    x: str
    by: str
    where: tuple[tuple[str, str], ...] = ()
    scale: float = 1.0
    style: str = "lines"
    log: bool = False


@dataclass(frozen=True)
class Chart:
    """A figure of a kind's rows: ``stem``.png/.svg, its panels side by side."""

    stem: str
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Kind:
    """One control-plane experiment: its parameters, what its clusters need, its loop.

    ``params`` is a frozen dataclass whose every field has a default (the file's keys)
    and whose ``check()`` raises SpecError; ``needs`` builds (validates, does not start)
    the clusters and returns each variant's doctor probes plus the tools measured with;
    ``steps`` counts the progress bar's units and ``run`` measures, calling
    ``Recorder.step`` after each; ``columns`` are the kind's own row columns, ``charts``
    what ``k8stopo plot`` draws of its rows."""

    name: str
    params: type[Any]
    needs: Callable[[Any], dict[str, tuple[str, ...]]]
    steps: Callable[[Any], int]
    run: Callable[[Any, Recorder], None]
    columns: tuple[str, ...]
    charts: tuple[Chart, ...]


def kind(name: str) -> Kind:
    """The kind called ``name``; SpecError naming the known ones."""
    if name not in KINDS:
        raise SpecError(f"unknown kind {name!r} (known: {', '.join([BENCH, *KINDS])})")
    found: dict[str, Kind] = importlib.import_module(KINDS[name]).EXPERIMENTS
    return found[name]


def _typed(key: str, value: Any, default: Any) -> Any:
    """``value`` if it has the type of the key's default (a list for a tuple): a "5", a
    5.0 or a YAML ``true`` would otherwise fail deep in a run, or never."""
    if isinstance(default, tuple):
        item = type(default[0])
        if not isinstance(value, list) or not value or not all(type(v) is item for v in value):
            raise SpecError(f"{key} must be a non-empty list of {item.__name__}, not {value!r}")
        return tuple(value)
    if type(value) is not type(default):  # `is`: a YAML true is no int here
        raise SpecError(f"{key} must be {type(default).__name__}, not {value!r}")
    return value


def params(k: Kind, data: Mapping[str, Any]) -> Any:
    """The kind's parameters from an experiment file's mapping (its keys but ``kind`` and
    ``description``), checked; SpecError for an unknown key or a bad value."""
    known = [f.name for f in dataclasses.fields(k.params)]
    unknown = [key for key in data if key not in known]
    if unknown:
        raise SpecError(f"unknown key {unknown[0]!r} for kind {k.name} (known: "
                        f"{', '.join(['kind', 'description', *known])})")
    found = k.params(**{key: _typed(key, value, getattr(k.params, key))
                        for key, value in data.items()})
    found.check()
    return found


def with_flags(k: Kind, current: Any, given: Mapping[str, Any]) -> Any:
    """``current`` with bench's flags that were given (``--cni a,b``, ``--repeat 1``, …)
    in place of the file's values; a flag the kind has no parameter for is refused."""
    fields = {f.name for f in dataclasses.fields(k.params)}
    changes = {}
    for key, value in given.items():
        flag = "--" + key.replace("_", "-")
        if key not in fields:
            raise SpecError(f"{flag} does not apply to a {k.name} experiment (its "
                            f"parameters: {', '.join(sorted(fields))})")
        default = getattr(k.params, key)
        if isinstance(default, str) and isinstance(value, str) and "," in value:
            raise SpecError(f"{flag}: a {k.name} experiment takes one value, not {value!r}")
        try:
            if isinstance(default, tuple) and isinstance(value, str):  # a comma list
                value = [type(default[0])(v.strip()) for v in value.split(",") if v.strip()]
            changes[key] = _typed(flag, value, default)
        except ValueError as exc:  # int("x")
            raise SpecError(f"{flag}: {exc}") from None
    found = dataclasses.replace(current, **changes)
    found.check()
    return found


def needs_of(*pairs: tuple[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Each variant's doctor probes, merged over the clusters a kind builds."""
    merged: dict[str, tuple[str, ...]] = {}
    for cni, probes in pairs:
        merged[cni] = tuple(dict.fromkeys((*merged.get(cni, ()), *probes)))
    return merged


def _identity(k: Kind, row: Mapping[str, object]) -> tuple[str, ...]:
    """What a row is a value of, whatever its value and time: a resumed run does not
    write a row its interrupted part already holds."""
    return tuple(str(row[c]) for c in ("part", "scenario", "protocol", "metric", "repeat",
                                        *k.columns))


@dataclass(frozen=True)
class Resume:
    """The last run of a CSV: its id and command, the clusters (parts) it finished, and
    the rows of the one it was in when it stopped (that one is measured again, and only
    what it lacked is written); a part is one :meth:`Recorder.attempt`, named in the rows'
    ``part`` column."""

    run_id: str
    command: str
    done: frozenset[str]
    last: str
    written: frozenset[tuple[str, ...]]


def last_run(k: Kind, out: Path) -> Resume:
    """The last run recorded in ``out``; SpecError when there is none of kind ``k``."""
    rows = [r for r in csv.DictReader(io.StringIO(results.complete_text(out)))
            if r.get("run_id")] if out.is_file() else []
    if not rows or rows[-1].get("kind") != k.name:
        raise SpecError(f"--resume: {out} holds no {k.name} run to resume")
    run_id = rows[-1]["run_id"]
    mine = [r for r in rows if r["run_id"] == run_id]
    parts = list(dict.fromkeys(r["part"] for r in mine))
    failed = {r["part"] for r in mine if r["metric"] == results.FAILED}
    last = "" if parts[-1] in failed else parts[-1]
    return Resume(run_id, mine[-1]["command"], frozenset(parts) - {last}, last,
                  frozenset(_identity(k, r) for r in mine if r["part"] == last))


class Recorder:
    """The rows of one run: every row gets results.COLUMNS, the kind's own columns, the
    environment's (cpu_model, iptables_mode, commit, command), ``experiment`` (the
    file's name), ``kind``, ``part`` (its cluster) and ``error``, and is on disk before the
    next value is measured."""

    def __init__(self, k: Kind, experiment: str, run_id: str, env: Environment,
                 sink: results.CsvSink, raw_dir: Path, bar: tqdm[Any],
                 resume: Resume | None = None) -> None:
        self.kind, self.experiment, self.run_id, self.env = k, experiment, run_id, env
        self.sink, self.raw_dir, self.bar, self.resume = sink, raw_dir, bar, resume
        self.failures = 0
        self.part = ""

    def todo(self, what: str, steps: int) -> bool:
        """Whether cluster ``what`` is to be measured: not when the resumed run finished
        it (its ``steps`` of the progress bar are then done)."""
        if self.resume is None or what not in self.resume.done:
            return True
        self.bar.update(steps)
        return False

    @contextlib.contextmanager
    def attempt(self, what: str, **row: Any) -> Iterator[None]:
        """One cluster's build and measurements (part ``what`` of the run): a failure of a tool, a
        daemon or a convergence (RunError, TimeoutError; the cluster has been torn down by
        then) is one ``failed`` row with ``row``'s columns and the reason in ``error``, and
        the run goes on with the next cluster, as bench goes on past a broken variant."""
        self.part = what
        try:
            yield
        except (RunError, TimeoutError) as exc:
            self.failures += 1
            log.error("%s: %s failed: %s", self.kind.name, what, exc)
            self.write([Sample(results.FAILED, 1, "count")], error=reason(exc), **row)

    def write(self, samples: Iterable[Sample], *, cni: str, scenario: str, protocol: str,
              nodes: int, repeat: int = 0, pods_per_node: int = 0, duration_s: float = 0,
              mtu: int = 1500, client: Endpoint | None = None, server: Endpoint | None = None,
              server_ip: str = "", raw_file: str = "", started_at: str | None = None,
              error: str = "", **own: object) -> None:
        """Append one row per sample; ``own`` holds the kind's columns (missing ones empty)."""
        stray = [c for c in own if c not in self.kind.columns]
        if stray:
            raise ValueError(f"{self.kind.name} rows have no column {stray[0]!r}")
        ctx = results.Context(
            run_id=self.run_id, cni=cni, scenario=scenario, protocol=protocol, repeat=repeat,
            nodes=nodes, pods_per_node=pods_per_node, streams=1, duration_s=duration_s,
            mtu=mtu, kernel=self.env.kernel, k8stopo_version=__version__,
            client=client.name if client else "", server=server.name if server else "",
            client_ip=str(client.ip) if client else "",
            server_ip=server_ip or (str(server.ip) if server else ""), raw_file=raw_file,
            extra={**{c: own.get(c, "") for c in self.kind.columns}, **self.env.columns(),
                   "experiment": self.experiment, "kind": self.kind.name, "part": self.part,
                   "error": error})
        rows = results.rows(ctx, started_at or results.utc_now(), samples)
        if self.resume is not None and self.part == self.resume.last:
            rows = [r for r in rows if _identity(self.kind, r) not in self.resume.written]
        self.sink.write(rows)

    def raw(self, name: str, text: str) -> str:
        """Keep a tool's whole output (gzipped) in this run's raw directory, never
        overwriting; the path to put in ``raw_file`` (relative to the CSV's directory)."""
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        path = self.raw_dir / f"{name}.gz"
        again = 1
        while path.exists():  # the interrupted part of a resumed run wrote this one
            again += 1
            path = self.raw_dir / f"{name}.{again}.gz"
        with path.open("xb") as f:
            f.write(gzip.compress(text.encode()))
        return str(path.relative_to(self.sink.path.parent))

    def step(self, what: str) -> None:
        """One unit of the progress bar done (and a line with -v)."""
        log.info("%s: %s", self.kind.name, what)
        self.bar.set_description(what)
        self.bar.update(1)


def run(k: Kind, p: Any, experiment: str, out: Path, env: Environment,
        resume: Resume | None = None, progress_stream: TextIO = sys.stderr) -> tuple[str, int]:
    """Measure kind ``k`` with parameters ``p``, appending to ``out`` (with ``resume``: what
    the last run lacks, under its id); the run id and the number of clusters that failed
    (:meth:`Recorder.attempt`)."""
    run_id = resume.run_id if resume else results.new_run_id()
    raw_dir = out.parent / f"{out.stem}.raw" / run_id
    with results.CsvSink(out) as sink:
        bar = tqdm(total=k.steps(p), file=progress_stream, unit="step", smoothing=0,
                   dynamic_ncols=True, disable=not progress_stream.isatty())
        with bar, (logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext()):
            rec = Recorder(k, experiment, run_id, env, sink, raw_dir, bar, resume)
            k.run(p, rec)
    return run_id, rec.failures
