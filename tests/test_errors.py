"""The run's failure types and the output-path checks: a failure is one line, an output
path that cannot be written is bad input before anything is built."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd
import pytest

from k8stopo import analysis, measure, plots, results
from k8stopo.errors import DaemonError, NotReady, RunError, one_line, tail
from k8stopo.spec import SpecError

from synthetic import context, fixture_rows, write_csv


def test_a_daemon_error_names_the_daemon_where_and_its_log() -> None:
    exc = DaemonError("bird", "n1", "config check failed: syntax error", Path("/x/bird.log"))
    assert str(exc) == "bird on n1: config check failed: syntax error; log: /x/bird.log"
    assert isinstance(exc, RunError) and isinstance(NotReady("BGP"), (RunError, TimeoutError))


def test_a_failure_reads_as_one_line() -> None:
    table = RunError("BGP did not converge in 60s; `birdc show protocols` on n3:\n"
                     "Name  Proto State\n\n  Mesh_1 BGP  Active  \n")
    assert one_line(table) == ("BGP did not converge in 60s; `birdc show protocols` on n3: | "
                               "Name  Proto State | Mesh_1 BGP  Active")
    assert one_line(RunError("")) == "RunError"
    assert tail("a\n\nb\nc\nd\n", 2) == "c | d" and tail("  \n") == "no output"


def test_an_output_directory_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SpecError, match="file exists and is not a directory"):
        results.check_output_dir(tmp_path / "file" / "plots", "--plots")
    with pytest.raises(SpecError, match=r"--out /proc/x: cannot create anything in /proc"):
        results.check_output_dir(Path("/proc/x"), "--out")  # as root too: /proc takes no entry
    results.check_output_dir(tmp_path / "new" / "plots", "--plots")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the check left nothing


def test_a_csv_that_cannot_be_appended_to_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a directory, not a CSV file"):
        results.check_appendable(tmp_path)
    with pytest.raises(SpecError, match="cannot create anything in /proc"):
        results.check_appendable(Path("/proc/x/y.csv"))
    results.check_appendable(tmp_path / "new" / "r.csv")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a directory without w bits")
def test_a_directory_without_write_permission_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(SpecError, match=r"cannot create anything in .*locked"):
            results.check_output_dir(locked / "plots", "--out")
    finally:
        locked.chmod(0o700)


def test_a_variant_that_failed_to_build_is_counted_and_the_others_charted(
        tmp_path: Path) -> None:
    """bench's rows for a variant whose cluster failed to build (no client, server or path
    MTU) read back, count as failures in the summary, and leave the others' charts whole."""
    rows = [r for r in fixture_rows(("tcp",), extra={"error": ""}) if r["cni"] == "flannel-vxlan"]
    why = "bird on n1: config check failed: syntax error"
    for repeat in (0, 1, 2):
        for scenario in ("host-to-host", "pod-to-pod-cross-node"):
            ctx = dataclasses.replace(context("calico-bgp", scenario, "tcp", repeat,
                                              extra={"error": why}),
                                      mtu=None, client="", server="", client_ip="", server_ip="")
            rows += results.rows(ctx, "2026-11-25T00:00:00Z",
                                 [measure.Sample(results.FAILED, 1, "count")])
    df = results.load([write_csv(tmp_path / "r.csv", rows)])
    fails = analysis.failures(df)
    assert set(zip(fails["cni"], fails["scenario"], fails["failed"], fails["error"])) == {
        ("calico-bgp", s, 3, why) for s in ("host-to-host", "pod-to-pod-cross-node")}
    written = plots.plot_all(df, tmp_path / "plots")
    assert tmp_path / "plots" / "tcp_throughput.png" in written
    summary = pd.read_csv(tmp_path / "plots" / "summary.csv")
    assert set(summary.loc[summary["cni"] == "flannel-vxlan", "repeats"]) == {3}
    assert "3× bird on n1: config check failed" in (tmp_path / "plots" / "summary.md").read_text()


def test_a_signal_whose_exception_was_swallowed_still_ends_the_run() -> None:
    """Python may run a signal handler inside a callback whose exceptions it only prints (an
    at-fork hook): the run raises the delivered signal's exception at its next step."""
    from k8stopo import runstate
    runstate.forget_delivered()
    try:
        runstate.deliver(KeyboardInterrupt())
    except KeyboardInterrupt:
        pass  # swallowed, as in an at-fork hook
    with pytest.raises(KeyboardInterrupt):
        runstate.raise_delivered()
    runstate.raise_delivered()  # once only
    try:
        runstate.deliver(SystemExit(143))
    except SystemExit:
        pass
    runstate.forget_delivered()  # a new command starts clean
    runstate.raise_delivered()
