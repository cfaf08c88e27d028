"""read_pcap on real recordings, and Capture live in a namespace pair of our own.

The two pcaps in tests/data were recorded on this project's reference machine:
netns A (172.20.0.1) and B (172.20.0.2) joined by a veth, captured on B's end;
capture_plain.pcap holds ARP + IPv6 chatter + 3 pings A -> B; capture_vxlan_8472.pcap
holds a flannel-style VXLAN device (id 1, dstport 8472) on each side, inner
addresses 10.244.0.1 (A) and 10.244.1.1 (B), and 3 pings through it.
"""
from __future__ import annotations

import ipaddress
import os
import struct
import subprocess
from pathlib import Path

import pytest

from k8stopo import proc, runstate
from k8stopo.capture import Capture, Packet, read_pcap
from k8stopo.node import Endpoint
from k8stopo.proc import CommandError

DATA = Path(__file__).parent / "data"
PLAIN = DATA / "capture_plain.pcap"
VXLAN = DATA / "capture_vxlan_8472.pcap"
UNDERLAY = {"172.20.0.1", "172.20.0.2"}
INNER = {"10.244.0.1", "10.244.1.1"}


def test_plain_ping_is_outer_icmp_only() -> None:
    packets = read_pcap(PLAIN)
    # 10 frames on the wire: 2 ARP and 2 IPv6 are skipped, 6 ICMP remain
    assert len(packets) == 6
    assert all(p.proto == 1 and {p.src, p.dst} == UNDERLAY for p in packets)
    assert all(p.sport is None and p.vni is None and p.inner_src is None for p in packets)
    assert packets[0] == Packet("172.20.0.1", "172.20.0.2", 1, None, None, None, None, None, None)


def test_vxlan_8472_vni_1_inner_pod_ips() -> None:
    packets = read_pcap(VXLAN)
    assert packets, "the recording holds VXLAN traffic"
    for p in packets:
        assert (p.proto, p.dport, p.vni) == (17, 8472, 1)
        assert {p.src, p.dst} == UNDERLAY
    inner = [p for p in packets if p.inner_src is not None]
    # 3 echo requests and 3 replies; the rest carry inner ARP / IPv6 (no inner IPv4)
    assert len(inner) == 6
    assert all({p.inner_src, p.inner_dst} == INNER and p.inner_proto == 1 for p in inner)
    request = next(p for p in inner if p.inner_src == "10.244.0.1")
    assert (request.src, request.dst, request.inner_dst) == ("172.20.0.1", "172.20.0.2",
                                                             "10.244.1.1")


def test_vxlan_is_decoded_only_on_the_ports_given() -> None:
    packets = read_pcap(VXLAN, vxlan_ports=(4789,))
    assert packets and all(p.dport == 8472 for p in packets)
    assert all(p.vni is None and p.inner_src is None for p in packets)


def _big_endian(pcap: bytes) -> bytes:
    """The same capture written by a big-endian host."""
    out = bytearray(b"\xa1\xb2\xc3\xd4" + struct.pack(">HHiIII", *struct.unpack_from("<HHiIII", pcap, 4)))
    offset = 24
    while offset < len(pcap):
        header = struct.unpack_from("<IIII", pcap, offset)
        out += struct.pack(">IIII", *header) + pcap[offset + 16:offset + 16 + header[2]]
        offset += 16 + header[2]
    return bytes(out)


def test_big_endian_file_reads_the_same(tmp_path: Path) -> None:
    swapped = tmp_path / "be.pcap"
    swapped.write_bytes(_big_endian(VXLAN.read_bytes()))
    assert read_pcap(swapped) == read_pcap(VXLAN)


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return (struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
            + payload)


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _write_pcap(path: Path, ip_packets: list[bytes], linktype: int = 1) -> None:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    body = b"".join(struct.pack("<IIII", 0, 0, 14 + len(p), 14 + len(p)) + eth + p
                    for p in ip_packets)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype) + body)


def test_ipip_and_ip_in_udp_8285(tmp_path: Path) -> None:
    # Built by hand: this kernel has no ipip module to record calico-ipip with.
    inner = _ipv4("192.168.1.2", "192.168.2.3", 6, struct.pack("!HH", 40000, 5201) + bytes(16))
    pcap = tmp_path / "encap.pcap"
    _write_pcap(pcap, [_ipv4("172.20.0.1", "172.20.0.2", 4, inner),
                       _ipv4("172.20.0.1", "172.20.0.2", 17, _udp(8285, 8285, inner)),
                       _ipv4("172.20.0.1", "172.20.0.2", 17, _udp(8285, 9999, inner))])
    ipip, flannel_udp, other_udp = read_pcap(pcap)
    assert ipip == Packet("172.20.0.1", "172.20.0.2", 4, None, None, None,
                          "192.168.1.2", "192.168.2.3", 6)
    assert flannel_udp == Packet("172.20.0.1", "172.20.0.2", 17, 8285, 8285, None,
                                 "192.168.1.2", "192.168.2.3", 6)
    assert other_udp.inner_src is None and other_udp.dport == 9999


def test_weave_sleeve_framing_on_6783(tmp_path: Path) -> None:
    """One datagram aggregating an ARP and an IPv4 frame, as weave's sleeve sends them:
    sender peer name, then per frame src peer, dst peer, 2-byte length, the frame."""
    n1, n2 = bytes.fromhex("c20000000001"), bytes.fromhex("c20000000002")
    pod_a, pod_b = bytes.fromhex("0a0000000001"), bytes.fromhex("0a0000000002")
    arp = b"\xff" * 6 + pod_a + b"\x08\x06" + bytes(28)
    icmp = pod_b + pod_a + b"\x08\x00" + _ipv4("10.32.0.2", "10.40.0.1", 1, bytes(8))

    def framed(*frames: bytes) -> bytes:
        return n1 + b"".join(n1 + n2 + struct.pack("!H", len(f)) + f for f in frames)

    pcap = tmp_path / "sleeve.pcap"
    _write_pcap(pcap, [_ipv4("172.20.0.1", "172.20.0.2", 17, _udp(6783, 6783, framed(icmp, arp))),
                       _ipv4("172.20.0.1", "172.20.0.2", 17, _udp(6783, 6783, framed(arp))),
                       _ipv4("172.20.0.1", "172.20.0.2", 17, _udp(6783, 6783, n1 + n1 + n2))])
    aggregated, arp_only, truncated = read_pcap(pcap)
    assert (aggregated.dport, aggregated.inner_frames, aggregated.inner_ethertype) == (6783, 2, 0x800)
    assert (aggregated.inner_src, aggregated.inner_dst, aggregated.inner_proto) == (
        "10.32.0.2", "10.40.0.1", 1)
    assert (aggregated.inner_eth_src, aggregated.inner_eth_dst) == ("0a:00:00:00:00:01",
                                                                    "0a:00:00:00:00:02")
    assert (arp_only.inner_frames, arp_only.inner_ethertype, arp_only.inner_src) == (1, 0x806, None)
    assert arp_only.inner_eth_dst == "ff:ff:ff:ff:ff:ff"
    assert truncated.inner_frames is None and truncated.inner_ethertype is None
    assert read_pcap(pcap, sleeve_ports=())[0].inner_frames is None  # only on the ports given


def test_rejects_other_link_types_and_non_pcap(tmp_path: Path) -> None:
    sll = tmp_path / "sll.pcap"
    _write_pcap(sll, [], linktype=113)
    with pytest.raises(ValueError, match="link type 113"):
        read_pcap(sll)
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a pcap at all, really not")
    with pytest.raises(ValueError, match="not a classic libpcap"):
        read_pcap(junk)


# --- live: tcpdump in namespaces this test creates -------------------------------------

def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:  # gone meanwhile
            pass
    return found


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two netns joined by a veth, each with a flannel-style VXLAN device (VNI 1, port 8472).

    Yields (endpoint A, endpoint B, B's veth name). Everything carries the run's
    fresh k8t prefix and is removed through the RunState manifest.
    """
    monkeypatch.setattr(runstate, "STATE_ROOT", tmp_path / "state")
    state = runstate.RunState("test-capture")
    p = state.prefix
    sleepers: list[subprocess.Popen[str]] = []
    try:
        ends = []
        for side, under, inner in (("a", "172.20.0.1", "10.244.0.1"),
                                   ("b", "172.20.0.2", "10.244.1.1")):
            ns = f"{p}{side}"
            proc.run(["ip", "netns", "add", ns])
            state.track_netns(ns)
            sleeper = proc.spawn(["ip", "netns", "exec", ns, "sleep", "300"],
                                 stderr=subprocess.DEVNULL)
            sleepers.append(sleeper)
            state.track_pid(sleeper.pid, f"sleep@{ns}")
            ends.append((ns, under, inner, sleeper.pid))
        (ns_a, _, _, _), (ns_b, _, _, _) = ends
        proc.run(["ip", "link", "add", f"{p}va", "netns", ns_a, "type", "veth",
                  "peer", "name", f"{p}vb", "netns", ns_b])
        for (ns, under, inner, _), other, veth in ((ends[0], ends[1], f"{p}va"),
                                                   (ends[1], ends[0], f"{p}vb")):
            def ip(*args: str) -> None:
                proc.run(["ip", "-n", ns, *args])
            ip("link", "set", "lo", "up")
            ip("addr", "add", f"{under}/16", "dev", veth)
            ip("link", "set", veth, "up")
            ip("link", "add", f"{p}x", "type", "vxlan", "id", "1", "dstport", "8472",
               "local", under, "remote", other[1], "dev", veth)
            ip("addr", "add", f"{inner}/16", "dev", f"{p}x")
            ip("link", "set", f"{p}x", "up")
        a, b = (Endpoint(ns, ipaddress.IPv4Address(under), pid, state)
                for ns, under, _, pid in ends)
        yield a, b, f"{p}vb"
    finally:
        for sleeper in sleepers:
            proc.stop(sleeper)
            state.untrack_pid(sleeper.pid)
        state.remove_all()


@pytest.mark.requires_root
def test_capture_sees_vxlan_encapsulation(pair, tmp_path: Path) -> None:
    a, b, veth_b = pair
    pcap = tmp_path / "live.pcap"
    with Capture(b, veth_b, pcap, ["udp", "port", "8472"]) as cap:
        a.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.244.1.1"])
    requests = [p for p in cap.packets if p.inner_src == "10.244.0.1" and p.inner_proto == 1]
    replies = [p for p in cap.packets if p.inner_src == "10.244.1.1" and p.inner_proto == 1]
    assert len(requests) == 3 and len(replies) == 3
    assert all((p.src, p.dst, p.dport, p.vni) == ("172.20.0.1", "172.20.0.2", 8472, 1)
               for p in requests)
    assert all(p.dport == 8472 for p in cap.packets)  # the BPF filter was applied
    assert [e["what"] for e in b.state.data["pids"]] == ["sleep@" + a.name, "sleep@" + b.name]


@pytest.mark.requires_root
def test_capture_filter_and_plain_traffic(pair, tmp_path: Path) -> None:
    a, b, veth_b = pair
    with Capture(b, veth_b, tmp_path / "icmp.pcap", ["icmp"]) as cap:
        a.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "172.20.0.2"])
        a.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.244.1.1"])  # UDP outside: filtered
    assert len(cap.packets) == 4
    assert all(p.proto == 1 and p.vni is None and p.inner_src is None for p in cap.packets)


@pytest.mark.requires_root
def test_capture_on_missing_interface_fails_cleanly(pair, tmp_path: Path) -> None:
    _, b, _ = pair
    pcap = tmp_path / "x.pcap"
    with pytest.raises(CommandError, match="no-such-if"):
        with Capture(b, "no-such-if", pcap):
            pass
    assert len(b.state.data["pids"]) == 2  # only the two sleepers
    assert not _processes_mentioning(str(pcap))
