"""The bench runner end to end: rows, interleaving, raw outputs, appending, interruption."""
from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

from k8stopo import results
from k8stopo.bench import plan
from k8stopo.spec import BenchSpec

from conftest import REPO, k8stopo, run_dirs

METRICS = {"tcp": {"throughput_bps", "retransmits", "cpu_sender_pct", "cpu_receiver_pct"},
           "icmp": {"rtt_avg_ms", "rtt_min_ms", "rtt_max_ms", "rtt_p50_ms", "rtt_p99_ms"}}


def read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_plan_interleaves_variants_within_each_repeat() -> None:
    spec = BenchSpec(cnis=("a", "b"), scenarios=("host-to-host",), protocols=("tcp",), repeat=2)
    assert [(s.repeat, s.cni) for s in plan(spec)] == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]


def test_bench_writes_every_metric_keeps_raw_output_and_appends(tmp_path: Path) -> None:
    out, plots = tmp_path / "runs" / "bench.csv", tmp_path / "plots"
    args = ["bench", "--cni", "host,flannel-vxlan", "--scenarios",
            "host-to-host,pod-to-pod-cross-node", "--protocols", "tcp,icmp",
            "--duration", "1", "--repeat", "2", "--out", str(out)]
    before = run_dirs()
    first = k8stopo(*args, "--plots", str(plots))
    assert first.returncode == 0, first.stderr
    assert run_dirs() == before  # every cluster torn down
    rows = read(out)
    assert set(rows[0]) == set(results.COLUMNS)
    seen = {}
    for row in rows:
        seen.setdefault((row["cni"], row["scenario"], row["protocol"], row["repeat"]),
                        set()).add(row["metric"])
        assert (out.parent / row["raw_file"]).is_file()
        assert row["kernel"] and row["k8stopo_version"] and row["run_id"]
    assert len(seen) == 2 * 2 * 2 * 2
    for (cni, scenario, protocol, repeat), metrics in seen.items():
        assert metrics == METRICS[protocol]
    pod_rows = [r for r in rows if r["cni"] == "flannel-vxlan" and r["scenario"] ==
                "pod-to-pod-cross-node"]
    assert {r["mtu"] for r in pod_rows} == {"1450"}
    assert {r["client"] for r in pod_rows} == {"pod-n1-0"}
    # interleaved: every variant's repeat 0 was measured before any repeat 1
    order = [(r["started_at"], int(r["repeat"])) for r in rows]
    last_r0 = max(t for t, rep in order if rep == 0)
    first_r1 = min(t for t, rep in order if rep == 1)
    assert last_r0 <= first_r1
    assert (plots / "tcp_throughput_normalised.png").stat().st_size > 0
    assert (plots / "rtt.png").stat().st_size > 0

    second = k8stopo(*args[:-4], "--repeat", "1", "--out", str(out))
    assert second.returncode == 0, second.stderr
    again = read(out)
    assert again[:len(rows)] == rows  # never overwritten
    assert len({r["run_id"] for r in again}) == 2


def test_interrupted_bench_keeps_its_rows_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench.csv"
    before = run_dirs()
    proc = subprocess.Popen(
        [sys.executable, "-m", "k8stopo", "bench", "--cni", "flannel-host-gw,calico-bgp",
         "--scenarios", "pod-to-pod-cross-node", "--protocols", "icmp", "--duration", "1",
         "--repeat", "20", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(read(out)) < 10):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    rows = read(out)
    assert len(rows) >= 10 and len(rows) % 5 == 0  # whole measurements only
    assert all(float(r["value"]) > 0 for r in rows if r["metric"] == "rtt_avg_ms")
    assert run_dirs() == before
