"""Property-based: every invalid command line exits 2 with one line and creates nothing.

Runs the command line in-process (argument parsing and every check happen before
anything is built), so hundreds of examples take seconds.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from k8stopo import cli, runstate
from k8stopo.cni import VARIANTS
from k8stopo.spec import SCENARIOS

from conftest import run_dirs

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789_.", min_size=1, max_size=12)
BAD_INT = st.one_of(st.integers(max_value=0), st.integers(min_value=100_000),
                    st.text(alphabet="xyz!.", min_size=1, max_size=4))


RUN_NAME = re.compile(rf"({runstate.PREFIX}[0-9a-f]{{4}})(?![0-9a-f])")  # a run's prefix


def k8stopo_devices() -> set[str]:
    """k8stopo's named network namespaces and root-namespace links (ours would be new
    ones); read from the file system, as hundreds of examples run ``ip`` too slowly.
    Those of another live run on the machine (another user's cluster, tests run at once)
    are not ours, nor are names that are no run's (``k8t-rules-…`` of a rules test)."""
    names = [*(os.listdir("/run/netns") if os.path.isdir("/run/netns") else []),
             *os.listdir("/sys/class/net")]
    others = {run.name for run in runstate.runs()} - run_dirs()
    runs = (RUN_NAME.match(n) for n in names)
    return {m.string for m in runs if m and m.group(1) not in others}



def run(argv: list[str]) -> tuple[int, str]:
    """``k8stopo argv`` in-process, as root would run it: every input check comes before
    anything needs root, so the root check is passed over and this runs as any user (an
    input wrongly accepted goes on to build and fails the test, as root or not)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            mock.patch.object(cli, "_require_root", lambda: None):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = int(exc.code or 0)
    return code, err.getvalue()


def assert_refused(argv: list[str], *outputs: Path) -> None:
    """``argv`` exits 2 with one ``k8stopo: error:`` line, and no run, link, netns or
    output file appeared."""
    before_dirs, before_devices = run_dirs(), k8stopo_devices()
    code, err = run(argv)
    assert code == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1, (argv, err)
    assert err.startswith("k8stopo: error: "), (argv, err)
    assert run_dirs() <= before_dirs  # none appeared (others may end meanwhile)
    assert not k8stopo_devices() - before_devices
    assert not [p for p in outputs if p.exists()], (argv, err)


BAD_COMMANDS = st.one_of(
    NAME.filter(lambda n: n not in VARIANTS and n != "all").map(lambda n: ["up", "--cni", n]),
    BAD_INT.map(lambda v: ["up", "--cni", "host", "--nodes", str(v)]),
    BAD_INT.map(lambda v: ["up", "--cni", "flannel-vxlan", "--pods-per-node",
                           str(v) if not str(v).lstrip("-").isdigit() else str(abs(int(v)) + 300)]),
    st.integers(max_value=575).map(lambda v: ["up", "--cni", "calico-bgp", "--mtu", str(v)]),
    NAME.filter(lambda n: n not in SCENARIOS).map(
        lambda n: ["bench", "--cni", "host", "--scenarios", n, "--out", "x.csv"]),
    BAD_INT.map(lambda v: ["bench", "--cni", "host", "--duration", str(v), "--out", "x.csv"]),
    BAD_INT.map(lambda v: ["bench", "--cni", "host", "--repeat", str(v), "--out", "x.csv"]),
    st.text(alphabet="abcXYZ%-", min_size=1, max_size=5).map(
        lambda v: ["bench", "--cni", "host", "--udp-bandwidth", v, "--out", "x.csv"]),
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(argv=["scale", "--nodes", "²", "--out", "x.csv"])  # isdigit() but not int(): ValueError
@example(argv=["probe", "--cni", "host", "--manifests", "m.yaml", "--ports", "²"])
@given(argv=BAD_COMMANDS)
def test_invalid_command_lines_exit_2_with_one_line_and_create_nothing(argv, tmp_path,
                                                                        monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_refused(argv, tmp_path / "x.csv")
