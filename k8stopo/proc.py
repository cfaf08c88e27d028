"""The one place where k8stopo runs other programs.

Every command is an argv list (never a shell string), is logged, may run inside
another process's network namespace (``nsenter --net=/proc/PID/ns/net``: unlike
``mnexec -a`` it leaves the mount namespace alone, so CNI plugins still see
/var/run/netns), and fails with a :class:`CommandError` that carries stderr.

A pod's commands may also enter the pod's *mount* namespace (``mount=True``):
Mininet's shells are made with ``mnexec -n`` (new network and mount namespaces),
so a pod's pause shell already holds a private mount namespace, where cluster
DNS bind-mounts the pod's own /etc/resolv.conf (:mod:`k8stopo.dns`). Node
commands never do, so CNI plugins keep the host's view.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

from .errors import RunError

log = logging.getLogger("k8stopo.proc")


class CommandError(RunError):
    """A command exited non-zero; ``stderr`` says why."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout).strip().splitlines()
        tail = " | ".join(detail[-3:]) if detail else "no output"
        super().__init__(f"{' '.join(self.argv)} exited {returncode}: {tail}")


#: a command: program and arguments; numbers, addresses and paths are turned into strings
Argv = Sequence[object]
Netns = int | str | None  # a pid living in the namespace, a named netns, or None (here)
Stream = int | IO[Any] | None  # what Popen takes for a child's stdout/stderr


def in_netns(argv: Argv, netns: Netns, mount: bool = False) -> list[str]:
    """argv prefixed so that it runs in ``netns``: the namespace of a pid, or a named one;
    with ``mount``, also in that pid's mount namespace."""
    words = [str(a) for a in argv]
    if netns is None:
        return words
    path = f"/proc/{netns}/ns/net" if isinstance(netns, int) else f"/run/netns/{netns}"
    enter = [f"--net={path}"]
    if mount:
        if not isinstance(netns, int):
            raise ValueError(f"a named netns ({netns}) has no mount namespace to enter")
        enter.append(f"--mount=/proc/{netns}/ns/mnt")
    return ["nsenter", *enter, "--", which(words[0]) or words[0], *words[1:]]


def _joiner(cgroup_procs: Path | None) -> Callable[[], None] | None:
    """A child's ``preexec_fn`` that joins the cgroup of ``cgroup_procs`` before it execs."""
    if cgroup_procs is None:
        return None

    def join() -> None:
        with open(cgroup_procs, "w") as f:
            f.write(str(os.getpid()))
    return join


def run(
    argv: Argv,
    netns: Netns = None,
    *,
    mount: bool = False,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = 120,
    cgroup_procs: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and return it; raise CommandError on failure. With
    ``cgroup_procs`` it runs in that cgroup (a fork instead of a vfork: a millisecond more)."""
    full = in_netns(argv, netns, mount)
    log.debug("run: %s", " ".join(full))
    merged_env = {**os.environ, **env} if env else None
    try:
        proc = subprocess.run(full, input=input, capture_output=True, text=True,
                              env=merged_env, timeout=timeout, check=False,
                              preexec_fn=_joiner(cgroup_procs))
    except subprocess.TimeoutExpired as exc:
        raise CommandError(full, -1, "", f"timed out after {timeout}s") from exc
    if proc.returncode != 0:
        log.debug("failed (%d): %s", proc.returncode, proc.stderr.strip())
        if check:
            raise CommandError(full, proc.returncode, proc.stdout, proc.stderr)
    return proc


def output(argv: Argv, netns: Netns = None, **kwargs) -> str:
    """Run a command and return its stdout."""
    return run(argv, netns, **kwargs).stdout


def spawn(
    argv: Argv,
    netns: Netns = None,
    *,
    mount: bool = False,
    stdout: Stream = subprocess.DEVNULL,
    stderr: Stream = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    cgroup_procs: Path | None = None,
) -> subprocess.Popen[str]:
    """Start a long-running command (a daemon kept in the foreground, a server).

    Callers own the handle: register it with the run (``RunState.track_pid``) so
    that teardown and ``k8stopo clean`` can stop it by pid. With ``cgroup_procs``
    the child joins that cgroup before it execs, so that nothing it starts can
    escape the run, not even in the instant before it is recorded.
    """
    full = in_netns(argv, netns, mount)
    log.debug("spawn: %s", " ".join(full))
    merged_env = {**os.environ, **env} if env else None
    # nsenter execs the command, so the pid we get is the command's own pid.
    return subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            text=True, env=merged_env, start_new_session=True,
                            preexec_fn=_joiner(cgroup_procs))


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate a spawned process, then kill it if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()  # SIGKILL cannot be refused
    _close(proc)


def kill_all(procs: Sequence[subprocess.Popen]) -> None:
    """SIGKILL every spawned process at once, then reap them: for daemons that go with their
    whole cluster, whose graceful goodbyes would be work for no one (at 1,000 nodes, each
    BIRD's Cease has the reflectors send a withdrawal to every other node)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()
        _close(p)


def _close(p: subprocess.Popen) -> None:
    """Close the pipes of a reaped process."""
    for stream in (p.stdout, p.stderr):
        if stream is not None:
            stream.close()


def which(tool: str) -> str | None:
    """Path of a tool on PATH (or in /usr/sbin, which root's PATH may lack)."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/local/sbin:/usr/sbin:/sbin")
