"""Measurements between two endpoints, turned into SPEC metrics.

One registry, :data:`PROTOCOLS`, maps each protocol to a *runner* (starts the
server, runs the client, returns the raw outputs) and a *parser* (a pure
function of that raw output and the CPU counters of the same run). Where the
server runs and what the client dials are separate arguments, so that a
scenario may dial a Service address that lands on a backend pod.

Every value comes from the tool's own output of that run (SPEC, "Results CSV"):
nothing is computed from other runs, copied or defaulted. When a figure is
missing the measurement fails with :class:`MeasurementError` instead.

Which iperf3 figure is used (checked against iperf3 3.12 ``-J`` output):

* TCP throughput is the *receiver's* rate, ``end.sum_received.bits_per_second``
  (the sender's rate counts bytes still queued in socket buffers).
* UDP uses ``end.sum_received`` too. Its ``end.sum`` is a hybrid: bytes and
  bits_per_second are the sender's, jitter and loss the receiver's, so reading
  the rate from ``end.sum`` would report what was offered, not what arrived.
* CPU: the client is the sender (no ``-R``), so ``host_total`` is the sender's
  and ``remote_total`` the receiver's utilisation. Both count *only the iperf3
  process* (its user+system time): the kernel work of the datapath (softirq,
  encapsulation, another daemon's copies) is not in them. ``cpu_busy_pct`` is.

sockperf (3.7, ping-pong over TCP) is run with ``--full-rtt``: without it sockperf
prints *half* the round trip ("avg-latency", RTT/2). A request/response
transaction is a full round trip, so the parser refuses half-RTT output. Its
percentiles (25, 50, 75, 90, 99, 99.9, …) and message counts are over the "valid
duration": the run minus sockperf's 400 ms warm-up and 50 ms cool-down.

CPU cost: ``/proc/stat`` is read just before the client starts and just after it
exits (the server is already listening and idle). It is box-wide, so it counts
every process and the kernel's softirq work on every core: the cost of the
datapath, and of anything else running at the time.
"""
from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Iterator, NoReturn, Self

from . import proc
from .errors import RunError
from .node import Endpoint

PING_INTERVAL_S = 0.002  # 500 pings/s: far from a flood, and 100 of them take ~0.3 s
PINGS_PER_S = 100  # per second of ``duration``
MIN_PINGS = 20
CLIENT_GRACE_S = 30.0  # added to the run's duration to bound a client run
LISTEN_TIMEOUT_S = 10.0  # for a server to start listening
SERVER_EXIT_TIMEOUT_S = 10.0  # for the one-off iperf3 server to finish after the client
#: iperf3 --connect-timeout: a control connection not set up by then fails the measurement
#: ("Connection timed out") instead of waiting out the kernel's SYN retries (~2 min);
#: on veth it takes well under a millisecond, and two SYN retransmissions (1 s, 3 s) fit
CONNECT_TIMEOUT_MS = 4000
ERROR_CHARS = 300  # the longest reason a failed row's ``error`` cell keeps
IPERF3_PORT = 5201
SOCKPERF_PORT = 11111
PROC_STAT = "/proc/stat"


class MeasurementError(RunError):
    """A measuring tool failed or its output is unusable; the message says why."""


def reason(exc: BaseException) -> str:
    """Why a measurement (or a build) failed, on one line, in the tool's own words where it
    gave any: the innermost MeasurementError of the chain (iperf3's JSON ``error``, ping's
    statistics, sockperf's ERROR line), cut to ERROR_CHARS."""
    inner = exc
    while isinstance(inner.__cause__, MeasurementError):
        inner = inner.__cause__
    text = " ".join(str(inner).split())
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 1] + "…"


@dataclass(frozen=True)
class Sample:
    """One measured value, as it goes into one row of the results CSV."""

    metric: str
    value: float
    unit: str


@dataclass(frozen=True)
class Params:
    """How to measure: the same for every protocol, each tool reads what it uses."""

    duration: int = 1  # whole seconds (iperf3 -t, sockperf -t; ping sends duration/interval)
    streams: int = 1  # iperf3 -P
    udp_bandwidth: str = "0"  # iperf3 -b per stream; "0" = unlimited
    msg_size: int = 64  # sockperf -m: request and response size in bytes
    udp_length: int = 0  # iperf3 -l for UDP: datagram payload bytes; 0 = iperf3's choice


@dataclass(frozen=True)
class CpuTimes:
    """Box-wide CPU time from /proc/stat, in clock ticks (USER_HZ)."""

    busy: int
    total: int


@dataclass(frozen=True)
class Run:
    """What a runner got from the tools of one measurement."""

    raw: str
    suffix: str  # file suffix of ``raw`` (.json, .txt)
    cpu_before: CpuTimes
    cpu_after: CpuTimes
    server_raw: str = ""
    peer_seen_by_server: str | None = None  # for no-NAT checks


@dataclass
class Measurement:
    """The SPEC metrics of one run plus the raw tool output they were read from."""

    protocol: str
    samples: list[Sample]
    raw: str
    suffix: str = ".txt"
    server_raw: str = ""
    peer_seen_by_server: str | None = None  # for no-NAT checks


# --- /proc/stat ------------------------------------------------------------------

def parse_proc_stat(text: str) -> CpuTimes:
    """The aggregate ``cpu`` line: busy = user+nice+system+irq+softirq+steal, total adds
    idle and iowait. guest and guest_nice are left out: the kernel already counts them
    in user and nice."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            if len(fields) < 9:
                raise MeasurementError(f"/proc/stat cpu line has {len(fields) - 1} fields, "
                                       "expected at least 8")
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[1:9])
            busy = user + nice + system + irq + softirq + steal
            return CpuTimes(busy=busy, total=busy + idle + iowait)
    raise MeasurementError("/proc/stat has no aggregate cpu line")


def cpu_busy_pct(before: CpuTimes, after: CpuTimes) -> float:
    """Share of all cores' time that was busy between two readings, in %."""
    total = after.total - before.total
    if total <= 0:
        raise MeasurementError("/proc/stat did not advance during the measurement")
    return 100.0 * (after.busy - before.busy) / total


def cpu_busy_seconds(before: CpuTimes, after: CpuTimes,
                     hz: int = os.sysconf("SC_CLK_TCK")) -> float:
    """CPU-seconds spent busy, summed over all cores, between two readings."""
    return (after.busy - before.busy) / hz


def read_cpu() -> CpuTimes:
    with open(PROC_STAT) as f:
        return parse_proc_stat(f.read())


# --- parsers: pure functions of one run's raw output --------------------------------

def _load_json(text: str, what: str) -> dict[str, Any]:
    """iperf3 -J output as a dict; its ``error`` field becomes a MeasurementError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        head = text.strip()[:200] or "empty output"
        raise MeasurementError(f"{what} output is not JSON ({exc}): {head}") from exc
    if not isinstance(data, dict):
        raise MeasurementError(f"{what} output is not a JSON object")
    if "error" in data:
        raise MeasurementError(f"{what}: {data['error']}")
    return data


def _get(data: dict[str, Any], path: str) -> Any:
    """The value at a dotted JSON path; a missing one is a MeasurementError."""
    node: Any = data
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise MeasurementError(f"iperf3 output lacks {path}")
        node = node[key]
    return node


def _iperf3_client_json(text: str, protocol: str) -> dict[str, Any]:
    """The sending client's -J output of a ``protocol`` test, or MeasurementError."""
    data = _load_json(text, "iperf3")
    ran = _get(data, "start.test_start.protocol")
    if ran != protocol.upper():
        raise MeasurementError(f"iperf3 output is of a {ran} test, expected {protocol.upper()}")
    # host_total is the sender's CPU only in a client's output (it has
    # start.connecting_to) of a test that was not reversed (-R). The end.*.sender
    # flags cannot tell: a 3.12 UDP server marks its empty sum_sent "sender": true.
    if "connecting_to" not in _get(data, "start") or _get(data, "start.test_start.reverse"):
        raise MeasurementError("iperf3 output is not the sending client's")
    return data


def parse_iperf3(text: str, protocol: str) -> list[Sample]:
    """SPEC metrics from the iperf3 *client's* -J output (the client sends)."""
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"iperf3 measures tcp or udp, not {protocol!r}")
    data = _iperf3_client_json(text, protocol)
    rate = Sample("throughput_bps", float(_get(data, "end.sum_received.bits_per_second")), "bit/s")
    if protocol == "tcp":
        return [
            rate,
            Sample("retransmits", float(_get(data, "end.sum_sent.retransmits")), "count"),
            Sample("cpu_sender_pct",
                   float(_get(data, "end.cpu_utilization_percent.host_total")), "%"),
            Sample("cpu_receiver_pct",
                   float(_get(data, "end.cpu_utilization_percent.remote_total")), "%"),
        ]
    # datagrams the receiver got per second: per-packet cost is where encapsulation shows
    got = float(_get(data, "end.sum_received.packets")) - float(
        _get(data, "end.sum_received.lost_packets"))
    return [
        rate,
        Sample("jitter_ms", float(_get(data, "end.sum_received.jitter_ms")), "ms"),
        Sample("loss_pct", float(_get(data, "end.sum_received.lost_percent")), "%"),
        Sample("packets_per_s", got / float(_get(data, "end.sum_received.seconds")), "1/s"),
    ]


def delivered_gbit(text: str) -> float:
    """Gbit the receiver got in a TCP run (``end.sum_received.bytes``)."""
    data = _iperf3_client_json(text, "tcp")
    return float(_get(data, "end.sum_received.bytes")) * 8 / 1e9


def _tcp(text: str, before: CpuTimes, after: CpuTimes) -> list[Sample]:
    """iperf3's TCP metrics plus the box's busy CPU-seconds per Gbit received."""
    gbit = delivered_gbit(text)
    if gbit <= 0:
        raise MeasurementError("iperf3 delivered no bytes: no CPU cost per Gbit")
    return [*parse_iperf3(text, "tcp"),
            Sample("cpu_s_per_gbit", cpu_busy_seconds(before, after) / gbit, "s/Gbit")]


_PING_REPLY = re.compile(r"bytes from .* time=([\d.]+) ms")
_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+ ms")


def percentile(values: Iterable[float], pct: int) -> float:
    """Nearest-rank percentile: always a value that was actually observed (the one
    percentile of every k8stopo figure: ping, dnsperf, podprobe, hping3, getaddrinfo)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values to take a percentile of")
    rank = -(-pct * len(ordered) // 100)  # ceil(pct/100 * n) in integers
    return ordered[max(rank, 1) - 1]


def parse_ping(text: str) -> list[Sample]:
    """SPEC rtt metrics from iputils ping output.

    min/avg/max are ping's own summary line; p50/p99 are nearest-rank
    percentiles of the per-reply ``time=`` values (ping prints no percentiles).
    """
    counts = _PING_COUNTS.search(text)
    if counts is None:
        raise MeasurementError(f"ping output has no statistics: {text.strip()[-200:] or 'empty'}")
    if int(counts.group(2)) == 0:
        raise MeasurementError(f"ping got no replies: {counts.group(0)}")
    rtt = _PING_RTT.search(text)
    times = sorted(float(t) for t in _PING_REPLY.findall(text))
    if rtt is None or not times:
        raise MeasurementError("ping output has replies but no round-trip times")
    rtt_min, rtt_avg, rtt_max = (float(rtt.group(i)) for i in (1, 2, 3))
    return [
        Sample("rtt_avg_ms", rtt_avg, "ms"),
        Sample("rtt_min_ms", rtt_min, "ms"),
        Sample("rtt_max_ms", rtt_max, "ms"),
        Sample("rtt_p50_ms", percentile(times, 50), "ms"),
        Sample("rtt_p99_ms", percentile(times, 99), "ms"),
    ]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SP_ERROR = re.compile(r"^sockperf: ERROR: (.*)$", re.MULTILINE)
_SP_VALID = re.compile(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); "
                       r"ReceivedMessages=(\d+)")
_SP_PERCENTILE = re.compile(r"---> percentile ([\d.]+) =\s*([\d.]+)")


def parse_sockperf(text: str) -> list[Sample]:
    """tcp_rr metrics from ``sockperf ping-pong --full-rtt`` output (sockperf 3.7).

    Percentiles are sockperf's own (in usec); transactions_per_s is its valid-duration
    ReceivedMessages over that duration's RunTime (every reply ends one transaction).
    sockperf exits 0 even when it cannot connect, so its ERROR line is what tells.
    """
    text = _ANSI.sub("", text)
    error = _SP_ERROR.search(text)
    if error:
        raise MeasurementError(f"sockperf: {error.group(1).strip()}")
    if "avg-latency=" in text:
        raise MeasurementError("sockperf printed half round trips (run it with --full-rtt)")
    valid = _SP_VALID.search(text)
    if valid is None or "avg-rtt=" not in text:
        raise MeasurementError(f"sockperf output has no round-trip statistics: "
                               f"{text.strip()[-200:] or 'empty'}")
    runtime, received = float(valid.group(1)), int(valid.group(3))
    if received == 0 or runtime <= 0:
        raise MeasurementError(f"sockperf got no replies: {valid.group(0)}")
    pct = {float(p): float(v) for p, v in _SP_PERCENTILE.findall(text)}
    samples = [Sample("transactions_per_s", received / runtime, "1/s")]
    for p in (50, 90, 99):
        if float(p) not in pct:
            raise MeasurementError(f"sockperf output lacks percentile {p}")
        samples.append(Sample(f"latency_p{p}_us", pct[float(p)], "us"))
    return samples


# --- runners: start the server, run the client, keep the raw output -----------------

def _with_stderr(message: str, stderr: str) -> str:
    stderr = stderr.strip()
    return f"{message} (stderr: {stderr})" if stderr else message


def _wait_listening(server: Endpoint, port: int, srv: subprocess.Popen[str]) -> None:
    """Return once the server listens on TCP ``port``; a fixed sleep would race."""
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        if srv.poll() is not None:
            _, err = srv.communicate()
            raise MeasurementError(_with_stderr(
                f"server in {server.name} exited {srv.returncode} before listening", err))
        if server.output(["ss", "-Hltn", "sport", "=", f":{port}"]).strip():
            return
        time.sleep(0.02)
    raise MeasurementError(f"server in {server.name} not listening on :{port} "
                           f"after {LISTEN_TIMEOUT_S:.0f}s")


#: ``hook(server endpoint, server process)``; what it returns is run before the server stops
ServerHook = Callable[[Endpoint, "subprocess.Popen[str]"], Callable[[], None] | None]
_server_up: contextvars.ContextVar[ServerHook | None] = contextvars.ContextVar(
    "server_up", default=None)


@contextlib.contextmanager
def on_server_up(hook: ServerHook) -> Iterator[None]:
    """Run ``hook`` in every measurement started inside this block, once its server listens
    and before its client starts: a fault (k8stopo.faults) kills the server there, as a pod
    whose server died, or freezes it with its node; the undo it may return (a thaw) runs
    before the measurement stops the server."""
    token = _server_up.set(hook)
    try:
        yield
    finally:
        _server_up.reset(token)


@contextlib.contextmanager
def _serving(server: Endpoint, argv: list[str], port: int) -> Iterator[subprocess.Popen[str]]:
    """A server spawned in ``server`` for one measurement, listening, stopped afterwards."""
    srv = server.spawn(argv, what=f"{argv[0]} server :{port}@{server.name}",
                       stdout=subprocess.PIPE)
    try:
        _wait_listening(server, port, srv)
        hook = _server_up.get()
        undo = hook(server, srv) if hook is not None else None
        try:
            yield srv
        finally:
            if undo is not None:
                undo()
    finally:
        server.stop(srv)


def _client(client: Endpoint, argv: list[str], timeout: float
            ) -> tuple[subprocess.CompletedProcess[str], CpuTimes, CpuTimes]:
    """Run the client with /proc/stat read right before and after it."""
    before = read_cpu()
    try:
        res = client.run_tool(argv, check=False, timeout=timeout)
    except proc.CommandError as exc:  # timed out
        raise MeasurementError(f"{argv[0]} client in {client.name}: {exc}") from exc
    return res, before, read_cpu()


def dialled(target: str, port: int) -> tuple[str, int]:
    """What the client dials: ``target`` is an address (the server listens on ``port``
    there), or ``address:port`` for a Service, whose NodePort differs from it."""
    address, _, given = target.partition(":")
    return address, int(given) if given else port


def _iperf3(protocol: str, client: Endpoint, target: str, server: Endpoint,
            p: Params) -> Run:
    """One iperf3 run client → target with a one-off server (``-1``) in ``server``.

    iperf3 reads ``-t`` as an integer (``-t 0.5`` becomes 0 = run forever), hence
    whole seconds. Spawning the server and polling for its socket costs ~20 ms,
    so a long-lived server would not make the bench noticeably faster.
    """
    address, port = dialled(target, IPERF3_PORT)
    argv = ["iperf3", "-c", address, "-p", str(port), "-t", str(p.duration),
            "-J", "-P", str(p.streams), "--connect-timeout", str(CONNECT_TIMEOUT_MS)]
    if protocol == "udp":
        argv += ["-u", "-b", p.udp_bandwidth, *(["-l", str(p.udp_length)] if p.udp_length else [])]
    with _serving(server, ["iperf3", "-s", "-1", "-J", "-p", str(IPERF3_PORT)],
                  IPERF3_PORT) as srv:
        res, before, after = _client(client, argv, p.duration + CLIENT_GRACE_S)
        try:
            parse_iperf3(res.stdout, protocol)
        except MeasurementError as exc:
            raise MeasurementError(_with_stderr(
                f"iperf3 {client.name} -> {target} ({server.name}): {exc}", res.stderr)) from exc
        try:
            server_raw, server_err = srv.communicate(timeout=SERVER_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise MeasurementError(f"iperf3 server in {server.name} did not exit after the run") \
                from exc
        try:
            peer = _get(_load_json(server_raw, "iperf3 server"), "start.accepted_connection.host")
        except MeasurementError as exc:
            raise MeasurementError(_with_stderr(f"{exc} (in {server.name})", server_err)) from exc
    return Run(res.stdout, ".json", before, after, server_raw, str(peer))


def _ping(client: Endpoint, target: str, server: Endpoint, p: Params) -> Run:
    """``PINGS_PER_S`` pings to ``target`` per second of ``duration``, 2 ms apart (no server)."""
    count = max(MIN_PINGS, PINGS_PER_S * p.duration)
    argv = ["ping", "-n", "-i", str(PING_INTERVAL_S), "-c", str(count), "-W", "1", target]
    res, before, after = _client(client, argv, count * PING_INTERVAL_S + CLIENT_GRACE_S)
    try:
        parse_ping(res.stdout)
    except MeasurementError as exc:
        raise MeasurementError(_with_stderr(
            f"ping {client.name} -> {target} ({server.name}): {exc}", res.stderr)) from exc
    return Run(res.stdout, ".txt", before, after)


RR_IDLE_S = 2.0  # sockperf 3.7's fixed sleep between connecting and its test
IDLE_MARGIN_S = 0.5  # what must stay free of that sleep, for a slow moment of the machine


def expected_s(protocol: str, p: Params) -> float:
    """About how long a measurement takes (planning only; nothing is cut short by it)."""
    if protocol == "icmp":
        return max(MIN_PINGS, PINGS_PER_S * p.duration) * PING_INTERVAL_S * 1.5 + 0.05
    return p.duration + 0.15


def fits_idle(protocols: list[str], p: Params) -> list[str]:
    """Those of ``protocols`` (in order) that fit together in sockperf's idle sleep."""
    fit, used = [], 0.0
    for protocol in protocols:
        if protocol != "tcp_rr" and used + expected_s(protocol, p) <= RR_IDLE_S - IDLE_MARGIN_S:
            fit.append(protocol)
            used += expected_s(protocol, p)
    return fit


class Overlap(MeasurementError):
    """What ran in sockperf's idle time was still running when its test began."""


class TcpRR:
    """One sockperf ping-pong run, usable in two steps::

        with TcpRR(client, target, server, params) as rr:  # connected, sockperf now idles
            with rr.idle():
                ...  # may measure something else: sockperf sends nothing until it returns
            run = rr.run()  # waits for the test; Overlap if the idle time was overrun

    sockperf 3.7 sleeps a fixed 2 s between connecting and its test (src/client.cpp,
    ``sleep(2)`` after ``warmup()``, which sends nothing over TCP). Its output is read
    line by line (``stdbuf -oL``) with the time each line arrived, so "Starting test..."
    tells when the test really began: a measurement run in :meth:`idle` is valid only if
    it ended before that. /proc/stat is read when "Starting test..." and "Test end"
    arrive, so the CPU share covers the test, not the idle sleep.
    """

    def __init__(self, client: Endpoint, target: str, server: Endpoint, p: Params) -> None:
        self.client, self.target, self.server = client, target, server
        address, port = dialled(target, SOCKPERF_PORT)
        self.argv = ["sockperf", "ping-pong", "--tcp", "-i", address, "-p", str(port),
                     "-t", str(p.duration), "-m", str(p.msg_size), "--full-rtt"]
        self.timeout = p.duration + CLIENT_GRACE_S
        self.lines: list[str] = []
        self.started_at: float | None = None  # when "Starting test..." arrived
        self.cpu: dict[str, CpuTimes] = {}
        self.idle_until: float | None = None
        self._connected = threading.Event()
        self.connected = False  # "Warmup stage" seen: connected, about to sleep
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Self:
        with self._stack as stack:
            stack.enter_context(_serving(self.server, ["sockperf", "server", "--tcp", "-i",
                                                       "0.0.0.0", "-p", str(SOCKPERF_PORT)],
                                         SOCKPERF_PORT))
            self.proc = self.client.spawn(["stdbuf", "-oL", *self.argv],
                                          what=f"sockperf client@{self.client.name}",
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            stack.callback(self.client.stop, self.proc)
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
            self._connected.wait(LISTEN_TIMEOUT_S)
            if not self.connected:
                self._fail("did not connect")
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                if "Starting test" in line:
                    self.started_at, self.cpu["before"] = time.monotonic(), read_cpu()
                elif "Test end" in line:
                    self.cpu["after"] = read_cpu()
                self.lines.append(line)
                if "Warmup stage" in line:
                    self.connected = True
                    self._connected.set()
        except ValueError:  # stopped on a failure: __exit__ closed the pipe under us
            pass
        self._connected.set()  # exited: __enter__ sees it

    def _fail(self, what: str) -> NoReturn:
        """MeasurementError with what sockperf printed (__exit__ stops it and the server)."""
        try:
            self.proc.wait(1)  # let an exiting client flush its last lines
        except subprocess.TimeoutExpired:
            pass
        self.reader.join(1)
        out = _ANSI.sub("", "".join(self.lines)).strip()
        raise MeasurementError(f"sockperf {self.client.name} -> {self.target} "
                               f"({self.server.name}) {what}: {out[-300:] or 'no output'}")

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """The time sockperf sleeps before its test; :meth:`run` checks it was not overrun."""
        try:
            yield
        finally:
            self.idle_until = time.monotonic()

    def run(self) -> Run:
        """Wait for the test to end; its output and the CPU counters of the test."""
        try:
            self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self._fail("timed out")
        self.reader.join(5)
        raw = "".join(self.lines)
        try:
            parse_sockperf(raw)  # its own errors first (cannot connect, no statistics)
        except MeasurementError as exc:
            raise MeasurementError(f"sockperf {self.client.name} -> {self.target} "
                                   f"({self.server.name}): {exc}") from exc
        if self.started_at is None or set(self.cpu) != {"before", "after"}:
            self._fail("printed no test start or end")
        if self.idle_until is not None and self.idle_until >= self.started_at:
            raise Overlap(f"sockperf's test began {self.idle_until - self.started_at:.2f}s "
                          "before what ran in its idle time ended")
        return Run(raw, ".txt", self.cpu["before"], self.cpu["after"])


def _sockperf(client: Endpoint, target: str, server: Endpoint, p: Params) -> Run:
    """A tcp_rr run on its own (nothing in its idle time)."""
    with TcpRR(client, target, server, p) as rr:
        return rr.run()


def _only(parse: Callable[[str], list[Sample]]) -> Parser:
    """A parser that needs only the raw text (the CPU is added by :func:`measure`)."""
    return lambda raw, before, after: parse(raw)


Runner = Callable[[Endpoint, str, Endpoint, Params], Run]
Parser = Callable[[str, CpuTimes, CpuTimes], list[Sample]]

#: protocol -> (runner, parser); SPEC's protocol names
PROTOCOLS: dict[str, tuple[Runner, Parser]] = {
    "tcp": (partial(_iperf3, "tcp"), _tcp),
    "udp": (partial(_iperf3, "udp"), _only(partial(parse_iperf3, protocol="udp"))),
    "icmp": (_ping, _only(parse_ping)),
    "tcp_rr": (_sockperf, _only(parse_sockperf)),
}

#: protocol -> the doctor probes (tools) it needs, checked before a bench builds anything
REQUIRES: dict[str, tuple[str, ...]] = {
    "tcp": ("iperf3",), "udp": ("iperf3",), "icmp": ("ping",), "tcp_rr": ("sockperf",),
}


def measure(client: Endpoint, target: ipaddress.IPv4Address | str, server: Endpoint,
            protocol: str, params: Params = Params()) -> Measurement:
    """Measure ``protocol`` from ``client`` dialling ``target``, answered in ``server``.

    ``target`` is usually ``server.ip``; a Service scenario dials a ClusterIP or a
    NodePort that kube-proxy sends to the backend pod ``server``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    if params.duration < 1 or params.duration != int(params.duration):
        raise ValueError(f"measurements run whole seconds >= 1, not {params.duration}")
    runner, _ = PROTOCOLS[protocol]
    return measurement(protocol, runner(client, str(target), server, params))


def measurement(protocol: str, run: Run) -> Measurement:
    """The SPEC metrics of one run: the protocol's parser plus the box's CPU share."""
    _, parser = PROTOCOLS[protocol]
    samples = [*parser(run.raw, run.cpu_before, run.cpu_after),
               Sample("cpu_busy_pct", cpu_busy_pct(run.cpu_before, run.cpu_after), "%")]
    return Measurement(protocol, samples, run.raw, run.suffix, run.server_raw,
                       run.peer_seen_by_server)
