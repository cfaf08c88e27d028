"""What this kernel and machine can do, and so which CNI variants run here.

Kernel features are tested for real, not guessed from config files: each one
is created and deleted again inside one scratch network namespace, so the
answer is exactly what a cluster build would meet, and nothing touches the
root namespace. The scratch namespace carries a fresh run prefix and is listed
in a RunState manifest while it exists, so ``k8stopo clean`` removes it if the
doctor dies half-way. Kernel modules for OVS and IPVS are only asked about
(``modprobe -n``), never loaded.

Encrypted overlays (IPsec/ESP, WireGuard) are not built; the report names each
real project's encrypted mode and whether this kernel has ESP (an xfrm state
with proto esp) and the AES-GCM AEAD they use, or WireGuard.

Creating a device may make the kernel autoload its module, which is the point;
note that loading ``ipip``/``ip_gre`` also creates their fallback devices
(tunl0, gre0, ...) in every namespace, the root one included, which the doctor
cannot prevent or delete.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, ParamSpec

from . import native, proc
from .proc import CommandError
from .runstate import RunState

P = ParamSpec("P")  # a probe's parameters, passed through _guarded

FEATURES = ("netns", "veth", "bridge", "vxlan", "macvlan", "tun", "ipip", "gre", "netem",
            "htb", "tbf", "ovs", "ipvs", "wireguard", "iptables-nat", "conntrack", "tc-bpf",
            "policy-routing", "rpfilter", "ipip-datapath", "esp", "esp-gcm", "bridge-nf")
#: The encrypted overlays of the real projects: what each puts on the wire and the probes it
#: needs. None is built; the doctor says which could run here and what is missing.
ENCRYPTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "flannel-ipsec": ("flannel's ipsec backend: strongSwan IKEv2, ESP tunnels (AES-GCM)",
                      ("esp", "esp-gcm")),
    "flannel-wireguard": ("flannel's wireguard backend: flannel-wg, UDP 51820", ("wireguard",)),
    "calico-wireguard": ("Felix's WireGuard: wireguard.cali, UDP 51820", ("wireguard",)),
    "calico-ipsec": ("Calico Enterprise's IPsec (not in open-source Calico): ESP, AES-GCM",
                     ("esp", "esp-gcm")),
    "weave-fastdp-encrypted": ("weave encryption with fastdp: ESP rfc4106(gcm(aes))",
                               ("esp", "esp-gcm")),
    "weave-sleeve-encrypted": ("weave encryption with sleeve: NaCl secretbox in user space",
                               ()),
    "docker-overlay-encrypted": ("libnetwork --opt encrypted: ESP rfc4106(gcm(aes))",
                                 ("esp", "esp-gcm")),
}
# tool -> arguments that make it print its version (None: it has no such option)
TOOLS: dict[str, tuple[str, ...] | None] = {
    "iperf3": ("--version",), "ping": ("-V",), "tcpdump": ("--version",),
    "bird": ("--version",), "birdc": None, "mnexec": None, "brctl": ("-V",),
    "dnsmasq": ("--version",), "socat": ("-V",), "sockperf": ("--version",),
    "nsenter": ("--version",), "dnsperf": None, "curl": ("--version",),
    "ipset": ("--version",), "clang": ("--version",), "ethtool": ("--version",),
    "gcc": ("--version",), "nft": ("--version",),
}
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "ptp", "loopback", "macvlan", "portmap")
TEST_NET = ("192.0.2.1", "192.0.2.2", "192.0.2.0/24")  # RFC 5737: never routed anywhere


@dataclass(frozen=True)
class Probe:
    """One capability: whether it works here and, briefly, why (version, path, error)."""

    name: str
    ok: bool
    detail: str


def _why(exc: CommandError) -> str:
    """The last line of a failed command's output: the kernel's or the tool's error."""
    lines = (exc.stderr or exc.stdout).strip().splitlines()
    return lines[-1].strip() if lines else f"exit status {exc.returncode}"


@dataclass(frozen=True)
class _Steps:
    """Commands that create a feature's object, and those that remove it again."""

    label: str
    create: tuple[tuple[str, ...], ...]
    delete: tuple[tuple[str, ...], ...]


def _feature_steps(p: str) -> dict[str, _Steps]:
    """What each namespaced feature probe does; object names carry the run prefix ``p``."""
    local, remote, net = TEST_NET

    def link_del(name: str) -> tuple[str, ...]:
        return ("ip", "link", "del", name)

    def veth(a: str, b: str) -> tuple[str, ...]:
        return ("ip", "link", "add", a, "type", "veth", "peer", "name", b)

    def tunnel(name: str, kind: str) -> tuple[str, ...]:
        return ("ip", "link", "add", name, "type", kind, "local", local, "remote", remote)

    def qdisc(*spec: str) -> tuple[str, ...]:
        return ("tc", "qdisc", "add", "dev", "lo", "root", *spec)

    root_qdisc_del = (("tc", "qdisc", "del", "dev", "lo", "root"),)

    def esp_state(spi: str, *algorithms: str) -> tuple[str, ...]:
        return ("ip", "xfrm", "state", "add", "src", local, "dst", remote, "proto", "esp",
                "spi", spi, "mode", "transport", *algorithms)

    def esp_del(spi: str) -> tuple[tuple[str, ...], ...]:
        return (("ip", "xfrm", "state", "del", "src", local, "dst", remote, "proto", "esp",
                 "spi", spi),)
    key16, key20, key32 = ("0x" + "11" * n for n in (16, 20, 32))
    masq = ("-t", "nat", "POSTROUTING", "-s", net, "-j", "MASQUERADE")
    ct = ("INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
    rule = ("from", net, "table", "100", "priority", "100")
    rpf = ("-t", "raw", "PREROUTING", "-m", "rpfilter", "--validmark", "--invert", "-j", "DROP")
    return {
        "veth": _Steps("ip link add type veth", (veth(f"{p}v0", f"{p}v1"),),
                       (link_del(f"{p}v0"),)),
        "bridge": _Steps("ip link add type bridge",
                         (("ip", "link", "add", f"{p}br", "type", "bridge"),),
                         (link_del(f"{p}br"),)),
        "vxlan": _Steps("ip link add type vxlan",
                        (("ip", "link", "add", f"{p}vx", "type", "vxlan", "id", "1",
                          "dstport", "8472", "local", local),),
                        (link_del(f"{p}vx"),)),
        "macvlan": _Steps("ip link add type macvlan",
                          (veth(f"{p}m0", f"{p}m1"),
                           ("ip", "link", "add", f"{p}mv", "link", f"{p}m0", "type", "macvlan",
                            "mode", "bridge")),
                          (link_del(f"{p}mv"), link_del(f"{p}m0"))),
        "tun": _Steps("ip tuntap add mode tun",
                      (("ip", "tuntap", "add", "dev", f"{p}tun", "mode", "tun"),),
                      (("ip", "tuntap", "del", "dev", f"{p}tun", "mode", "tun"),)),
        "ipip": _Steps("ip link add type ipip", (tunnel(f"{p}ipip", "ipip"),),
                       (link_del(f"{p}ipip"),)),
        "gre": _Steps("ip link add type gre", (tunnel(f"{p}gre", "gre"),),
                      (link_del(f"{p}gre"),)),
        "wireguard": _Steps("ip link add type wireguard",
                            (("ip", "link", "add", f"{p}wg", "type", "wireguard"),),
                            (link_del(f"{p}wg"),)),
        "netem": _Steps("tc qdisc add netem", (qdisc("netem", "delay", "1ms"),),
                        root_qdisc_del),
        "htb": _Steps("tc qdisc add htb", (qdisc("handle", "1:", "htb", "default", "10"),),
                      root_qdisc_del),
        "tbf": _Steps("tc qdisc add tbf",
                      (qdisc("tbf", "rate", "1mbit", "burst", "32kbit", "latency", "50ms"),),
                      root_qdisc_del),
        "tc-bpf": _Steps("tc qdisc add clsact",
                         (("tc", "qdisc", "add", "dev", "lo", "clsact"),),
                         (("tc", "qdisc", "del", "dev", "lo", "clsact"),)),
        "iptables-nat": _Steps("iptables nat MASQUERADE",
                               (("iptables", "-t", "nat", "-L", "-n"),
                                ("iptables", *masq[:2], "-A", *masq[2:])),
                               (("iptables", *masq[:2], "-D", *masq[2:]),)),
        "conntrack": _Steps("iptables -m conntrack",
                            (("iptables", "-A", *ct),), (("iptables", "-D", *ct),)),
        "policy-routing": _Steps("ip rule add", (("ip", "rule", "add", *rule),),
                                 (("ip", "rule", "del", *rule),)),
        "rpfilter": _Steps("iptables -m rpfilter (Felix's anti-spoofing)",
                           (("iptables", *rpf[:2], "-A", *rpf[2:]),),
                           (("iptables", *rpf[:2], "-D", *rpf[2:]),)),
        # ESP itself (esp4, CONFIG_INET_ESP), with the simplest cipher; then the AEAD cipher
        # that Docker's and weave's encryption program (CONFIG_CRYPTO_GCM).
        "esp": _Steps("ip xfrm state add proto esp (cbc(aes), hmac(sha256))",
                      (esp_state("0x100", "enc", "cbc(aes)", key16, "auth", "hmac(sha256)",
                                 key32),), esp_del("0x100")),
        "esp-gcm": _Steps("ip xfrm state add proto esp aead rfc4106(gcm(aes))",
                          (esp_state("0x101", "aead", "rfc4106(gcm(aes))", key20, "128"),),
                          esp_del("0x101")),
    }


def _run_steps(ns: str, name: str, steps: _Steps) -> Probe:
    """Create the object, then delete it whatever happened (deleting the absent is harmless)."""
    try:
        for argv in steps.create:
            proc.run(argv, ns, timeout=30)
        return Probe(name, True, f"{steps.label}: ok")
    except CommandError as exc:
        return Probe(name, False, f"{steps.label}: {_why(exc)}")
    finally:
        for argv in steps.delete:
            proc.run(argv, ns, check=False, timeout=30)


def _module(name: str, module: str) -> Probe:
    """A kernel module that is loaded or loadable, asked without loading it."""
    if Path(f"/sys/module/{module}").is_dir():
        return Probe(name, True, f"module {module} loaded")
    modprobe = proc.which("modprobe")
    if modprobe is None:
        return Probe(name, False, f"module {module} not loaded and no modprobe to check")
    try:
        proc.run([modprobe, "-n", module], timeout=30)
    except CommandError as exc:
        return Probe(name, False, f"module {module}: {_why(exc)}")
    return Probe(name, True, f"module {module} loadable (not loaded)")


def _with_note(probe: Probe, note: str) -> Probe:
    return Probe(probe.name, probe.ok, f"{probe.detail}; {note}")


def _tool_note(tool: str, missing: str) -> str:
    path = proc.which(tool)
    return f"{tool} at {path}" if path else missing


def _iptables_version() -> str:
    iptables = proc.which("iptables")
    if iptables is None:
        return "iptables not installed"
    return proc.run([iptables, "-V"], check=False, timeout=10).stdout.strip() or iptables


def _probe_features(wanted: frozenset[str] | None = None) -> dict[str, Probe]:
    """Kernel feature probes (all, or those ``wanted``), inside one scratch netns that is
    always removed."""
    state = RunState("doctor")
    ns = f"{state.prefix}doctor"
    probes: dict[str, Probe] = {}
    try:
        state.track_netns(ns)  # before creating it: a crash in between still gets it cleaned
        try:
            proc.run(["ip", "netns", "add", ns], timeout=30)
            probes["netns"] = Probe("netns", True, f"ip netns add: ok (scratch {ns})")
        except CommandError as exc:
            probes["netns"] = Probe("netns", False, f"ip netns add: {_why(exc)}")
        for name, steps in _feature_steps(state.prefix).items():
            if wanted is not None and name not in wanted:
                continue
            if not probes["netns"].ok:
                probes[name] = Probe(name, False, "no scratch network namespace to test in")
                continue
            probes[name] = _guarded(name, _run_steps, ns, name, steps)
        for name, module in (("ovs", "openvswitch"), ("ipvs", "ip_vs")):
            if wanted is None or name in wanted:
                probes[name] = _guarded(name, _module, name, module)
    finally:
        state.remove_all()  # a netns it cannot delete stays on record for `k8stopo clean`
    notes = {"ovs": _tool_note("ovs-vsctl", "OVS userspace not installed") + "; weave-fastdp "
             "runs per-peer kernel VXLAN ports on the weave bridge in place of weave's OVS "
             "datapath (same wire: UDP 6784, weave's VNIs)",
             "tc-bpf": _tool_note("clang", "no clang: BPF programs cannot be built here"),
             "iptables-nat": _iptables_version(),
             "conntrack": _tool_note("conntrack", "conntrack tool not installed")}
    for name, note in notes.items():
        if name in probes:
            probes[name] = _with_note(probes[name], note)
    return {name: probes[name] for name in FEATURES if name in probes}


def _guarded(name: str, probe: Callable[P, Probe], *args: P.args, **kwargs: P.kwargs) -> Probe:
    """Run one probe; an unexpected error fails that probe only."""
    try:
        return probe(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one broken probe must not hide the others
        return Probe(name, False, f"probe error: {exc}")


def _first_version_line(text: str) -> str:
    """The first output line with a digit in it (where tools put their version), shortened."""
    line = next((l.strip() for l in text.splitlines() if re.search(r"\d", l)), "")
    return line if len(line) <= 60 else line[:57] + "..."


def _probe_tool(tool: str, version_args: tuple[str, ...] | None) -> Probe:
    path = proc.which(tool)
    if path is None:
        return Probe(tool, False, "not installed (not on PATH, /usr/sbin, /sbin)")
    if version_args is None:
        return Probe(tool, True, path)
    out = proc.run([path, *version_args], check=False, timeout=10)
    version = _first_version_line(out.stdout + "\n" + out.stderr)
    if tool == "bird" and not re.search(r"\bversion 2\.", version):
        return Probe(tool, False, f"{path}: BIRD 2 needed, found {version or 'unknown version'}")
    return Probe(tool, True, f"{path} ({version})" if version else path)


def _probe_cni_plugin(plugin: str) -> Probe:
    """A CNI plugin binary that answers CNI_COMMAND=VERSION, as kubelet would ask it."""
    name = f"cni:{plugin}"
    path = CNI_BIN_DIR / plugin
    if not os.access(path, os.X_OK):
        return Probe(name, False, f"missing {path} (Debian package containernetworking-plugins)")
    try:
        out = proc.output([str(path)], input="{}", env={"CNI_COMMAND": "VERSION"}, timeout=10)
        versions = sorted(json.loads(out)["supportedVersions"],
                          key=lambda v: tuple(int(x) for x in v.split(".")))
        span = f"{versions[0]}..{versions[-1]}"
    except (CommandError, ValueError, KeyError, IndexError) as exc:
        return Probe(name, False, f"{path} does not answer VERSION: {exc!r}")
    return Probe(name, True, f"{path} (CNI spec {span})")


def _probe_native(name: str) -> Probe:
    """One of our C forwarders (k8stopo/native), built by ``make install``."""
    path = native.binary(name)
    if not os.access(path, os.X_OK):
        return Probe(f"native:{name}", False, f"{path} not built: run `make install` (needs gcc)")
    return Probe(f"native:{name}", True, str(path))


def probe_all() -> dict[str, Probe]:
    """Every feature, tool and CNI plugin probe, keyed by probe name; leaves nothing behind."""
    return probe()


def _bridge_nf() -> Probe:
    """br_netfilter: flanneld and weave refuse to start without it, since kube-proxy's rules
    must see traffic bridged between pods of one node. Read, never loaded: its sysctls
    exist only once the module is in (k8stopo's own underlay switch turns it off inside
    its namespace)."""
    knob = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not knob.exists():
        return Probe("bridge-nf", False, "br_netfilter not loaded (modprobe br_netfilter)")
    return Probe("bridge-nf", True, f"br_netfilter loaded, bridge-nf-call-iptables="
                 f"{knob.read_text().strip()} here (each namespace has its own)")


def probe(wanted: Iterable[str] | None = None) -> dict[str, Probe]:
    """The probes named in ``wanted`` (all when None). ``up`` and ``bench`` ask only for
    what their variants need: creating a device can autoload a module, and some modules
    (ipip, ip_gre) then leave fallback devices in every namespace, the root one included."""
    want = None if wanted is None else frozenset(wanted)
    if want is not None and "ipip-datapath" in want:
        want |= {"ipip", "tc-bpf", "clang"}
    probes = _probe_features(want)
    for tool, version_args in TOOLS.items():
        if want is None or tool in want:
            probes[tool] = _guarded(tool, _probe_tool, tool, version_args)
    for plugin in CNI_PLUGINS:
        if want is None or f"cni:{plugin}" in want:
            probes[f"cni:{plugin}"] = _guarded(f"cni:{plugin}", _probe_cni_plugin, plugin)
    if want is None or "ipip-datapath" in want:
        probes["ipip-datapath"] = _ipip_datapath(probes)
    if want is None or "bridge-nf" in want:
        probes["bridge-nf"] = _guarded("bridge-nf", _bridge_nf)
    for name in native.PROGRAMS:
        if want is None or f"native:{name}" in want:
            probes[f"native:{name}"] = _guarded(f"native:{name}", _probe_native, name)
    return probes


def _ipip_datapath(probes: dict[str, Probe]) -> Probe:
    """Which IP-in-IP calico-ipip gets: the kernel's ipip tunl0, or, without the module,
    the tc eBPF stand-in (clsact + clang-built programs that push/pop the outer header)."""
    name = "ipip-datapath"
    if probes["ipip"].ok:
        return Probe(name, True, "calico-ipip uses the kernel's ipip tunl0")
    if probes["tc-bpf"].ok and probes["clang"].ok:
        return Probe(name, True, "no ipip module: calico-ipip uses a tc eBPF stand-in for tunl0")
    return Probe(name, False, "neither the ipip module nor tc eBPF with clang")


def missing(requires: Iterable[str], probes: dict[str, Probe]) -> list[str]:
    """The requirements that failed (or were never probed: an unknown name is missing)."""
    return [r for r in requires if not (r in probes and probes[r].ok)]


def _table(title: str, probes: list[Probe]) -> list[str]:
    width = max((len(p.name) for p in probes), default=0)
    return [title] + [f"  {'yes' if p.ok else 'NO ':3}  {p.name:<{width}}  {p.detail}"
                      for p in probes]


def report(probes: dict[str, Probe], variants: dict[str, tuple[str, ...]]) -> str:
    """Features, then tools, then whether each variant runs here.

    ``variants`` maps a variant to the probe names it needs; a name that was
    never probed counts as missing, so a variant is never said to run untested.
    """
    features = [p for p in probes.values() if p.name in FEATURES]
    tools = [p for p in probes.values() if p.name not in FEATURES]
    lines = [f"kernel {os.uname().release}", ""]
    lines += _table("Kernel features", features) + [""]
    lines += _table("Tools", tools) + [""]
    lines.append("Variants")
    width = max((len(v) for v in variants), default=0)
    for variant, needs in variants.items():
        lacking = missing(needs, probes)
        verdict = f"cannot run: missing {', '.join(lacking)}" if lacking else "runs"
        lines.append(f"  {variant:<{width}}  {verdict}")
    lines += ["", "Encrypted overlays (not built in this version; reported, never faked)"]
    width = max(len(name) for name in ENCRYPTED)
    for name, (what, needs) in ENCRYPTED.items():
        lacking = missing(needs, probes)
        verdict = (f"kernel lacks {', '.join(lacking)}" if lacking
                   else "this kernel has what it needs")
        lines.append(f"  {name:<{width}}  {verdict}: {what}")
    return "\n".join(lines) + "\n"
