"""Time an ordinary resolver call as a pod's program makes it: glibc's getaddrinfo
(IPv4, so one A query per name tried), which reads the pod's resolv.conf (search
path, ndots). Run inside a pod as ``python -m k8stopo.dns.lookup NAME COUNT``;
prints JSON: the address found and each call's duration in nanoseconds.
"""
from __future__ import annotations

import json
import socket
import sys
import time


def lookup(name: str, count: int) -> dict[str, object]:
    """``count`` lookups of ``name``; a name that does not resolve is timed all the same
    (its address is null)."""
    durations, address = [], None
    for _ in range(count):
        start = time.perf_counter_ns()
        try:
            info = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_DGRAM)
            address = info[0][4][0]
        except socket.gaierror:
            address = None
        durations.append(time.perf_counter_ns() - start)
    return {"name": name, "address": address, "ns": durations}


if __name__ == "__main__":
    print(json.dumps(lookup(sys.argv[1], int(sys.argv[2]))))
