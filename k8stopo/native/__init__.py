"""Small C forwarders of our own, standing in for the real agents' userspace datapaths.

flanneld's udp backend and weave's sleeve overlay move every packet through
user space; that copy is what those datapaths cost, so it is done here in C
with the same loop shape as upstream (never in Python, which would misstate
it). ``make install`` (scripts/install.sh) compiles each ``*.c`` file of this
directory with gcc into ``build/native/<name>`` (git-ignored), where
:func:`binary` finds it; ``k8stopo doctor`` reports whether they are built.
Each runs as a :class:`~k8stopo.daemon.Daemon`: configured by its argv, ready once it
printed ``ready`` (its device exists and its socket is bound), killed with its cluster.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..daemon import Daemon

if TYPE_CHECKING:
    from ..node import Endpoint

BUILD = Path(__file__).resolve().parent.parent.parent / "build" / "native"
#: seconds a forwarder gets to open its device and socket
READY_TIMEOUT = 10.0


def binary(name: str) -> Path:
    """Where ``make install`` put the forwarder ``name`` (it may not be built yet)."""
    if name not in FORWARDERS:
        raise KeyError(f"no native program {name!r} (known: {', '.join(PROGRAMS)})")
    return BUILD / name


class Forwarder(Daemon):
    """One of the C forwarders in one node, with the peers it was given as arguments."""

    READY_LINE = "ready"
    KILL_AT_TEARDOWN = True
    READY_TIMEOUT = READY_TIMEOUT

    def __init__(self, where: "Endpoint", args: Sequence[object]) -> None:
        super().__init__(where)
        self.args = list(args)

    def argv(self) -> list[object]:
        return [binary(self.NAME), *self.args]

    def start(self) -> None:
        if not os.access(binary(self.NAME), os.X_OK):
            raise self.failure(f"{binary(self.NAME)} is not built: run `make install`")
        super().start()


class FlannelUDPProxy(Forwarder):
    """flanneld's udp backend (proxy_amd64.c's loop): TUN <-> UDP 8285."""

    NAME = "flannel-udp-proxy"


class WeaveSleeve(Forwarder):
    """weave's sleeve router: AF_PACKET capture <-> UDP 6783."""

    NAME = "weave-sleeve"


#: the forwarders by program name, each built from the ``.c`` file of its name with ``_``
FORWARDERS: dict[str, type[Forwarder]] = {c.NAME: c for c in (FlannelUDPProxy, WeaveSleeve)}
PROGRAMS = tuple(FORWARDERS)
