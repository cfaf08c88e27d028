"""Packet capture on the underlay, decoded in Python.

The SPEC fixes what each CNI variant must look like on the wire between nodes
(VXLAN on 8472 with VNI 1, IP-in-IP, raw IP in UDP 8285, Ethernet frames in weave's
sleeve framing on UDP 6783, plain pod IPs, ...).
:class:`Capture` records that wire with tcpdump inside a node's namespace and
:func:`read_pcap` decodes outer and inner headers, so tests can assert the
encapsulation without tshark.
"""
from __future__ import annotations

import ipaddress
import os
import select
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Iterable, Sequence

from .node import Endpoint
from .proc import CommandError

VXLAN_PORTS = (4789, 8472, 6784)  # IANA/calico/docker, flannel, weave fastdp
IP_IN_UDP_PORTS = (8285,)  # flannel's udp backend
SLEEVE_PORTS = (6783,)  # weave's sleeve overlay
SLEEVE_NAME = 6  # weave peer name bytes (mesh NameSize)
SLEEVE_FRAME_HLEN = 2 * SLEEVE_NAME + 2  # src peer, dst peer, big-endian frame length
LINKTYPE_ETHERNET = 1
ETH_P_IP = 0x0800
ETH_HLEN = 14
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
VXLAN_HLEN = 8
VXLAN_FLAG_VNI = 0x08

# Classic libpcap magics (microsecond and nanosecond variants) -> struct byte order.
_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",  # microseconds
    b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">",  # nanoseconds
}


@dataclass(frozen=True)
class Packet:
    """One IPv4 frame seen on the wire: outer headers and, if encapsulated, the inner IP."""

    src: str
    dst: str
    proto: int
    sport: int | None
    dport: int | None
    vni: int | None
    inner_src: str | None
    inner_dst: str | None
    inner_proto: int | None
    #: Ethernet inside (VXLAN, sleeve): the first inner frame's MACs and EtherType
    inner_eth_src: str | None = None
    inner_eth_dst: str | None = None
    inner_ethertype: int | None = None
    #: how many Ethernet frames the datagram carries (weave's sleeve aggregates several)
    inner_frames: int | None = None
    #: the outer frame's MAC addresses (macvlan pods show their own); packets compare by IP
    eth_src: str | None = field(default=None, compare=False)
    eth_dst: str | None = field(default=None, compare=False)


def _ipv4(data: bytes) -> tuple[str, str, int, bytes] | None:
    """(src, dst, proto, L4 payload) of an IPv4 header; payload is empty for non-first fragments."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    if ihl < 20 or len(data) < ihl:
        return None
    total = struct.unpack_from("!H", data, 2)[0]
    end = total if total >= ihl else len(data)  # BIG TCP GSO packets carry total length 0
    frag_offset = struct.unpack_from("!H", data, 6)[0] & 0x1FFF
    payload = data[ihl:end] if frag_offset == 0 else b""
    return (str(ipaddress.IPv4Address(data[12:16])), str(ipaddress.IPv4Address(data[16:20])),
            data[9], payload)


def _ethernet_ipv4(frame: bytes) -> bytes | None:
    """The IPv4 packet inside an Ethernet II frame, None for ARP, IPv6, ..."""
    if len(frame) < ETH_HLEN or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    return frame[ETH_HLEN:]


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _sleeve_frames(payload: bytes) -> list[bytes]:
    """The Ethernet frames of a weave sleeve datagram: after the sender's peer name, each
    frame is [src peer][dst peer][length][frame] (router/frame_crypto.go NonEncryptor)."""
    frames, offset = [], SLEEVE_NAME
    while offset + SLEEVE_FRAME_HLEN <= len(payload):
        length = struct.unpack_from("!H", payload, offset + 2 * SLEEVE_NAME)[0]
        start = offset + SLEEVE_FRAME_HLEN
        if length < ETH_HLEN or start + length > len(payload):
            break
        frames.append(payload[start:start + length])
        offset = start + length
    return frames


def _decode(frame: bytes, vxlan_ports: frozenset[int], ip_in_udp_ports: frozenset[int],
            sleeve_ports: frozenset[int]) -> Packet | None:
    ip = _ethernet_ipv4(frame)
    outer = _ipv4(ip) if ip is not None else None
    if outer is None:
        return None
    src, dst, proto, l4 = outer
    sport = dport = vni = None
    inner_ip: bytes | None = None
    inner_eth: list[bytes] = []
    if proto in (IPPROTO_TCP, IPPROTO_UDP) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4, 0)
        if proto == IPPROTO_UDP:
            udp_payload = l4[8:]
            if (dport in vxlan_ports and len(udp_payload) >= VXLAN_HLEN
                    and udp_payload[0] & VXLAN_FLAG_VNI):
                vni = int.from_bytes(udp_payload[4:7], "big")
                inner_eth = [udp_payload[VXLAN_HLEN:]]
            elif dport in sleeve_ports:
                inner_eth = _sleeve_frames(udp_payload)
            elif dport in ip_in_udp_ports:
                inner_ip = udp_payload
    elif proto == IPPROTO_IPIP:
        inner_ip = l4
    first = inner_eth[0] if inner_eth and len(inner_eth[0]) >= ETH_HLEN else None
    if first is not None:
        inner_ip = _ethernet_ipv4(first)
    inner = _ipv4(inner_ip) if inner_ip is not None else None
    return Packet(src, dst, proto, sport, dport, vni,
                  inner[0] if inner else None, inner[1] if inner else None,
                  inner[2] if inner else None,
                  _mac(first[6:12]) if first else None, _mac(first[0:6]) if first else None,
                  struct.unpack_from("!H", first, 12)[0] if first else None,
                  len(inner_eth) if inner_eth else None,
                  eth_src=_mac(frame[6:12]), eth_dst=_mac(frame[0:6]))


def read_pcap(path: Path, vxlan_ports: Iterable[int] = VXLAN_PORTS,
              ip_in_udp_ports: Iterable[int] = IP_IN_UDP_PORTS,
              sleeve_ports: Iterable[int] = SLEEVE_PORTS) -> list[Packet]:
    """Decode the IPv4 frames of a classic libpcap file (Ethernet link type).

    Encapsulation is recognised by the UDP destination port the caller names
    (``vxlan_ports``: a VXLAN header; ``ip_in_udp_ports``: a bare IPv4 packet;
    ``sleeve_ports``: weave's sleeve framing of Ethernet frames) and by IP
    protocol 4, never guessed from the payload. Non-IPv4 frames are skipped.
    """
    data = Path(path).read_bytes()
    order = _MAGICS.get(data[:4])
    if order is None or len(data) < 24:
        raise ValueError(f"{path}: not a classic libpcap file")
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: link type {linktype}, only Ethernet (1) is decoded")
    vx, iu, sl = frozenset(vxlan_ports), frozenset(ip_in_udp_ports), frozenset(sleeve_ports)
    packets: list[Packet] = []
    offset = 24
    while offset + 16 <= len(data):
        caplen = struct.unpack_from(order + "I", data, offset + 8)[0]
        frame = data[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
        packet = _decode(frame, vx, iu, sl)
        if packet is not None:
            packets.append(packet)
    return packets


class Capture:
    """tcpdump on one interface of an endpoint's namespace, as a context manager.

    Entering returns once tcpdump reports "listening on", so nothing sent
    inside the block is missed; leaving waits until tcpdump has drained its
    capture ring, stops it by pid and fills :attr:`packets`.
    """

    def __init__(self, endpoint: Endpoint, iface: str, path: Path,
                 bpf_filter: Sequence[str] = (), vxlan_ports: Iterable[int] = VXLAN_PORTS,
                 ip_in_udp_ports: Iterable[int] = IP_IN_UDP_PORTS,
                 sleeve_ports: Iterable[int] = SLEEVE_PORTS,
                 ready_timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.iface = iface
        self.path = Path(path)
        self.bpf_filter = tuple(bpf_filter)
        self.vxlan_ports = tuple(vxlan_ports)
        self.ip_in_udp_ports = tuple(ip_in_udp_ports)
        self.sleeve_ports = tuple(sleeve_ports)
        self.ready_timeout = ready_timeout
        self.packets: list[Packet] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Capture:
        argv = ["tcpdump", "-U", "--immediate-mode", "-n", "-i", self.iface,
                "-w", str(self.path), *self.bpf_filter]
        self._proc = p = self.endpoint.spawn(argv, what=f"tcpdump {self.iface}@{self.endpoint.name}")
        try:
            self._wait_listening(p, argv)
        except BaseException:
            self.endpoint.stop(p)
            raise
        return self

    def _wait_listening(self, p: subprocess.Popen[str], argv: list[str]) -> None:
        """Read tcpdump's stderr until it says "listening on"; CommandError if it dies or stalls.

        Raw reads on the descriptor: a buffered readline could block past the deadline.
        """
        assert p.stderr is not None  # spawn pipes stderr unless told otherwise
        fd = p.stderr.fileno()
        seen = b""
        deadline = time.monotonic() + self.ready_timeout
        while b"listening on" not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommandError(argv, -1, "", seen.decode(errors="replace")
                                   + f"\nnot listening after {self.ready_timeout}s")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:  # tcpdump exited: bad interface, filter, ...
                    raise CommandError(argv, p.wait(), "", seen.decode(errors="replace"))
                seen += chunk

    def _wait_drained(self, pid: int, timeout: float = 2.0) -> None:
        """Wait until tcpdump sleeps, i.e. it is blocked in poll() on an empty ring.

        On SIGTERM tcpdump breaks its loop and drops whatever is still queued,
        so the last reply of a ping would often be missing. A packet seen on the
        interface wakes tcpdump synchronously (state R), so once the block's
        traffic is done, state S means everything has been written (``-U``
        writes per packet; ``--immediate-mode`` hands over every packet at once
        instead of in blocks).
        """
        stat = Path(f"/proc/{pid}/stat")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:  # exited on its own
                return
            if state == "S":
                return
            time.sleep(0.001)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._proc is not None, "a Capture is left only after it was entered"
        self._wait_drained(self._proc.pid)
        self.endpoint.stop(self._proc)
        if exc_type is None:  # on failure the pcap stays on disk; don't mask the error
            self.packets = read_pcap(self.path, self.vxlan_ports, self.ip_in_udp_ports,
                                     self.sleeve_ports)
