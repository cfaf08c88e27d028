"""The ARP half of a MetalLB speaker in layer-2 mode, run on the node elected for some
load-balancer IPs.

MetalLB's speaker does not add a Service's external IP to any interface: it opens a raw
socket on the node's NIC, answers every ARP request for an IP it announces with the
NIC's own MAC, and sends a gratuitous ARP for it when it starts announcing (so
neighbours that cached another node's MAC move over). This process does the same::

    python -m k8stopo.arpspeaker IFACE IP...

It prints ``ready`` once its socket is bound and the gratuitous ARPs are out; each
request it answers is one line ``answered IP to MAC`` on stderr (its log).
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import sys

ETH_P_ARP = 0x0806
ARP_REQUEST, ARP_REPLY = 1, 2
BROADCAST = b"\xff" * 6


def arp_frame(dst_mac: bytes, src_mac: bytes, op: int, sender_mac: bytes, sender_ip: bytes,
              target_mac: bytes, target_ip: bytes) -> bytes:
    """An Ethernet frame carrying one ARP packet (Ethernet/IPv4)."""
    return (dst_mac + src_mac + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
            + sender_mac + sender_ip + target_mac + target_ip)


def reply_to(frame: bytes, mac: bytes, announced: set[bytes]) -> bytes | None:
    """The reply to ``frame`` if it is an ARP request for an announced IP, else None."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    _htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if ptype != 0x0800 or (hlen, plen) != (6, 4) or op != ARP_REQUEST:
        return None
    sender_mac, sender_ip, target_ip = frame[22:28], frame[28:32], frame[38:42]
    if target_ip not in announced:
        return None
    return arp_frame(sender_mac, mac, ARP_REPLY, mac, target_ip, sender_mac, sender_ip)


def main(iface: str, ips: list[str]) -> None:
    announced = {ipaddress.IPv4Address(ip).packed for ip in ips}
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    s.bind((iface, ETH_P_ARP))
    mac = s.getsockname()[4]
    for ip in sorted(announced):  # gratuitous ARP: a request for itself, to everyone
        s.send(arp_frame(BROADCAST, mac, ARP_REQUEST, mac, ip, b"\0" * 6, ip))
    print("ready", flush=True)
    while True:
        frame = s.recv(2048)
        reply = reply_to(frame, mac, announced)
        if reply is not None:
            s.send(reply)
            print(f"answered {ipaddress.IPv4Address(reply[28:32])} to "
                  f"{reply[:6].hex(':')}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
