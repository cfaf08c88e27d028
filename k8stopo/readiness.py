"""readinessProbe as kubelet runs it, and Endpoints following it as the EndpointSlice
controller does.

A pod whose manifest declares a readinessProbe starts not ready; kubelet's prober, on
the pod's node, checks it first ``initialDelaySeconds`` after the pod started and then
every ``periodSeconds``; ``successThreshold`` passes in a row make it ready,
``failureThreshold`` failures in a row not ready again. Each change goes through
:meth:`Cluster.set_ready`, so kube-proxy's endpoints and headless DNS records follow.

The handlers, checked from the node's network namespace as kubelet does:

* ``tcpSocket``: the port accepts a connection (podprobe);
* ``httpGet``: an HTTP answer with a status from 200 to 399 (curl; the pod servers
  answer HTTP/1.1 on their TCP ports);
* ``grpc``: the port accepts a connection: the pod servers speak no gRPC, so a served
  port stands for a SERVING health answer;
* ``exec``: passes (no container image runs here).

A probe on a port the pod does not serve fails, so the pod stays out of its Services.
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .agent import Agent
from .errors import NotReady
from .servers import build
from .workload import Probe, pod_handle

if TYPE_CHECKING:
    from .context import ClusterContext
    from .node import Pod

log = logging.getLogger("k8stopo.readiness")


@dataclass
class _State:
    pod: "Pod"
    probe: Probe
    started: float
    checks: int = 0
    checked_at: list[float] = field(default_factory=list)  # monotonic time of each check
    passes: int = 0  # in a row
    failures: int = 0  # in a row


@dataclass(order=True)
class _Due:
    at: float
    name: str = field(compare=False)


def port_of(probe: Probe, pod: "Pod") -> int | None:
    """The probe's port: a number, or the pod's container port of that name."""
    if isinstance(probe.port, int):
        return probe.port
    return next((p.container_port for p in pod.ports if p.name == probe.port), None)


class Readiness(Agent):
    """kubelet's readiness prober for every pod whose manifest has a readinessProbe."""

    name = "readiness"
    requires = ("gcc", "curl")

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        workload = cluster.spec.workload
        self.probes = {pod_handle(p.name, p.namespace): p.readiness
                       for p in (workload.pods if workload else ()) if p.readiness is not None}
        self.states: dict[str, _State] = {}
        self.due: list[_Due] = []
        self.lock = threading.Lock()
        # held while a probe runs and its verdict reaches the agents (kube-proxy's sync, the
        # speakers' election), so a first verdict counts once the cluster acts on it
        self.applying = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def pod_added(self, pod: "Pod") -> None:
        probe = self.probes.get(pod.name)
        if probe is None:
            return
        pod.ready = False  # not ready until its probe passes (before kube-proxy's first sync)
        now = time.monotonic()
        with self.lock:
            self.states[pod.name] = _State(pod, probe, now)
            heapq.heappush(self.due, _Due(now + probe.initial_delay_s, pod.name))

    def check(self, pod: "Pod", probe: Probe) -> bool:
        """One run of the probe's handler from the pod's node."""
        if probe.kind == "exec":
            return True
        port = port_of(probe, pod)
        node = pod.node
        if port is None or node is None:
            return False
        if probe.kind == "httpGet":
            res = node.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m",
                            str(probe.timeout_s), "-A", "kube-probe",
                            f"http://{pod.ip}:{port}{probe.path}"], check=False)
            code = res.stdout.strip()
            return code.isdigit() and 200 <= int(code) < 400
        assert self.cluster.state is not None
        binary = build(self.cluster.state, "podprobe")  # tcpSocket, grpc: the port accepts
        line = node.output([str(binary), str(probe.timeout_s * 1000), "1", "1",
                            f"tcp:{pod.ip}:{port}"])
        return int(line.split()[4]) > 0 or line.split()[3] == "ok"

    def step(self) -> float | None:
        """Run the probe that is due, if any; the seconds until the next one (None: none)."""
        with self.applying:
            return self._step()

    def _step(self) -> float | None:
        with self.lock:
            if not self.due:
                return None
            wait = self.due[0].at - time.monotonic()
            if wait > 0:
                return wait
            due = heapq.heappop(self.due)
            state = self.states[due.name]
        try:
            ok = self.check(state.pod, state.probe)
        except Exception as exc:  # kubelet counts a probe that errors as a failure
            log.debug("readiness probe of %s errored: %s", state.pod.name, exc)
            ok = False
        with self.lock:
            state.checks += 1
            state.checked_at.append(time.monotonic())
            state.passes, state.failures = (state.passes + 1, 0) if ok else (0, state.failures + 1)
            heapq.heappush(self.due, _Due(due.at + state.probe.period_s, due.name))
        pod, probe = state.pod, state.probe
        if not pod.ready and state.passes >= probe.success_threshold:
            self.cluster.set_ready(pod, True)
        elif pod.ready and state.failures >= probe.failure_threshold:
            self.cluster.set_ready(pod, False)
        return 0.0

    def decided(self) -> bool:
        """Every probed pod has been checked often enough for its first verdict, and the
        agents have acted on it."""
        with self.applying, self.lock:
            return all(s.pod.ready or s.checks >= s.probe.success_threshold
                       for s in self.states.values())

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                wait = self.step()
            except Exception as exc:  # a node going away under it (teardown): keep probing
                if not self.stopping.is_set():
                    log.warning("readiness prober: %s", exc)
                wait = 0.1
            if wait:
                self.stopping.wait(min(wait, 1.0))
            elif wait is None:
                self.stopping.wait(1.0)

    def wait_ready(self, timeout: float) -> None:
        """Start the prober, and return once every probe has given its first verdict."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="readiness", daemon=True)
            self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.decided():
            if time.monotonic() > deadline:
                raise NotReady(f"readiness probes gave no verdict in {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
