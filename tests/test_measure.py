"""Tests of k8stopo.measure.

Parsers are checked against real iperf3 3.12 / iputils ping output recorded
between two network namespaces on this machine (tests/data/); the runners are
checked end to end between two namespaces created here (needs root). Expected
values are read from the recorded files themselves, never retyped.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterator

import pytest

from k8stopo import proc, runstate
from k8stopo.measure import Measurement, MeasurementError, Sample, measure, parse_iperf3, parse_ping
from k8stopo.node import Endpoint

DATA = Path(__file__).parent / "data"

SPEC_METRICS = {
    "tcp": {"throughput_bps": "bit/s", "retransmits": "count",
            "cpu_sender_pct": "%", "cpu_receiver_pct": "%"},
    "udp": {"throughput_bps": "bit/s", "jitter_ms": "ms", "loss_pct": "%"},
    "icmp": {"rtt_avg_ms": "ms", "rtt_min_ms": "ms", "rtt_max_ms": "ms",
             "rtt_p50_ms": "ms", "rtt_p99_ms": "ms"},
}


def read(name: str) -> str:
    return (DATA / name).read_text()


def by_metric(samples: list[Sample]) -> dict[str, Sample]:
    names = [s.metric for s in samples]
    assert len(names) == len(set(names)), f"duplicate metrics: {names}"
    return {s.metric: s for s in samples}


def assert_spec_metrics(protocol: str, samples: list[Sample]) -> None:
    got = {s.metric: s.unit for s in samples}
    assert got == SPEC_METRICS[protocol]


# --- parsers on recorded output ------------------------------------------------------


def test_parse_iperf3_tcp_uses_receiver_rate_and_sender_cpu() -> None:
    text = read("iperf3_tcp_client.json")
    end = json.loads(text)["end"]
    got = by_metric(parse_iperf3(text, "tcp"))
    assert_spec_metrics("tcp", list(got.values()))
    assert got["throughput_bps"].value == end["sum_received"]["bits_per_second"]
    # The recording has a sender rate different from the receiver's, so this
    # would catch a parser that reports the sender's figure.
    assert end["sum_sent"]["bits_per_second"] != end["sum_received"]["bits_per_second"]
    assert got["retransmits"].value == end["sum_sent"]["retransmits"]
    assert got["cpu_sender_pct"].value == end["cpu_utilization_percent"]["host_total"]
    assert got["cpu_receiver_pct"].value == end["cpu_utilization_percent"]["remote_total"]
    # The receiver's own report (server JSON) agrees with what the client relays.
    server_end = json.loads(read("iperf3_tcp_server.json"))["end"]
    assert got["throughput_bps"].value == server_end["sum_received"]["bits_per_second"]
    assert got["cpu_receiver_pct"].value == server_end["cpu_utilization_percent"]["host_total"]


def test_parse_iperf3_udp_uses_receiver_figures() -> None:
    text = read("iperf3_udp_client.json")
    end = json.loads(text)["end"]
    got = by_metric(parse_iperf3(text, "udp"))
    assert_spec_metrics("udp", list(got.values()))
    assert got["throughput_bps"].value == end["sum_received"]["bits_per_second"]
    assert got["jitter_ms"].value == end["sum_received"]["jitter_ms"]
    assert got["loss_pct"].value == end["sum_received"]["lost_percent"]
    # iperf3 3.12's end.sum for UDP carries the *sender's* rate (with the
    # receiver's jitter/loss); the recording had loss, so the two rates differ.
    assert end["sum"]["bits_per_second"] == end["sum_sent"]["bits_per_second"]
    assert got["throughput_bps"].value < end["sum"]["bits_per_second"]
    server_end = json.loads(read("iperf3_udp_server.json"))["end"]
    assert got["throughput_bps"].value == server_end["sum_received"]["bits_per_second"]
    assert got["jitter_ms"].value == server_end["sum_received"]["jitter_ms"]


def test_parse_iperf3_error_field_raises_with_message() -> None:
    text = read("iperf3_refused.json")
    assert "error" in json.loads(text)
    with pytest.raises(MeasurementError, match="Connection refused"):
        parse_iperf3(text, "tcp")


@pytest.mark.parametrize("text, protocol, message", [
    ("", "tcp", "not JSON"),
    ("iperf3: error - unable to connect", "tcp", "not JSON"),
    ("[1, 2]", "tcp", "not a JSON object"),
    (read("iperf3_udp_client.json"), "tcp", "UDP test, expected TCP"),
    (read("iperf3_tcp_client.json"), "udp", "TCP test, expected UDP"),
    # a server's JSON has the right protocol but swapped roles (and no retransmits)
    (read("iperf3_tcp_server.json"), "tcp", "not the sending client's"),
    (read("iperf3_udp_server.json"), "udp", "not the sending client's"),
])
def test_parse_iperf3_rejects_unusable_output(text: str, protocol: str, message: str) -> None:
    with pytest.raises(MeasurementError, match=message):
        parse_iperf3(text, protocol)


def test_parse_iperf3_missing_field_raises() -> None:
    data = json.loads(read("iperf3_tcp_client.json"))
    del data["end"]["sum_sent"]["retransmits"]
    with pytest.raises(MeasurementError, match=r"end\.sum_sent\.retransmits"):
        parse_iperf3(json.dumps(data), "tcp")


def test_parse_iperf3_unknown_protocol() -> None:
    with pytest.raises(ValueError):
        parse_iperf3(read("iperf3_tcp_client.json"), "sctp")


def test_parse_ping_summary_and_nearest_rank_percentiles() -> None:
    text = read("ping.txt")
    summary = re.search(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/", text)
    assert summary is not None
    times = sorted(float(t) for t in re.findall(r"time=([\d.]+) ms", text))
    assert len(times) == 20  # the recording: 20 sent, 20 received
    got = by_metric(parse_ping(text))
    assert_spec_metrics("icmp", list(got.values()))
    assert got["rtt_min_ms"].value == float(summary.group(1))
    assert got["rtt_avg_ms"].value == float(summary.group(2))
    assert got["rtt_max_ms"].value == float(summary.group(3))
    # nearest rank over n=20: p50 is the 10th smallest, p99 the 20th (= max)
    assert got["rtt_p50_ms"].value == times[9]
    assert got["rtt_p99_ms"].value == times[19] == got["rtt_max_ms"].value


def test_parse_ping_percentiles_on_100_samples() -> None:
    """Nearest rank: p50 of 1..100 is 50, p99 is 99 (no interpolation)."""
    lines = [f"64 bytes from 10.0.0.2: icmp_seq={i} ttl=64 time={i}.0 ms" for i in range(100, 0, -1)]
    text = "\n".join(lines + [
        "--- 10.0.0.2 ping statistics ---",
        "100 packets transmitted, 100 received, 0% packet loss, time 5000ms",
        "rtt min/avg/max/mdev = 1.0/50.5/100.0/28.866 ms", ""])
    got = by_metric(parse_ping(text))
    assert got["rtt_p50_ms"].value == 50.0
    assert got["rtt_p99_ms"].value == 99.0


def test_parse_ping_zero_replies_raises() -> None:
    with pytest.raises(MeasurementError, match="no replies"):
        parse_ping(read("ping_unreachable.txt"))


def test_parse_ping_without_statistics_raises() -> None:
    with pytest.raises(MeasurementError, match="no statistics"):
        parse_ping("ping: connect: Network is unreachable\n")


# --- runners between two real network namespaces ---------------------------------------

def netns_inode(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def pids_in_netns(inode: str) -> set[int]:
    """Every process whose network namespace is ``inode``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "net") == inode:
                    found.add(int(entry.name))
            except OSError:  # gone, or not ours to inspect
                pass
    return found


def wait_entered(pid: int, ns: str, timeout: float = 5.0) -> None:
    """Wait until ``pid`` (started by ``ip netns exec``) has joined ``ns``: until
    then, commands entering its namespace would run in the root namespace."""
    want = os.stat(f"/run/netns/{ns}").st_ino
    deadline = time.monotonic() + timeout
    while os.stat(f"/proc/{pid}/ns/net").st_ino != want:
        assert time.monotonic() < deadline, f"{pid} did not enter {ns}"
        time.sleep(0.01)


@contextlib.contextmanager
def two_endpoints(state: runstate.RunState) -> Iterator[tuple[Endpoint, Endpoint]]:
    """Namespaces k8tm<hex>a/b joined by a veth pair, 10.99.0.1 and .2, each held
    by a sleep process; everything is removed on exit."""
    tag = secrets.token_hex(3)
    spaces = [f"k8tm{tag}a", f"k8tm{tag}b"]
    veths = [f"k8tm{tag}va", f"k8tm{tag}vb"]
    addrs = ["10.99.0.1", "10.99.0.2"]
    holders = []
    try:
        for ns in spaces:
            proc.run(["ip", "netns", "add", ns])
        proc.run(["ip", "link", "add", veths[0], "type", "veth", "peer", "name", veths[1]])
        for ns, veth, addr in zip(spaces, veths, addrs):
            proc.run(["ip", "link", "set", veth, "netns", ns])
            proc.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", veth])
            proc.run(["ip", "-n", ns, "link", "set", "lo", "up"])
            proc.run(["ip", "-n", ns, "link", "set", veth, "up"])
            holders.append(proc.spawn(["ip", "netns", "exec", ns, "sleep", "600"]))
            wait_entered(holders[-1].pid, ns)
        a, b = (Endpoint(ns, ipaddress.IPv4Address(addr), holder.pid, state)
                for ns, addr, holder in zip(spaces, addrs, holders))
        yield a, b
    finally:
        for holder in holders:
            proc.stop(holder)
        for ns in spaces:
            proc.run(["ip", "netns", "del", ns], check=False)  # takes its veth end along
        present = runstate.root_links()
        for veth in veths:
            if veth in present:  # only if it never made it into a namespace
                proc.run(["ip", "link", "del", veth], check=False)
    leftover_ns = [ns for ns in spaces if ns in proc.output(["ip", "netns", "list"])]
    leftover_links = [l for l in runstate.root_links() if l.startswith(f"k8tm{tag}")]
    assert not leftover_ns and not leftover_links, (leftover_ns, leftover_links)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[runstate.RunState]:
    monkeypatch.setattr(runstate, "STATE_ROOT", tmp_path / "state")
    run = runstate.RunState("test-measure")
    yield run
    run.remove_all()


def assert_nothing_left(state: runstate.RunState, *endpoints: Endpoint) -> None:
    """Only the namespace holders live in the test namespaces; the manifest is empty."""
    assert state.data["pids"] == []
    for ep in endpoints:
        assert pids_in_netns(netns_inode(ep.pid)) == {ep.pid}, f"stray process in {ep.name}"


def test_measure_tcp_udp_icmp_between_namespaces(state: runstate.RunState) -> None:
    with two_endpoints(state) as (a, b):
        results: dict[str, Measurement] = {}
        for protocol in ("tcp", "udp", "icmp"):
            results[protocol] = measure(a, b, protocol, 1)
            assert results[protocol].protocol == protocol
            assert_spec_metrics(protocol, results[protocol].samples)
            assert all(isinstance(s.value, float) for s in results[protocol].samples)
        for protocol in ("tcp", "udp"):
            m = results[protocol]
            assert by_metric(m.samples)["throughput_bps"].value > 0
            assert m.peer_seen_by_server == str(a.ip)
            assert json.loads(m.raw)["start"]["connected"][0]["remote_host"] == str(b.ip)
            assert json.loads(m.server_raw)["start"]["accepted_connection"]["host"] == str(a.ip)
            assert m.samples == parse_iperf3(m.raw, protocol)  # values are the raw output's
        icmp = results["icmp"]
        assert icmp.server_raw == "" and icmp.peer_seen_by_server is None
        assert "20 received" in icmp.raw  # max(20, 1 s / 50 ms) pings, all answered
        rtt = by_metric(icmp.samples)
        assert 0 < rtt["rtt_min_ms"].value <= rtt["rtt_p50_ms"].value <= rtt["rtt_max_ms"].value
        assert_nothing_left(state, a, b)


def test_measure_failures_raise_and_leave_nothing(state: runstate.RunState) -> None:
    with two_endpoints(state) as (a, b):
        # an address the client has no route to: the client fails, the server is stopped
        nowhere = Endpoint("nowhere", ipaddress.IPv4Address("10.98.0.2"), b.pid, state)
        with pytest.raises(MeasurementError, match="Network is unreachable"):
            measure(a, nowhere, "tcp", 1)
        with pytest.raises(MeasurementError, match="Network is unreachable"):
            measure(a, nowhere, "icmp", 1)  # ping says so on stderr only
        with pytest.raises(ValueError):
            measure(a, b, "tcp", 0.5)  # iperf3 -t 0.5 would mean -t 0: run forever
        with pytest.raises(ValueError):
            measure(a, b, "sctp", 1)
        assert_nothing_left(state, a, b)
