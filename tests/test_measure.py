"""Tests of k8stopo.measure.

Parsers are checked against real iperf3 3.12 / iputils ping / sockperf 3.7 output
and /proc/stat readings recorded between two network namespaces on this machine
(tests/data/); the runners are checked end to end between two namespaces created
here (needs root). Expected values are read from the recorded files themselves,
never retyped.
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

from k8stopo import doctor, proc, runstate
from k8stopo import measure as measure_mod
from k8stopo.measure import (
    PROTOCOLS,
    CpuTimes,
    Measurement,
    MeasurementError,
    Overlap,
    Params,
    Sample,
    TcpRR,
    cpu_busy_pct,
    cpu_busy_seconds,
    delivered_gbit,
    fits_idle,
    measure,
    parse_iperf3,
    parse_ping,
    parse_proc_stat,
    parse_sockperf,
)
from k8stopo.node import Endpoint
from k8stopo.spec import PROTOCOLS as SPEC_PROTOCOLS

DATA = Path(__file__).parent / "data"

SPEC_METRICS = {
    "tcp": {"throughput_bps": "bit/s", "retransmits": "count",
            "cpu_sender_pct": "%", "cpu_receiver_pct": "%"},
    "udp": {"throughput_bps": "bit/s", "jitter_ms": "ms", "loss_pct": "%", "packets_per_s": "1/s"},
    "icmp": {"rtt_avg_ms": "ms", "rtt_min_ms": "ms", "rtt_max_ms": "ms",
             "rtt_p50_ms": "ms", "rtt_p99_ms": "ms"},
    "tcp_rr": {"transactions_per_s": "1/s", "latency_p50_us": "us", "latency_p90_us": "us",
               "latency_p99_us": "us"},
}
# what measure() adds to the tool's own metrics
CPU_METRICS = {"tcp": {"cpu_busy_pct": "%", "cpu_s_per_gbit": "s/Gbit"}}

#: the protocols measured between two endpoints (k8stopo.dns registers dns, which needs a
#: cluster's DNS: tests/test_dns.py)
POINT_TO_POINT = [p for p in PROTOCOLS if p != "dns"]


def read(name: str) -> str:
    return (DATA / name).read_text()


def by_metric(samples: list[Sample]) -> dict[str, Sample]:
    names = [s.metric for s in samples]
    assert len(names) == len(set(names)), f"duplicate metrics: {names}"
    return {s.metric: s for s in samples}


def assert_spec_metrics(protocol: str, samples: list[Sample]) -> None:
    got = {s.metric: s.unit for s in samples}
    assert got == SPEC_METRICS[protocol]


def assert_measured_metrics(protocol: str, samples: list[Sample]) -> None:
    got = {s.metric: s.unit for s in samples}
    assert got == {**SPEC_METRICS[protocol],
                   **CPU_METRICS.get(protocol, {"cpu_busy_pct": "%"})}


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
    # datagrams delivered (sent minus lost, as the receiver counted them) per second
    got_packets = end["sum_received"]["packets"] - end["sum_received"]["lost_packets"]
    assert got["packets_per_s"].value == pytest.approx(got_packets / end["sum_received"]["seconds"])
    assert got["packets_per_s"].value * 1448 * 8 == pytest.approx(
        got["throughput_bps"].value, rel=0.01)  # 1448-byte datagrams, as -J's blksize says
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


def test_parse_sockperf_full_round_trip_percentiles_and_rate() -> None:
    text = read("sockperf_pp_tcp_rtt.txt")
    got = by_metric(parse_sockperf(text))
    assert_spec_metrics("tcp_rr", list(got.values()))
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    pct = dict(re.findall(r"percentile ([\d.]+) =\s*([\d.]+)", plain))
    assert got["latency_p50_us"].value == float(pct["50.000"])
    assert got["latency_p90_us"].value == float(pct["90.000"])
    assert got["latency_p99_us"].value == float(pct["99.000"])
    valid = re.search(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=\d+; "
                      r"ReceivedMessages=(\d+)", plain)
    assert valid is not None
    # the valid duration's replies over its run time, not the whole run's (warm-up included)
    assert got["transactions_per_s"].value == int(valid.group(2)) / float(valid.group(1))
    total = re.search(r"\[Total Run\] RunTime=([\d.]+) sec.*ReceivedMessages=(\d+)", plain)
    assert total is not None
    assert got["transactions_per_s"].value != int(total.group(2)) / float(total.group(1))


def test_parse_sockperf_refuses_half_round_trips() -> None:
    """Without --full-rtt sockperf prints latency = RTT/2, not a transaction's time."""
    text = read("sockperf_pp_tcp_halfrtt.txt")
    assert "avg-latency=" in text and "percentile 50.000" in text
    with pytest.raises(MeasurementError, match="half round trips"):
        parse_sockperf(text)


@pytest.mark.parametrize("name, message", [
    ("sockperf_refused.txt", "Connection refused"),
    ("sockperf_noroute.txt", "No route to host"),
])
def test_parse_sockperf_errors_although_it_exits_0(name: str, message: str) -> None:
    with pytest.raises(MeasurementError, match=message):
        parse_sockperf(read(name))


def test_parse_sockperf_without_statistics_or_a_percentile_raises() -> None:
    with pytest.raises(MeasurementError, match="no round-trip statistics"):
        parse_sockperf("sockperf: Starting test...\n")
    text = re.sub(r".*percentile 90\.000.*\n", "", read("sockperf_pp_tcp_rtt.txt"))
    with pytest.raises(MeasurementError, match="percentile 90"):
        parse_sockperf(text)


def test_proc_stat_busy_share_from_recorded_readings() -> None:
    """Two real readings one second apart while a shell loop spun on one core."""
    before, after = (parse_proc_stat(read(f"proc_stat_{w}.txt")) for w in ("before", "after"))
    first = [int(v) for v in read("proc_stat_before.txt").split("\n")[0].split()[1:]]
    last = [int(v) for v in read("proc_stat_after.txt").split("\n")[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (
        b - a for a, b in zip(first[:8], last[:8]))
    busy = user + nice + system + irq + softirq + steal
    assert cpu_busy_pct(before, after) == pytest.approx(100 * busy / (busy + idle + iowait))
    assert cpu_busy_seconds(before, after, hz=100) == busy / 100
    assert 1.0 <= cpu_busy_seconds(before, after, hz=100) <= 2.0 + 0.05  # 2 cores, ~1 s


def test_proc_stat_counts_softirq_and_not_guest_twice() -> None:
    """SYNTHETIC lines: softirq is busy time; guest is already inside user."""
    line = "cpu  {u} 0 {s} {i} 0 0 {si} 0 {g} 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    before = parse_proc_stat(line.format(u=100, s=100, i=1000, si=0, g=0))
    after = parse_proc_stat(line.format(u=150, s=100, i=1100, si=50, g=40))
    assert after.busy - before.busy == 100  # 50 user (40 of it guest) + 50 softirq
    assert cpu_busy_pct(before, after) == 50.0
    with pytest.raises(MeasurementError, match="did not advance"):
        cpu_busy_pct(after, after)
    with pytest.raises(MeasurementError, match="no aggregate cpu line"):
        parse_proc_stat("intr 1 2 3\n")


def test_cpu_seconds_per_gbit_uses_the_receivers_bytes() -> None:
    text = read("iperf3_tcp_client.json")
    end = json.loads(text)["end"]
    assert delivered_gbit(text) == end["sum_received"]["bytes"] * 8 / 1e9
    data = json.loads(text)
    data["end"]["sum_sent"]["bytes"] *= 2  # what the sender wrote does not count
    assert delivered_gbit(json.dumps(data)) == delivered_gbit(text)
    data["end"]["sum_received"]["bytes"] //= 2
    assert delivered_gbit(json.dumps(data)) == pytest.approx(delivered_gbit(text) / 2)
    _, parser = PROTOCOLS["tcp"]
    before, after = CpuTimes(busy=1000, total=5000), CpuTimes(busy=1300, total=5400)
    got = by_metric(parser(text, before, after))
    assert got["cpu_s_per_gbit"].value == pytest.approx(
        cpu_busy_seconds(before, after) / delivered_gbit(text))


def test_protocol_registry_is_specs_and_names_doctors_tools() -> None:
    import k8stopo.dns.perf  # noqa: F401  (registers "dns", as bench's import does)
    assert tuple(PROTOCOLS) == SPEC_PROTOCOLS
    assert set(measure_mod.REQUIRES) == set(PROTOCOLS)
    assert {t for tools in measure_mod.REQUIRES.values() for t in tools} <= set(doctor.TOOLS)


def test_only_what_fits_runs_in_sockperfs_idle_time() -> None:
    assert fits_idle(["tcp", "tcp_rr", "icmp"], Params(duration=1)) == ["tcp", "icmp"]
    assert fits_idle(["tcp", "icmp"], Params(duration=2)) == ["icmp"]  # 2 s of TCP cannot
    assert fits_idle(["tcp", "udp"], Params(duration=1)) == ["tcp"]


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


@pytest.mark.requires_root
def test_measure_every_protocol_between_namespaces(state: runstate.RunState) -> None:
    with two_endpoints(state) as (a, b):
        results: dict[str, Measurement] = {}
        for protocol in POINT_TO_POINT:
            results[protocol] = measure(a, b.ip, b, protocol, Params(duration=1))
            assert results[protocol].protocol == protocol
            assert_measured_metrics(protocol, results[protocol].samples)
            assert all(isinstance(s.value, float) for s in results[protocol].samples)
            busy = by_metric(results[protocol].samples)["cpu_busy_pct"].value
            assert 0 < busy <= 100  # the tools themselves ran, so the box was busy
        for protocol in ("tcp", "udp"):
            m = results[protocol]
            assert by_metric(m.samples)["throughput_bps"].value > 0
            assert m.peer_seen_by_server == str(a.ip)
            assert json.loads(m.raw)["start"]["connected"][0]["remote_host"] == str(b.ip)
            assert json.loads(m.server_raw)["start"]["accepted_connection"]["host"] == str(a.ip)
            tool = [s for s in m.samples if s.metric not in ("cpu_busy_pct", "cpu_s_per_gbit")]
            assert tool == parse_iperf3(m.raw, protocol)  # values are the raw output's
        icmp = results["icmp"]
        assert icmp.server_raw == "" and icmp.peer_seen_by_server is None
        assert "100 received" in icmp.raw  # 100 pings per second of duration, all answered
        rtt = by_metric(icmp.samples)
        assert 0 < rtt["rtt_min_ms"].value <= rtt["rtt_p50_ms"].value <= rtt["rtt_max_ms"].value
        rr = results["tcp_rr"]
        assert "avg-rtt=" in rr.raw and f"IP = {b.ip}" in rr.raw  # full round trips, to b
        assert [s for s in rr.samples if s.metric != "cpu_busy_pct"] == parse_sockperf(rr.raw)
        lat = by_metric(rr.samples)
        assert lat["latency_p50_us"].value <= lat["latency_p90_us"].value \
            <= lat["latency_p99_us"].value
        assert_nothing_left(state, a, b)


@pytest.mark.requires_root
def test_rr_idle_time_hosts_a_measurement_and_overrun_is_caught(state: runstate.RunState) -> None:
    with two_endpoints(state) as (a, b):
        with TcpRR(a, str(b.ip), b, Params(duration=1)) as rr:
            with rr.idle():
                inside = measure(a, b.ip, b, "icmp", Params(duration=1))
            run = rr.run()
        assert rr.started_at is not None and rr.idle_until is not None
        assert rr.idle_until < rr.started_at  # the ping ended before sockperf's test began
        assert by_metric(inside.samples)["rtt_avg_ms"].value > 0
        assert parse_sockperf(run.raw)
        with pytest.raises(Overlap, match="began"), TcpRR(a, str(b.ip), b, Params(duration=1)) as rr:
            with rr.idle():
                time.sleep(measure_mod.RR_IDLE_S + 0.3)  # overruns the idle sleep
            rr.run()
        assert_nothing_left(state, a, b)


@pytest.mark.requires_root
def test_measure_failures_raise_and_leave_nothing(state: runstate.RunState) -> None:
    with two_endpoints(state) as (a, b):
        # an address the client has no route to: the client fails, the server is stopped
        for protocol in POINT_TO_POINT:
            with pytest.raises(MeasurementError, match=r"Network is unreachable|No route"):
                measure(a, "10.98.0.2", b, protocol)  # ping says so on stderr only
        # b's address, but nobody answers there on sockperf's port: sockperf exits 0
        # server in a, not b
        with pytest.raises(MeasurementError, match=r"Connection refused|did not connect"), \
                TcpRR(a, str(b.ip), a, Params(duration=1)) as rr:
            rr.run()
        with pytest.raises(ValueError):
            measure(a, b.ip, b, "tcp", Params(duration=0.5))  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            measure(a, b.ip, b, "sctp")
        assert_nothing_left(state, a, b)
