"""Measurements between two endpoints with iperf3 and ping, turned into SPEC metrics.

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
  and ``remote_total`` the receiver's utilisation.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from . import proc
from .node import Endpoint

PING_INTERVAL_S = 0.05
MIN_PINGS = 20
CLIENT_GRACE_S = 30.0  # added to the run's duration to bound a client run
LISTEN_TIMEOUT_S = 10.0  # for the iperf3 server to start listening
SERVER_EXIT_TIMEOUT_S = 10.0  # for the one-off iperf3 server to finish after the client


class MeasurementError(RuntimeError):
    """A measuring tool failed or its output is unusable; the message says why."""


@dataclass(frozen=True)
class Sample:
    """One measured value, as it goes into one row of the results CSV."""

    metric: str
    value: float
    unit: str


@dataclass
class Measurement:
    """The SPEC metrics of one run plus the raw tool output they were read from."""

    protocol: str
    samples: list[Sample]
    raw: str
    server_raw: str = ""
    peer_seen_by_server: str | None = None  # for no-NAT checks


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


def parse_iperf3(text: str, protocol: str) -> list[Sample]:
    """SPEC metrics from the iperf3 *client's* -J output (the client sends)."""
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"iperf3 measures tcp or udp, not {protocol!r}")
    data = _load_json(text, "iperf3")
    ran = _get(data, "start.test_start.protocol")
    if ran != protocol.upper():
        raise MeasurementError(f"iperf3 output is of a {ran} test, expected {protocol.upper()}")
    # host_total is the sender's CPU only in a client's output (it has
    # start.connecting_to) of a test that was not reversed (-R). The end.*.sender
    # flags cannot tell: a 3.12 UDP server marks its empty sum_sent "sender": true.
    if "connecting_to" not in _get(data, "start") or _get(data, "start.test_start.reverse"):
        raise MeasurementError("iperf3 output is not the sending client's")
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
    return [
        rate,
        Sample("jitter_ms", float(_get(data, "end.sum_received.jitter_ms")), "ms"),
        Sample("loss_pct", float(_get(data, "end.sum_received.lost_percent")), "%"),
    ]


_PING_REPLY = re.compile(r"bytes from .* time=([\d.]+) ms")
_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+ ms")


def _nearest_rank(sorted_values: list[float], pct: int) -> float:
    """Nearest-rank percentile: always a value that was actually observed."""
    rank = -(-pct * len(sorted_values) // 100)  # ceil(pct/100 * n) in integers
    return sorted_values[max(rank, 1) - 1]


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
        Sample("rtt_p50_ms", _nearest_rank(times, 50), "ms"),
        Sample("rtt_p99_ms", _nearest_rank(times, 99), "ms"),
    ]


def _with_stderr(message: str, stderr: str) -> str:
    stderr = stderr.strip()
    return f"{message} (stderr: {stderr})" if stderr else message


def _wait_listening(server: Endpoint, port: int, srv: subprocess.Popen[str]) -> None:
    """Return once the iperf3 server listens on ``port``; a fixed sleep would race."""
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        if srv.poll() is not None:
            _, err = srv.communicate()
            raise MeasurementError(_with_stderr(
                f"iperf3 server in {server.name} exited {srv.returncode} before listening", err))
        if server.output(["ss", "-Hltn", "sport", "=", f":{port}"]).strip():
            return
        time.sleep(0.02)
    raise MeasurementError(f"iperf3 server in {server.name} not listening on :{port} "
                           f"after {LISTEN_TIMEOUT_S:.0f}s")


def iperf3(client: Endpoint, server: Endpoint, protocol: str, duration: float,
           streams: int = 1, udp_bandwidth: str = "0", port: int = 5201,
           dial: tuple[str, int] | None = None) -> Measurement:
    """One iperf3 run client → server.ip with a one-off server spawned for it.

    ``dial`` is the (address, port) the client connects to when it is not the server's
    own, as for a Service: kube-proxy sends a ClusterIP or NodePort to ``server``.

    ``udp_bandwidth`` is iperf3's ``-b``: per stream, "0" means unlimited. iperf3 reads
    ``-t`` as an integer (``-t 0.5`` becomes 0 = run forever), hence whole seconds.
    """
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"iperf3 measures tcp or udp, not {protocol!r}")
    if duration < 1 or duration != int(duration):
        raise ValueError(f"iperf3 runs whole seconds >= 1, not {duration}")
    srv = server.spawn(["iperf3", "-s", "-1", "-J", "-p", str(port)],
                       what=f"iperf3 server :{port}@{server.name}", stdout=subprocess.PIPE)
    try:
        _wait_listening(server, port, srv)
        address, dport = dial or (str(server.ip), port)
        argv = ["iperf3", "-c", address, "-p", str(dport), "-t", str(int(duration)),
                "-J", "-P", str(streams)]
        if protocol == "udp":
            argv += ["-u", "-b", udp_bandwidth]
        try:
            res = client.run(argv, check=False, timeout=duration + CLIENT_GRACE_S)
        except proc.CommandError as exc:  # timed out
            raise MeasurementError(f"iperf3 client in {client.name}: {exc}") from exc
        try:
            samples = parse_iperf3(res.stdout, protocol)
        except MeasurementError as exc:
            raise MeasurementError(_with_stderr(
                f"iperf3 {client.name} -> {server.name} ({server.ip}): {exc}", res.stderr)) from exc
        try:
            server_raw, server_err = srv.communicate(timeout=SERVER_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise MeasurementError(f"iperf3 server in {server.name} did not exit after the run") from exc
        try:
            peer = _get(_load_json(server_raw, "iperf3 server"), "start.accepted_connection.host")
        except MeasurementError as exc:
            raise MeasurementError(_with_stderr(f"{exc} (in {server.name})", server_err)) from exc
    finally:
        server.stop(srv)
    return Measurement(protocol, samples, res.stdout, server_raw, str(peer))


def ping(client: Endpoint, server: Endpoint, duration: float) -> Measurement:
    """Ping server.ip from client every 50 ms for about ``duration`` seconds."""
    count = max(MIN_PINGS, round(duration / PING_INTERVAL_S))
    argv = ["ping", "-n", "-i", str(PING_INTERVAL_S), "-c", str(count), "-W", "1", str(server.ip)]
    try:
        res = client.run(argv, check=False, timeout=count * PING_INTERVAL_S + CLIENT_GRACE_S)
    except proc.CommandError as exc:  # timed out
        raise MeasurementError(f"ping in {client.name}: {exc}") from exc
    try:
        samples = parse_ping(res.stdout)
    except MeasurementError as exc:
        raise MeasurementError(_with_stderr(
            f"ping {client.name} -> {server.name} ({server.ip}): {exc}", res.stderr)) from exc
    return Measurement("icmp", samples, res.stdout)


def measure(client: Endpoint, server: Endpoint, protocol: str, duration: float,
            streams: int = 1, udp_bandwidth: str = "0",
            dial: tuple[str, int] | None = None) -> Measurement:
    """Measure ``protocol`` (tcp, udp or icmp) from client to server (dialling ``dial``
    when given: a Service's address; ICMP has no Service to go through)."""
    if protocol == "icmp":
        return ping(client, server, duration)
    return iperf3(client, server, protocol, duration, streams, udp_bandwidth, dial=dial)
