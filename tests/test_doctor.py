"""k8stopo doctor: real probes on this machine, nothing left behind, and the report."""
from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import pytest

from k8stopo import doctor, native, proc, runstate
from k8stopo.doctor import Probe, probe_all, report

NAMES = {
    "netns", "veth", "bridge", "vxlan", "macvlan", "tun", "ipip", "gre", "netem", "htb", "tbf",
    "ovs", "ipvs", "wireguard", "iptables-nat", "conntrack", "tc-bpf", "policy-routing",
    "rpfilter", "ipip-datapath", "ipset", "clang", "esp", "esp-gcm", "bridge-nf",
    "iperf3", "ping", "tcpdump", "bird", "birdc", "mnexec", "brctl", "dnsmasq", "socat",
    "sockperf", "nsenter", "dnsperf", "curl", "ethtool", "gcc", "nft",
    "cni:bridge", "cni:host-local", "cni:ptp", "cni:loopback", "cni:macvlan", "cni:portmap",
    "native:flannel-udp-proxy", "native:weave-sleeve",
}


def _netns() -> set[str]:
    return {line.split()[0] for line in proc.output(["ip", "netns", "list"]).splitlines()}


class _Recorded(runstate.RunState):
    """RunState that remembers the prefixes the doctor drew."""

    prefixes: list[str] = []

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        _Recorded.prefixes.append(self.prefix)


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Doctor runs against a private state root; yields a check that it left nothing."""
    state_root = tmp_path / "state"
    monkeypatch.setattr(runstate, "STATE_ROOT", state_root)
    monkeypatch.setattr(doctor, "RunState", _Recorded)
    _Recorded.prefixes = []
    before_ns, before_links = _netns(), set(runstate.root_links())

    def nothing_left() -> str:
        assert len(_Recorded.prefixes) == 1
        prefix = _Recorded.prefixes[0]
        after_ns, after_links = _netns(), set(runstate.root_links())
        # Other runs may come and go meanwhile, so of what is new, nothing may be
        # the doctor's; the doctor's own never touch the root namespace at all.
        assert not [n for n in after_ns - before_ns if n.startswith(prefix)]
        assert not [link for link in after_links - before_links if link.startswith(prefix)]
        assert not [n for n in after_ns if n.startswith(prefix)]
        assert list(state_root.iterdir()) == []  # the run's state dir is gone
        return prefix

    return nothing_left


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Probe]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runstate, "STATE_ROOT", tmp_path_factory.mktemp("state"))
        return probe_all()


def _kernel_config() -> str | None:
    """The running kernel's build config, if it ships one."""
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        if path.exists():
            data = path.read_bytes()
            return (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
    return None


def _kernel_has(option: str, module: str) -> bool:
    """Independent oracle: kernel config if present, else the module being loaded/loadable."""
    config = _kernel_config()
    if config is not None:
        return re.search(rf"^{option}=[ym]$", config, re.M) is not None
    if Path(f"/sys/module/{module}").is_dir():
        return True
    return proc.run(["modprobe", "-n", module], check=False).returncode == 0


@pytest.mark.requires_root
def test_all_probe_names(probes: dict[str, Probe]) -> None:
    assert set(probes) == NAMES
    assert all(p.name == name and p.detail for name, p in probes.items())


@pytest.mark.requires_root
def test_basic_features_work_here(probes: dict[str, Probe]) -> None:
    for name in ("netns", "veth", "bridge", "vxlan"):
        assert probes[name].ok, probes[name]


@pytest.mark.parametrize("name, option, module, error", [
    ("ipip", "CONFIG_NET_IPIP", "ipip", "Unknown device type"),
    ("netem", "CONFIG_NET_SCH_NETEM", "sch_netem", "unknown"),
    ("esp", "CONFIG_INET_ESP", "esp4", "Requested type not found"),
    ("wireguard", "CONFIG_WIREGUARD", "wireguard", "Unknown device type"),
])
@pytest.mark.requires_root
def test_probe_matches_kernel_config(probes: dict[str, Probe], name: str, option: str,
                                     module: str, error: str) -> None:
    # On the reference machine (6.18 without modules) both are missing.
    assert probes[name].ok == _kernel_has(option, module), probes[name]
    if not probes[name].ok:
        assert error in probes[name].detail  # the kernel's own error line


@pytest.mark.requires_root
def test_failed_probe_says_what_is_missing(probes: dict[str, Probe], watched, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe that fails here, and (so that some always do) the CNI plugins and our
    forwarders probed where none is installed: each says what it lacks, where."""
    monkeypatch.setattr(doctor, "CNI_BIN_DIR", tmp_path)
    monkeypatch.setattr(native, "BUILD", tmp_path)
    absent = doctor.probe([*(f"cni:{p}" for p in doctor.CNI_PLUGINS),
                           *(f"native:{n}" for n in native.PROGRAMS)])
    watched()
    assert [p for p in absent.values() if p.ok] == [p for p in absent.values()
                                                    if p.name == "netns"]
    for p in absent.values():
        if p.name != "netns":
            assert str(tmp_path / p.name.split(":")[1]) in p.detail, p
    for p in [*probes.values(), *absent.values()]:
        if not p.ok:
            assert not re.search(r": ok\b", p.detail) and len(p.detail) > 15, p


@pytest.mark.requires_root
def test_probe_all_leaves_nothing_behind(watched) -> None:
    result = probe_all()
    prefix = watched()
    assert f"{prefix}doctor" in result["netns"].detail  # the scratch netns really was used


@pytest.mark.requires_root
def test_a_raising_probe_leaves_nothing_behind(watched, monkeypatch: pytest.MonkeyPatch) -> None:
    real = doctor._run_steps

    def interrupted(ns: str, name: str, steps: doctor._Steps) -> Probe:
        if name == "macvlan":  # after veth/bridge/vxlan were made for real
            raise KeyboardInterrupt
        return real(ns, name, steps)

    monkeypatch.setattr(doctor, "_run_steps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        probe_all()
    watched()


@pytest.mark.requires_root
def test_a_broken_probe_fails_alone(watched, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str, module: str) -> Probe:
        raise OSError(f"cannot read /sys/module/{module}")

    monkeypatch.setattr(doctor, "_module", broken)
    result = probe_all()
    watched()
    assert not result["ovs"].ok and "cannot read /sys/module/openvswitch" in result["ovs"].detail
    assert result["veth"].ok


@pytest.mark.requires_root
def test_report_marks_variants(probes: dict[str, Probe]) -> None:
    fake = {
        "vxlan": Probe("vxlan", True, "ok"),
        "ipip": Probe("ipip", False, "ip link add type ipip: Error: Unknown device type."),
        "bird": Probe("bird", True, "/usr/sbin/bird (BIRD version 2.0.12)"),
        "cni:bridge": Probe("cni:bridge", False, "missing /usr/lib/cni/bridge"),
    }
    text = report(fake, {"flannel-vxlan": ("vxlan",),
                         "calico-ipip": ("ipip", "bird"),
                         "weave-fastdp": ("vxlan", "cni:bridge", "never-probed")})
    lines = text.splitlines()
    assert re.search(r"^\s+flannel-vxlan\s+runs$", text, re.M)
    assert re.search(r"^\s+calico-ipip\s+cannot run: missing ipip$", text, re.M)
    assert re.search(r"^\s+weave-fastdp\s+cannot run: missing cni:bridge, never-probed$",
                     text, re.M)
    # features, then tools, then variants
    order = [next(i for i, line in enumerate(lines) if needle in line)
             for needle in ("Unknown device type", "BIRD version", "Variants")]
    assert order == sorted(order)
    full = report(probes, {"flannel-vxlan": ("netns", "veth", "bridge", "vxlan", "cni:bridge")})
    assert all(name in full for name in NAMES)


@pytest.mark.requires_root
def test_report_names_the_encrypted_overlays_and_what_they_lack(probes: dict[str, Probe]) -> None:
    text = report(probes, {})
    section = text.split("Encrypted overlays")[1]
    for name in doctor.ENCRYPTED:
        assert re.search(rf"^\s+{name}\s", section, re.M), name
    line = next(l for l in section.splitlines() if "docker-overlay-encrypted" in l)
    if probes["esp"].ok and probes["esp-gcm"].ok:
        assert "has what it needs" in line
    else:
        assert "kernel lacks" in line and "esp" in line
    assert "weave-sleeve-encrypted    this kernel has what it needs" in section  # user space
