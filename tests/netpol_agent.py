"""Run inside a pod's namespace by the policy tests (plain python3, no k8stopo import).

``serve NAME PORT/PROTO...``: answer every TCP connection and UDP datagram on the given ports
with NAME (the pod's ``ns/pod``), as the e2e suite's agnhost does.
``probe JSON``: JSON is a list of [key, ip, port, proto, [source_port, source_port]]; try
all at the same time, each a second time once its first try timed out (as the e2e suite
retries, so a lost datagram does not read as a policy), and print {key: answered-name-or-null}.
A UDP try sends from the source port it is given: the caller never reuses one, so no probe
rides on an earlier case's conntrack entry (which Felix's and weave-npc's ESTABLISHED rules
accept, as on a real node). The retry is made here, not by a second round of the caller's,
so that a blocked probe costs two timeouts and no second start of this program in every pod.
"""
from __future__ import annotations

import json
import selectors
import socket
import sys
import threading

# As the e2e suite's probes: `agnhost connect --timeout=1s`, `nc -w 1 -u` (a blocked probe is
# tried once more, so a slow answer under load does not read as a policy).
TIMEOUT = 1.0


def serve(name: str, specs: list[str]) -> None:
    sel = selectors.DefaultSelector()
    for spec in specs:
        port, proto = spec.split("/")
        if proto == "TCP":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", int(port)))
            s.listen(128)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", int(port)))
        sel.register(s, selectors.EVENT_READ, proto)
    print("ready", flush=True)
    answer = name.encode()
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if key.data == "TCP":
                conn, _ = s.accept()
                try:
                    conn.sendall(answer)
                finally:
                    conn.close()
            else:
                _, peer = s.recvfrom(2048)
                s.sendto(answer, peer)


def probe_one(ip: str, port: int, proto: str, source_port: int) -> str | None:
    kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(TIMEOUT)
        try:
            if proto == "TCP":
                s.connect((ip, port))
            else:
                s.bind(("0.0.0.0", source_port))
                s.sendto(b"?", (ip, port))
            return s.recv(256).decode() or None
        except OSError:
            return None


def probe(targets: list[list]) -> None:
    out: dict[str, str | None] = {}

    def run(key: str, ip: str, port: int, proto: str, source_ports: list[int]) -> None:
        answer = None
        for source_port in source_ports:
            answer = probe_one(ip, port, proto, source_port)
            if answer is not None:
                break
        out[key] = answer

    threads = [threading.Thread(target=run, args=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    else:
        probe(json.loads(sys.argv[2]))
