"""What one run created, written down as it is created, so it can be removed exactly.

A run gets a fresh prefix (``k8t`` + 4 hex digits, never reused while anything
of that name exists) and a state directory ``/run/k8stopo/<prefix>/`` holding a
manifest: the owner pid, every process started (pid + start time, so a reused
pid is never killed), every root-namespace link and named netns. Teardown and
``k8stopo clean`` undo exactly what the manifest lists, plus root-namespace
links that carry the run's own prefix; they never match on broad names.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import time
from pathlib import Path

from . import proc

log = logging.getLogger("k8stopo.runstate")

PREFIX = "k8t"
STATE_ROOT = Path(os.environ.get("K8STOPO_STATE_DIR", "/run/k8stopo"))


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


def root_links() -> list[str]:
    """Names of the links in the root network namespace."""
    out = proc.output(["ip", "-o", "link", "show"])
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line]


def _fresh_prefix() -> str:
    taken = set(root_links())
    while True:
        prefix = PREFIX + secrets.token_hex(2)
        if not (STATE_ROOT / prefix).exists() and not any(l.startswith(prefix) for l in taken):
            return prefix


class RunState:
    """The manifest of one run; see the module docstring."""

    def __init__(self, kind: str, prefix: str | None = None) -> None:
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix or _fresh_prefix()
        self.dir = STATE_ROOT / self.prefix
        self._manifest_path = self.dir / "manifest.json"
        if prefix is None:
            self.dir.mkdir()
            me = os.getpid()
            self.data = {"prefix": self.prefix, "kind": kind, "created": time.time(),
                         "owner": {"pid": me, "start": start_time(me)},
                         "pids": [], "links": [], "netns": []}
            self._save()
        else:
            self.data = json.loads(self._manifest_path.read_text())

    def _save(self) -> None:
        tmp = self._manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self._manifest_path)

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

    def track_pid(self, pid: int, what: str) -> None:
        self.data["pids"].append({"pid": pid, "start": start_time(pid), "what": what})
        self._save()

    def untrack_pid(self, pid: int) -> None:
        self.data["pids"] = [p for p in self.data["pids"] if p["pid"] != pid]
        self._save()

    def track_link(self, name: str) -> None:
        self.data["links"].append(name)
        self._save()

    def track_netns(self, name: str) -> None:
        self.data["netns"].append(name)
        self._save()

    def owner_alive(self) -> bool:
        owner = self.data["owner"]
        return alive(owner["pid"], owner["start"])

    def remove_all(self) -> list[str]:
        """Stop and delete everything the manifest lists; return what was removed."""
        removed: list[str] = []
        for entry in reversed(self.data["pids"]):
            if alive(entry["pid"], entry["start"]):
                try:
                    os.kill(entry["pid"], signal.SIGKILL)
                    removed.append(f"process {entry['what']} ({entry['pid']})")
                except ProcessLookupError:
                    pass
        for entry in self.data["pids"]:
            _wait_gone(entry["pid"], entry["start"])
        present = set(root_links())
        mine = [l for l in self.data["links"] if l in present]
        mine += [l for l in present if l.startswith(self.prefix) and l not in mine]
        for link in mine:
            if proc.run(["ip", "link", "del", link], check=False).returncode == 0:
                removed.append(f"link {link}")
        for ns in self.data["netns"]:
            if proc.run(["ip", "netns", "del", ns], check=False).returncode == 0:
                removed.append(f"netns {ns}")
        shutil.rmtree(self.dir, ignore_errors=True)
        return removed


def _wait_gone(pid: int, started: int | None, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid, started) and time.monotonic() < deadline:
        try:  # reap it if it is our own child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)


def clean(include_live: bool = False) -> list[str]:
    """Remove what crashed runs left behind (runs whose owner process is gone).

    ``include_live`` also removes runs whose owner still runs (for a stuck run).
    """
    removed: list[str] = []
    if not STATE_ROOT.is_dir():
        return removed
    for run_dir in sorted(STATE_ROOT.glob(f"{PREFIX}*")):
        if not (run_dir / "manifest.json").is_file():
            # A run that died between creating its directory and writing its first
            # manifest recorded nothing else; leave a run that may still be starting.
            if time.time() - run_dir.stat().st_mtime > 60:
                shutil.rmtree(run_dir, ignore_errors=True)
                removed.append(f"{run_dir.name}: state directory without manifest")
            continue
        run = RunState("", prefix=run_dir.name)
        if include_live or not run.owner_alive():
            removed += [f"{run.prefix}: {what}" for what in run.remove_all()]
            removed.append(f"{run.prefix}: state directory")
    return removed
