"""The run's long-running programs, one class per daemon, in the manner of IPMininet.

A :class:`Daemon` names its program (``NAME``), renders its config from a template of
k8stopo/templates, has the program's own parser check it (``bird -p``, ``dnsmasq --test``)
before anything starts, knows its argv, when it is ready (a control socket answers, a
health endpoint says 200, a ``ready`` line on stdout) and how it stops. Its files are
``<state>/daemons/<NAME>_<where>.conf`` and ``.log`` (stdout and stderr, and what the
program logs itself), so a failed run's logs are found by name.

An agent owns its daemons in a :class:`Daemons` group, which starts them in a pipeline
(every config checked, then every daemon started, a few at once, then every one waited
for) and stops them in reverse start order; the cluster stops its agents in reverse too.
Any failure is one :class:`~k8stopo.errors.DaemonError` naming the daemon, where it ran
and its log, which is copied out of the run's state first (``STATE_ROOT/logs/<prefix>``,
where a failed build keeps its logs), so the file named still exists after teardown.
"""
from __future__ import annotations

import concurrent.futures
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

from . import proc, runstate
from .errors import DaemonError, tail
from .templates import render

if TYPE_CHECKING:
    from .node import Endpoint

#: daemons started (or configs checked) at once: each is a fork and exec that waits on the
#: kernel more than on Python
WORKERS = 8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Daemon:
    """One program running in one endpoint (a node, a pod, the underlay's router)."""

    NAME: ClassVar[str]
    #: its config template in k8stopo/templates, or None for a daemon configured by argv
    TEMPLATE: ClassVar[str | None] = None
    #: a line it prints on stdout once ready (k8stopo's own C programs), or None
    READY_LINE: ClassVar[str | None] = None
    #: at the cluster's teardown, kill it at once: its goodbyes would be work for no one
    #: (a thousand BIRDs' Ceases have the reflectors relay withdrawals among the dying)
    KILL_AT_TEARDOWN: ClassVar[bool] = False
    #: seconds a graceful stop waits for SIGTERM to work before SIGKILL
    STOP_TIMEOUT: ClassVar[float] = 5.0
    #: seconds :meth:`wait_ready` waits by default
    READY_TIMEOUT: ClassVar[float] = 10.0

    def __init__(self, where: "Endpoint", **values: Any) -> None:
        self.where = where
        self.values = values  # what the agent knows for the template (peers, addresses)
        base = where.state.directory("daemons")
        self.conf = base / f"{self.NAME}_{where.name}.conf"
        self.log = base / f"{self.NAME}_{where.name}.log"
        self.proc: subprocess.Popen[str] | None = None
        self._stdout = b""  # what a READY_LINE daemon printed so far
        self.checked = False  # its config is written and its parser accepted it
        self.stopped = False  # stopped (or killed) and forgotten by the run

    def __repr__(self) -> str:
        return f"<{self.NAME} on {self.where.name}>"

    # -- what a subclass says -------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The template's values (by default, what the agent gave, and the log file)."""
        return {**self.values, "log": self.log}

    def check_argv(self) -> list[object] | None:
        """The daemon's own parser run on :attr:`conf` (None: no config to check)."""
        return None

    def argv(self) -> list[object]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def ready(self) -> bool:
        """Whether it serves yet (default: it printed READY_LINE, or it runs at all)."""
        if self.READY_LINE is None:
            return True
        return self._read_stdout().startswith(self.READY_LINE.encode())

    def rendered(self) -> str:
        """Its config as TEMPLATE fills it (not written)."""
        assert self.TEMPLATE is not None, f"{self} has no config template"
        return render(self.TEMPLATE, **self.config())

    # -- lifecycle ------------------------------------------------------------------
    def write_config(self) -> None:
        """Render the config and have the daemon's parser check it; DaemonError (its
        stderr in the message and in the log) if it refuses, before anything starts."""
        self.checked = True
        if self.TEMPLATE is None:
            return
        self.conf.write_text(self.rendered())
        argv = self.check_argv()
        if argv is None:
            return
        result = proc.run(argv, check=False)
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip()
            self.log.write_text(f"config check `{' '.join(map(str, argv))}` exited "
                                f"{result.returncode}:\n{said}\n")
            self.checked = False
            raise self.failure(f"config check failed: {tail(said)}")

    def start(self) -> None:
        """Spawn it in its endpoint (tracked by the run, in its cgroup), output in its log."""
        if self.running:
            raise RuntimeError(f"{self} is running already")
        self._stdout, self.stopped = b"", False
        with self.log.open("a") as log:  # the child keeps its own descriptor
            stdout = subprocess.PIPE if self.READY_LINE is not None else log
            self.proc = self.where.spawn(self.argv(), what=f"{self.NAME}@{self.where.name}",
                                         stdout=stdout, stderr=log, env=self.env())

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until :meth:`ready`; DaemonError if it exits meanwhile or is not ready in time."""
        wait_ready([self], self.READY_TIMEOUT if timeout is None else timeout)

    def check_running(self) -> None:
        """DaemonError if it has exited (its endpoint would silently lose what it serves),
        unless it was stopped on purpose."""
        if self.stopped:
            return
        if self.proc is None:
            raise self.failure("never started")
        if self.proc.poll() is not None:
            raise self.failure(f"exited with {self.proc.returncode}: {tail(self.read_log())}")

    def stop(self) -> None:
        """Gracefully: SIGTERM, wait STOP_TIMEOUT, then SIGKILL; forgotten by the run."""
        if self.proc is not None and not self.stopped:
            self.stopped = True
            try:
                proc.stop(self.proc, self.STOP_TIMEOUT)
            finally:
                self.where.state.untrack_pid(self.proc.pid)

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGHUP: reload, clear a cache) if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    # -- what it is -----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self} never started"
        return self.proc.pid

    def poll(self) -> int | None:
        """The exit status once it exited, None while it runs (as Popen.poll)."""
        return None if self.proc is None else self.proc.poll()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cpu_seconds(self) -> float:
        """User and system CPU it has used so far (/proc/<pid>/stat utime + stime)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14, 15 of stat(5)

    def rss_kib(self) -> int:
        """Its resident memory now (/proc/<pid>/status VmRSS)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmRSS:"))

    def failure(self, why: str) -> DaemonError:
        """A DaemonError naming it and its log, the log copied where a failed run's logs are
        kept (the run's state directory goes at teardown)."""
        kept = keep(self.where.state, self.log, self.conf) if self.log.exists() else None
        return DaemonError(self.NAME, self.where.name, why, kept)

    def _read_stdout(self) -> bytes:
        """What it printed on stdout so far, read without blocking."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 256)
            if not chunk:
                break
            self._stdout += chunk
        return self._stdout


def keep(state: runstate.RunState, log: Path, *others: Path) -> Path:
    """Copy a daemon's log (and its config) to STATE_ROOT/logs/<prefix>/, where a failed
    build keeps the run's logs (:meth:`RunState.keep_logs`); return the log's copy."""
    dest = runstate.STATE_ROOT / runstate.LOGS / state.prefix
    kept = dest / log.relative_to(state.dir)
    for path in (log, *others):
        if path.exists():
            target = dest / path.relative_to(state.dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return kept


def wait_ready(daemons: Sequence[Daemon], timeout: float) -> None:
    """Until every daemon is ready; DaemonError for the first that exits or is late."""
    pending = [d for d in daemons if not d.stopped]
    deadline = time.monotonic() + timeout
    while pending:
        for daemon in pending:
            daemon.check_running()
        pending = [d for d in pending if not d.ready()]
        if not pending:
            return
        if time.monotonic() > deadline:
            late = pending[0]
            more = f" (and {len(pending) - 1} more)" if len(pending) > 1 else ""
            raise late.failure(f"not ready after {timeout:.0f}s{more}")
        time.sleep(0.02)


def kill_all(daemons: Sequence[Daemon]) -> None:
    """SIGKILL them at once, then reap them; the run forgets them."""
    doomed = [d for d in daemons if d.proc is not None and not d.stopped]
    proc.kill_all([d.proc for d in doomed if d.proc is not None])
    for d in doomed:
        d.stopped = True
        d.where.state.untrack_pid(d.pid)


def per_daemon(work: Callable[[Daemon], None], daemons: Sequence[Daemon]) -> None:
    """``work(daemon)`` for each, WORKERS at once; the first failure is raised once all
    under way have finished."""
    if len(daemons) <= 1:
        for d in daemons:
            work(d)
        return
    with concurrent.futures.ThreadPoolExecutor(min(WORKERS, len(daemons))) as pool:
        for future in [pool.submit(work, d) for d in daemons]:
            future.result()


class Daemons:
    """An agent's daemons in start order: started as a pipeline, stopped in reverse."""

    def __init__(self) -> None:
        self._started: list[Daemon] = []

    def __iter__(self) -> Iterator[Daemon]:
        return iter(self._started)

    def __len__(self) -> int:
        return len(self._started)

    def start(self, *groups: Sequence[Daemon], timeout: float | None = None) -> None:
        """Check every config of every group not checked yet (none starts if one is
        refused), then start each group in turn, WORKERS at once, and, with ``timeout``,
        wait until all of the group are ready before the next."""
        per_daemon(lambda d: d.write_config(),
                   [d for group in groups for d in group if not d.checked])
        for group in groups:
            # recorded before they start: one that fails midway is still stopped with the rest
            self._started += [d for d in group if d not in self._started]
            per_daemon(lambda d: d.start(), group)
            if timeout is not None:
                wait_ready(group, timeout)

    def wait_ready(self, timeout: float) -> None:
        wait_ready(self._started, timeout)

    def check_running(self) -> None:
        for d in self._started:
            d.check_running()

    def stop(self) -> None:
        """Kill those that go with the cluster at once, then stop the others gracefully, in
        reverse start order; all are forgotten."""
        kill_all([d for d in self._started if d.KILL_AT_TEARDOWN])
        for d in reversed(self._started):
            if not d.KILL_AT_TEARDOWN:
                d.stop()
        self._started.clear()


def socket_answers(path: Path, greeting: bytes = b"") -> bool:
    """Whether a unix control socket accepts a connection (and greets with ``greeting``):
    asked from this process, no fork per poll."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(path))
            return s.recv(256).startswith(greeting) if greeting else True
    except OSError:
        return False


def http_status(where: "Endpoint", port: int, path: str) -> tuple[int, str]:
    """GET ``http://127.0.0.1:<port><path>`` from inside ``where``: (status, body)."""
    res = where.run(["curl", "-s", "-m", "3", "-o", "-", "-w", "\n%{http_code}",
                     f"http://127.0.0.1:{port}{path}"], check=False)
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body

