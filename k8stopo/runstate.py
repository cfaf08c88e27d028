"""What one run created, written down as it is created, so it can be removed exactly.

A run gets a fresh prefix (``k8t`` + 4 hex digits, never reused while anything
of that name exists) and a state directory ``/run/k8stopo/<prefix>/`` holding:

* a journal (``manifest.jsonl``, append-only, one JSON object per line, so that
  recording the 10,000th process costs what the first did): the owner pid, every
  process started (pid + start time, so a reused pid is never killed) and every
  named netns (a run creates no link in the root namespace; any link there that bears
  its prefix is removed all the same);
* a cgroup (v2) of its own, ``<cgroup2 mount>/k8stopo/<prefix>``: every process of
  the run is in it from birth (Mininet shells are moved there as they start;
  spawned daemons join it before they exec), and so is everything those start,
  a user's ``pod-n1-0 iperf3 -s -D`` from the Mininet CLI included.

Teardown and ``k8stopo clean`` stop exactly the run's processes: the cgroup's
members, any process inside a namespace of the run (found by namespace identity:
the netns inode of a recorded, still-living process), and the recorded pids.
They never match on broad names. What cannot be removed stays on record (the
journal is rewritten with what is left) and is reported, so the next ``clean``
tries again instead of saying "nothing left behind".
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable, NoReturn

from . import proc

log = logging.getLogger("k8stopo.runstate")

PREFIX = "k8t"
STATE_ROOT = Path(os.environ.get("K8STOPO_STATE_DIR", "/run/k8stopo"))
JOURNAL = "manifest.jsonl"
LOGS = "logs"  # where a failed run's daemon logs are kept: STATE_ROOT/logs/<prefix>/
GONE_TIMEOUT_S = 5.0


#: the exception of the last SIGINT/SIGTERM delivered to this process (see :func:`deliver`)
_delivered: list[BaseException] = []


def deliver(exc: BaseException) -> NoReturn:
    """A signal handler's body: remember ``exc``, then raise it. Python runs a handler at the
    next bytecode, which may be inside a callback whose exceptions it only prints (an at-fork
    hook of ``logging``: a Ctrl-C that lands as a subprocess forks); the run then calls
    :func:`raise_delivered` between its steps, so such a signal still ends it."""
    _delivered.append(exc)
    raise exc


def raise_delivered() -> None:
    """Raise the exception of a signal delivered earlier (once), if there was one."""
    if _delivered:
        raise _delivered.pop()


def forget_delivered() -> None:
    """A new command starts: signals of an earlier one in this process are none of its own."""
    _delivered.clear()


def start_time(pid: int) -> int | None:
    """Kernel start time of a process (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, started: int | None) -> bool:
    """True when ``pid`` still names the very process that was recorded."""
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def netns_inode(pid: int) -> int | None:
    """The identity of a process's network namespace (None once it is gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def in_namespaces_of(holders: Iterable[int]) -> set[int]:
    """Every process (but this one) living in the network namespace of one of ``holders``,
    never in the host's own: what a run, or one node of it, holds by namespace identity."""
    inodes = {i for i in map(netns_inode, holders) if i is not None}
    # The host's namespace is pid 1's, and this process's (k8stopo runs in it): pid 1's may
    # be unreadable (a container's init), and None must not stand for "no host namespace".
    inodes -= {netns_inode(1), netns_inode(os.getpid())}
    if not inodes:
        return set()
    return {int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and netns_inode(int(e.name)) in inodes} - {os.getpid()}


def root_links() -> list[str]:
    """Names of the links in the root network namespace."""
    out = proc.output(["ip", "-o", "link", "show"])
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line]


def move_to_cgroup(pids: Iterable[int], cgroup: Path) -> None:
    """Move processes into ``cgroup`` (v2); one that exited meanwhile is skipped."""
    for pid in pids:
        try:
            (cgroup / "cgroup.procs").write_text(str(pid))
        except (ProcessLookupError, FileNotFoundError):
            pass


#: the folder under the cgroup v2 mount that holds one cgroup per run, named by its prefix
CGROUP_DIR = "k8stopo"


def cgroup2_root() -> Path | None:
    """Where cgroup v2 is mounted (/sys/fs/cgroup or, on hybrid hosts, .../unified)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def _fresh_prefix() -> str:
    taken = set(root_links())
    while True:
        prefix = PREFIX + secrets.token_hex(2)
        if not (STATE_ROOT / prefix).exists() and not any(l.startswith(prefix) for l in taken):
            return prefix


class RunState:
    """The record of one run; see the module docstring. ``RunState.open`` reads one back."""

    _joins: concurrent.futures.ThreadPoolExecutor | None  # moves into the cgroup, queued
    _lock: threading.Lock  # the queue above, and the list of pids

    def __init__(self, kind: str) -> None:
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        root = cgroup2_root()
        me = os.getpid()
        while True:
            self.prefix = _fresh_prefix()
            self.cgroup: Path | None = root / CGROUP_DIR / self.prefix if root else None
            self._init_shared()
            self.data: dict[str, Any] = {
                "prefix": self.prefix, "kind": kind, "created": time.time(),
                "owner": {"pid": me, "start": start_time(me)},
                "cgroup": str(self.cgroup) if self.cgroup else None,
                "pids": [], "netns": []}
            # The directory appears whole, journal included (a rename is atomic), so an
            # interrupt can never leave a run directory that does not say whose it is.
            self.dir = STATE_ROOT / f".{self.prefix}.new"
            self.dir.mkdir()
            self._rewrite()
            try:
                self.dir.rename(STATE_ROOT / self.prefix)
            except OSError:  # another run took that prefix this very instant
                shutil.rmtree(self.dir)
                continue
            self.dir = STATE_ROOT / self.prefix
            break
        if self.cgroup is not None:
            self.cgroup.mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, prefix: str) -> "RunState":
        """The record of an existing run, replayed from its journal."""
        self = cls.__new__(cls)
        self.prefix = prefix
        self.dir = STATE_ROOT / prefix
        self.data = _replay((self.dir / JOURNAL).read_text())
        self.cgroup = Path(self.data["cgroup"]) if self.data.get("cgroup") else None
        self._init_shared()
        return self

    # -- the journal ------------------------------------------------------------------
    def _append(self, entry: dict[str, Any]) -> None:
        with (self.dir / JOURNAL).open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def _rewrite(self) -> None:
        """Replace the journal by one header line holding the whole record (atomically)."""
        tmp = self.dir / (JOURNAL + ".tmp")
        tmp.write_text(json.dumps({"op": "run", **self.data}) + "\n")
        tmp.replace(self.dir / JOURNAL)

    # -- paths ------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """A path inside the run's state directory (parents are created)."""
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def directory(self, *parts: str) -> Path:
        """A directory inside the run's state directory, created if needed."""
        p = self.dir.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def log_path(self, node: str, daemon: str) -> Path:
        """``<state>/<node>/<daemon>.log``: daemons log into the run, not the host's syslog;
        a failed build keeps these files (see :meth:`keep_logs`)."""
        return self.path(node, f"{daemon}.log")

    # -- recording --------------------------------------------------------------------
    def track_pid(self, pid: int, what: str) -> None:
        """Record a process of the run, and put it in the run's cgroup if not there yet.

        The move is queued (:meth:`settle` waits for it): each write to ``cgroup.procs``
        waits for an RCU grace period, about 10 ms, serialised machine-wide; a thousand
        pods' shells moved one by one on the attaching threads cost seconds, queued they
        go back to back. Until it has moved, the process is stopped by its recorded pid."""
        entry = {"pid": pid, "start": start_time(pid), "what": what}
        with self._lock:
            self.data["pids"].append(entry)
        self._append({"op": "pid", **entry})
        if self.cgroup is not None and not self.holds(pid):
            with self._lock:
                if self._joins is None:
                    self._joins = concurrent.futures.ThreadPoolExecutor(1, "cgroup-join")
                self._joins.submit(self.join_cgroup, pid)

    def _init_shared(self) -> None:
        """What threads of the run share: the queue of cgroup moves and its lock."""
        self._joins = None
        self._lock = threading.Lock()

    def settle(self) -> None:
        """Wait until every recorded process has been moved into the run's cgroup."""
        with self._lock:
            joins, self._joins = self._joins, None
        if joins is not None:
            joins.shutdown(wait=True)

    def holds(self, pid: int) -> bool:
        """Whether ``pid`` is in the run's cgroup already (a spawned process joins before
        it execs)."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        return f"0::/{CGROUP_DIR}/{self.prefix}" in lines

    def untrack_pid(self, pid: int) -> None:
        with self._lock:  # processes are stopped from several threads at once
            self.data["pids"] = [p for p in self.data["pids"] if p["pid"] != pid]
        self._append({"op": "unpid", "pid": pid})

    def kill(self, processes: dict[str, subprocess.Popen[str]]) -> None:
        """Kill processes of the run (by name) at once and forget them: the cluster is going,
        so none has anyone to tell (the pods' pause processes)."""
        proc.kill_all(list(processes.values()))
        for p in processes.values():
            self.untrack_pid(p.pid)
        processes.clear()

    def track_netns(self, name: str) -> None:
        self.data["netns"].append(name)
        self._append({"op": "netns", "name": name})

    @property
    def cgroup_procs(self) -> Path | None:
        """The file a process writes its pid to, to join the run's cgroup."""
        return self.cgroup / "cgroup.procs" if self.cgroup else None

    def join_cgroup(self, pid: int) -> None:
        if self.cgroup is not None:
            move_to_cgroup([pid], self.cgroup)

    def owner_alive(self) -> bool:
        owner = self.data["owner"]
        return alive(owner["pid"], owner["start"])

    # -- removal ----------------------------------------------------------------------
    def _run_processes(self) -> set[int]:
        """Every living process of the run: cgroup members, and whatever lives in a
        namespace held by a recorded process (a tool started there from outside)."""
        pids: set[int] = set()
        if self.cgroup is not None and (self.cgroup / "cgroup.procs").exists():
            pids |= {int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()}
        recorded = [e["pid"] for e in self.data["pids"] if alive(e["pid"], e["start"])]
        pids |= in_namespaces_of(recorded) | set(recorded)
        pids.discard(os.getpid())
        return pids

    def stop_strays(self) -> list[str]:
        """Kill the run's processes that it did not start itself (a user's daemon from the
        Mininet CLI, a tool nsenter'd into a pod), while the namespaces that identify them
        still exist; the recorded ones are left for an orderly stop."""
        recorded = {e["pid"] for e in self.data["pids"]}
        strays = {pid: start_time(pid) for pid in self._run_processes() - recorded}
        names = {pid: _comm(pid) for pid in strays}
        _kill(strays)
        return [f"process {names[pid]} ({pid})" for pid in strays]

    def remove_all(self) -> tuple[list[str], list[str]]:
        """Stop and delete everything of the run; return (removed, left behind).

        What is left behind stays in the journal, which is kept, so a later
        ``k8stopo clean`` tries again."""
        self.settle()
        removed: list[str] = []
        names = {e["pid"]: e["what"] for e in self.data["pids"]}
        victims = {pid: start_time(pid) for pid in self._run_processes()}
        names.update({pid: _comm(pid) for pid in victims if pid not in names})
        if self.cgroup is not None and (self.cgroup / "cgroup.kill").exists():
            (self.cgroup / "cgroup.kill").write_text("1")
        _kill(victims)
        removed += [f"process {names[pid]} ({pid})" for pid in victims]
        left = [f"process {names.get(p, p)} ({p})" for p, s in victims.items() if alive(p, s)]
        mine = [l for l in root_links() if l.startswith(self.prefix)]
        left_links = []
        for link in mine:
            if proc.run(["ip", "link", "del", link], check=False).returncode == 0:
                removed.append(f"link {link}")
            else:
                left_links.append(link)
        left_netns = []
        for ns in self.data["netns"]:
            if not Path(f"/run/netns/{ns}").exists():
                continue
            if proc.run(["ip", "netns", "del", ns], check=False).returncode == 0:
                removed.append(f"netns {ns}")
            else:
                left_netns.append(ns)
        if self.cgroup is not None and self.cgroup.exists():
            for child in self.cgroup.iterdir():  # a fault's freezer (k8stopo.faults), emptied
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            try:
                self.cgroup.rmdir()
            except OSError as exc:
                left.append(f"cgroup {self.cgroup} ({exc.strerror})")
            else:
                try:  # the runs' parent cgroup too, once no other run is in it
                    self.cgroup.parent.rmdir()
                except OSError:
                    pass
        left += [f"link {l}" for l in left_links] + [f"netns {n}" for n in left_netns]
        if left:
            self.data["netns"] = left_netns
            self.data["pids"] = [e for e in self.data["pids"] if alive(e["pid"], e["start"])]
            self._rewrite()
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return removed, left

    def keep_logs(self) -> Path | None:
        """Copy the run's daemon logs and rendered configs out of the state directory
        (which teardown removes) to STATE_ROOT/logs/<prefix>; return where, or None."""
        files = [p for p in self.dir.rglob("*") if p.is_file() and p.suffix in
                 (".log", ".conf", ".rules", ".json", ".env", ".cfg", ".nft")]
        if not files:
            return None
        dest = STATE_ROOT / LOGS / self.prefix
        for f in files:
            target = dest / f.relative_to(self.dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
        return dest


def _replay(text: str) -> dict[str, Any]:
    """The record a journal describes: its header line, then each later entry applied."""
    data: dict[str, Any] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line torn by a crash mid-write: everything before it stands
            log.warning("run journal: skipping a torn line")
            continue
        op = entry.pop("op")
        if op == "run":
            data = entry
        elif op == "pid":
            data["pids"].append(entry)
        elif op == "unpid":
            data["pids"] = [p for p in data["pids"] if p["pid"] != entry["pid"]]
        elif op == "netns":
            data["netns"].append(entry["name"])
    return data


def _kill(victims: dict[int, int | None]) -> None:
    """SIGKILL each (pid, start time) that is still that very process, then wait for all."""
    for pid, started in victims.items():
        if alive(pid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid, started in victims.items():
        _wait_gone(pid, started)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "process"


def _wait_gone(pid: int, started: int | None, timeout: float = GONE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid, started) and time.monotonic() < deadline:
        try:  # reap it if it is our own child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)


def runs() -> Iterable[Path]:
    """The state directories of runs (live or dead) on this machine."""
    if not STATE_ROOT.is_dir():
        return []
    return sorted(p for p in STATE_ROOT.glob(f"{PREFIX}*") if p.is_dir())


def clean(include_live: bool = False) -> tuple[list[str], list[str]]:
    """Remove what crashed runs left behind (runs whose owner process is gone);
    return (removed, left behind).

    ``include_live`` also removes runs whose owner still runs (for a stuck run).
    """
    removed: list[str] = []
    left: list[str] = []
    for unborn in STATE_ROOT.glob(f".{PREFIX}*.new") if STATE_ROOT.is_dir() else []:
        # A run interrupted while writing its first journal line created nothing else;
        # leave one that may still be starting.
        if time.time() - unborn.stat().st_mtime > 60:
            shutil.rmtree(unborn, ignore_errors=True)
            removed.append(f"{unborn.name}: unfinished state directory")
    for run_dir in runs():
        try:
            run = RunState.open(run_dir.name)
        except FileNotFoundError:  # that run just finished and removed its directory
            continue
        if include_live or not run.owner_alive():
            gone, still = run.remove_all()
            removed += [f"{run.prefix}: {what}" for what in gone]
            left += [f"{run.prefix}: {what}" for what in still]
            if not still:
                removed.append(f"{run.prefix}: state directory")
    return removed, left
