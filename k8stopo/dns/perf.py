"""dnsperf (Debian's, 2.10) from a pod against cluster DNS, turned into SPEC's dns metrics.

``queries_per_s`` and ``latency_avg_ms`` are dnsperf's own summary lines of the run;
this dnsperf has no latency histogram (``-O latency-histogram`` came later), so
``latency_p99_ms`` is the nearest-rank 99th percentile of the per-query latencies
that the same run prints with ``-v`` (``> NOERROR name A 0.000313``): every value
comes from that run's own output, never from another run. Lost queries (timeouts)
have no latency; the run fails when none completed.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from .. import proc
from ..measure import (
    PROTOCOLS,
    REQUIRES,
    CpuTimes,
    Measurement,
    MeasurementError,
    Params,
    Run,
    Sample,
    percentile,
    read_cpu,
)
from ..node import Endpoint

OUTSTANDING = 100  # dnsperf's default -q: the latency is that of a saturated server
TIMEOUT_S = 5  # dnsperf's default -t
GRACE_S = 30
ONCE_S_PER_QUERY = 0.05  # bound for a pass through the list (-q 1 does ~150/s here)
QUERIES_FILE = "service-queries.txt"  # in the run's dns state directory

_QPS = re.compile(r"Queries per second:\s+([\d.]+)")
_AVG = re.compile(r"Average Latency \(s\):\s+([\d.]+)")
_COMPLETED = re.compile(r"Queries completed:\s+(\d+)")
_QUERY = re.compile(r"^> \S+ \S+ \S+ ([\d.]+)$", re.MULTILINE)


def parse_dnsperf(text: str) -> list[Sample]:
    """SPEC dns metrics from one ``dnsperf -v`` run's stdout."""
    completed = _COMPLETED.search(text)
    if completed is None:
        raise MeasurementError(f"dnsperf output has no statistics: "
                               f"{text.strip()[-200:] or 'empty'}")
    if int(completed.group(1)) == 0:
        raise MeasurementError("dnsperf: no query completed")
    qps, avg = _QPS.search(text), _AVG.search(text)
    latencies = sorted(float(s) for s in _QUERY.findall(text))
    if qps is None or avg is None or not latencies:
        raise MeasurementError("dnsperf output lacks the rate, the average latency or "
                               "the per-query latencies (-v)")
    return [Sample("queries_per_s", float(qps.group(1)), "1/s"),
            Sample("latency_avg_ms", float(avg.group(1)) * 1000, "ms"),
            Sample("latency_p99_ms", percentile(latencies, 99) * 1000, "ms")]


def service_names(client: Endpoint) -> list[str]:
    """The query file the kube-dns agent keeps: an A query for every Service's name."""
    path = client.state.path("dns", QUERIES_FILE)
    if not path.exists():
        raise MeasurementError("no cluster DNS in this run (the kube-dns agent writes "
                               f"{QUERIES_FILE})")
    return path.read_text().splitlines()


def _run(client: Endpoint, target: str, server: Endpoint, p: Params) -> Run:
    """bench's ``dns`` protocol: dnsperf from ``client`` to ``target`` (10.96.0.10) with
    the names of every Service, for ``duration`` seconds (/proc/stat read around it)."""
    before = read_cpu()
    m = dnsperf(client, target, service_names(client), p.duration)
    return Run(m.raw, ".txt", before, read_cpu())


def _parse(raw: str, before: CpuTimes, after: CpuTimes) -> list[Sample]:
    return parse_dnsperf(raw)


# The protocol registry's dns entry (measure cannot import this module: it imports measure).
PROTOCOLS["dns"] = (_run, _parse)
REQUIRES["dns"] = ("dnsperf",)


def dnsperf(client: Endpoint, server: str, queries: Sequence[str], duration: float,
            outstanding: int = OUTSTANDING, once: bool = False,
            tcp: bool = False) -> Measurement:
    """Run dnsperf in ``client`` against ``server``:53 with ``queries`` ("name TYPE" lines),
    for ``duration`` seconds, or through the list exactly once (``once``)."""
    if not queries:
        raise ValueError("dnsperf needs at least one query")
    path = client.state.path("dns", f"queries-{client.name}.txt")
    path.write_text("".join(q + "\n" for q in queries))
    argv = ["dnsperf", "-v", "-s", server, "-d", path, "-q", outstanding, "-t", TIMEOUT_S,
            "-m", "tcp" if tcp else "udp"]
    argv += ["-n", "1"] if once else ["-l", duration]
    bound = len(queries) * ONCE_S_PER_QUERY if once else duration
    try:
        res = client.run_tool(argv, check=False, timeout=bound + TIMEOUT_S + GRACE_S)
    except proc.CommandError as exc:  # timed out
        raise MeasurementError(f"dnsperf in {client.name}: {exc}") from exc
    try:
        samples = parse_dnsperf(res.stdout)
    except MeasurementError as exc:
        raise MeasurementError(f"dnsperf {client.name} -> {server}: {exc} "
                               f"(stderr: {res.stderr.strip()[-200:]})") from exc
    return Measurement("dns", samples, res.stdout)
