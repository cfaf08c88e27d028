"""Small C forwarders of our own, standing in for the real agents' userspace datapaths.

flanneld's udp backend and weave's sleeve overlay move every packet through
user space; that copy is what those datapaths cost, so it is done here in C
with the same loop shape as upstream (never in Python, which would misstate
it). ``make install`` (scripts/install.sh) compiles each ``*.c`` file of this
directory with gcc into ``build/native/<name>`` (git-ignored), where
:func:`binary` finds it; ``k8stopo doctor`` reports whether they are built.
"""
from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import RunError
from ..proc import CommandError

if TYPE_CHECKING:
    from ..node import Endpoint
    from ..runstate import RunState

BUILD = Path(__file__).resolve().parent.parent.parent / "build" / "native"
#: the forwarders, each built from the ``.c`` file of its name with ``_`` for ``-``
PROGRAMS = ("flannel-udp-proxy", "weave-sleeve")


def binary(name: str) -> Path:
    """Where ``make install`` put the forwarder ``name`` (it may not be built yet)."""
    if name not in PROGRAMS:
        raise KeyError(f"no native program {name!r} (known: {', '.join(PROGRAMS)})")
    return BUILD / name


def log_path(state: "RunState", where: str, name: str) -> Path:
    """Where forwarder ``name`` running in endpoint ``where`` writes its stderr."""
    return state.path(where, f"{name}.log")


def start(endpoint: "Endpoint", name: str, args: Sequence[object],
          timeout: float = 10.0) -> subprocess.Popen[str]:
    """Spawn forwarder ``name`` in ``endpoint`` (tracked by the run, stderr into its log in the
    run's state) and return once it printed its ``ready`` line, i.e. its device exists and its
    socket is bound."""
    log = log_path(endpoint.state, endpoint.name, name)
    path = binary(name)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is not built: run `make install`")
    with log.open("w") as err:  # the child keeps its own descriptor
        p = endpoint.spawn([str(path), *map(str, args)], what=f"{name}@{endpoint.name}",
                           stdout=subprocess.PIPE, stderr=err)
    fd = p.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while not seen.startswith(b"ready"):
        left = deadline - time.monotonic()
        chunk = os.read(fd, 256) if left > 0 and select.select([fd], [], [], left)[0] else b""
        if not chunk:
            endpoint.stop(p)
            raise CommandError(p.args, p.returncode if p.returncode is not None else -1, "",
                               log.read_text() or f"{name} not ready after {timeout}s")
        seen += chunk
    return p


def check_running(state: "RunState", processes: dict[str, subprocess.Popen[str]],
                  name: str) -> None:
    """RunError naming the endpoint and the forwarder's last log line if one has exited
    (its node's pods would silently lose every cross-node packet)."""
    for where, p in processes.items():
        if p.poll() is not None:
            log = log_path(state, where, name).read_text().strip().splitlines()
            raise RunError(f"{name} on {where} exited with {p.returncode}: "
                               f"{log[-1] if log else 'no log output'}")
