"""Netlink in-process: the ``ip``/``bridge``/``sysctl`` steps of a build over one socket per
namespace (pyroute2), not one process each.

A build makes thousands of small changes (a route per peer per node, a rename per pod);
as processes each costs a fork, an exec and nsenter, as netlink messages a few
microseconds. A :class:`Namespace` opens one rtnetlink socket inside a network namespace
(the socket stays bound to the namespace it was created in, so a short-lived thread
enters it with setns(2), creates the socket and comes back) and takes the very words a
user would type (``route replace 10.244.1.0/24 via 172.20.0.2 dev n1-eth0``): each is
logged at debug level as that ``ip`` command, then sent as its netlink request. Words
this translation does not know, and batches of :data:`TOOL_FROM` commands or more (a
route per peer: there one ``ip -batch`` process is cheaper than pyroute2's Python per
request), go to the real ``ip``/``bridge`` in one batch, logged the same way, so nothing
is ever silently dropped. Sysctls are written to /proc/sys by a thread inside the
namespace.

Sockets are registered by namespace path, each with the run that opened it, and closed
by :func:`close_run` at teardown: an open socket holds its namespace (and the links in
it, a VXLAN device's UDP port too) alive.
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import threading
from typing import Any, Callable, Iterator, Sequence, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import proc

log = logging.getLogger("k8stopo.netlink")

CLONE_NEWNET = 0x40000000
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTPROT_BOOT = 3  # what `ip route add` gives a route without `proto`
#: batches of more commands go to one `ip`/`bridge -batch` process: pyroute2 spends about
#: 0.3-0.7 ms of Python per request here, the tool about 4 ms to start and 15 µs a command
#: (measured on a 2-core box: 400 neighbour entries took 325 ms as requests, 21 ms by `ip`)
TOOL_FROM = 12
SCOPES = {"global": 0, "link": 253, "host": 254}
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


class Unsupported(ValueError):
    """Words this translation does not know (they go to the real tool instead)."""


def netns_path(netns: int | str) -> str:
    """The namespace file of a pid living in it, or of a named netns."""
    return f"/proc/{netns}/ns/net" if isinstance(netns, int) else f"/run/netns/{netns}"


def inside(path: str, work: Callable[[], T]) -> T:
    """Run ``work`` in a thread that entered the network namespace at ``path`` (a thread's
    namespace is its own: the rest of the process stays where it is)."""
    result: dict[str, Any] = {}

    def run() -> None:
        target = os.open(path, os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {path}")
            result["value"] = work()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc
        finally:
            os.close(target)  # the thread ends here: its namespace goes with it

    thread = threading.Thread(target=run, name=f"netns {path}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class _Words:
    """A command's words, read left to right."""

    def __init__(self, words: Sequence[object]) -> None:
        self.words = [str(w) for w in words]
        self.i = 0

    def __iter__(self) -> Iterator[str]:
        while self.i < len(self.words):
            self.i += 1
            yield self.words[self.i - 1]

    def next(self) -> str:
        if self.i >= len(self.words):
            raise Unsupported("missing argument")
        self.i += 1
        return self.words[self.i - 1]


def _link_fields(msg: Any) -> dict[str, Any]:
    info = msg.get_attr("IFLA_LINKINFO")
    return {"ifname": msg.get_attr("IFLA_IFNAME"), "ifindex": msg["index"],
            "mtu": msg.get_attr("IFLA_MTU"), "address": msg.get_attr("IFLA_ADDRESS"),
            "operstate": msg.get_attr("IFLA_OPERSTATE"),
            "kind": info.get_attr("IFLA_INFO_KIND") if info is not None else None}


class Namespace:
    """One rtnetlink socket in one network namespace."""

    def __init__(self, netns: int | str, label: str, run: str) -> None:
        self.netns = netns
        self.run = run  # the run prefix it belongs to (see close_run)
        self.path = netns_path(netns)
        self.label = label  # for the log: "n1", "pid 1234", "netns k8t1a2b-ov-n1"
        self.inode = os.stat(self.path).st_ino
        self.ipr: IPRoute = inside(self.path, IPRoute)
        self._lock = threading.RLock()  # requests of several threads, one at a time
        self._indexes: dict[str, int] = {}

    def close(self) -> None:
        self.ipr.close()

    # -- reading ----------------------------------------------------------------------
    def links(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every link (of ``kind``): its ``ifname``, ``ifindex``, ``mtu``, ``address`` and
        ``operstate`` as ``ip -j link`` names them, and its ``kind``."""
        with self._lock:
            found = self.ipr.get_links()
        return [entry for entry in map(_link_fields, found) if kind is None or entry["kind"] == kind]

    def link(self, dev: str) -> dict[str, Any]:
        """One link by name (``ip link show dev``)."""
        try:
            with self._lock:
                return _link_fields(self.ipr.link("get", ifname=dev)[0])
        except NetlinkError as exc:
            raise proc.CommandError(["ip", "link", "show", "dev", dev], 1, "",
                                    f'Device "{dev}" does not exist.') from exc

    def route_dsts(self, proto: int) -> set[str]:
        """The IPv4 destinations (``a.b.c.d/len``) of the main table's routes of ``proto``."""
        with self._lock:
            routes = self.ipr.get_routes(family=2, table=254, proto=proto)
        return {f"{r.get_attr('RTA_DST')}/{r['dst_len']}" for r in routes
                if r.get_attr("RTA_DST") is not None}

    # -- writing ----------------------------------------------------------------------
    def sysctl(self, key: str, value: object) -> None:
        """``sysctl -w key=value`` in this namespace."""
        log.debug("%s: sysctl -w %s=%s", self.label, key, value)
        path = "/proc/sys/" + key.replace(".", "/")

        def write() -> None:
            with open(path, "w") as f:
                f.write(str(value))
        try:
            inside(self.path, write)
        except OSError as exc:
            raise proc.CommandError(["sysctl", "-w", f"{key}={value}"], 1, "",
                                    f"sysctl: {exc.strerror}: {key}") from exc

    def batch(self, tool: str, commands: Sequence[Sequence[object]], check: bool = True) -> str:
        """Run ``ip``/``bridge`` commands (their words, one list each) as netlink requests.

        With ``check`` the first refused command raises :class:`proc.CommandError`; without,
        every command is tried and the errors are returned one line each, as ``ip -force
        -batch`` reports them ("" if none). A batch holding words this translation does not
        know goes to the real tool, whole."""
        try:
            if len(commands) >= TOOL_FROM:
                raise Unsupported(f"{len(commands)} commands")
            requests = [self._request(tool, _Words(c)) for c in commands]
        except Unsupported as why:
            log.debug("%s: %s -batch (%s):%s", self.label, tool, why,
                      "".join(f"\n  {tool} " + " ".join(str(w) for w in c) for c in commands))
            lines = "".join(" ".join(str(a) for a in c) + "\n" for c in commands)
            result = proc.run([tool, *([] if check else ["-force"]), "-batch", "-"], self.netns,
                              check=check, input=lines)
            return result.stderr.strip() if result.returncode else ""
        errors = []
        with self._lock:
            self._indexes = {}  # names stay put until a link command (rename, delete, move)
            for words, request in zip(commands, requests):
                line = " ".join(str(w) for w in words)
                log.debug("%s: %s %s", self.label, tool, line)
                try:
                    request()
                except NetlinkError as exc:
                    message = (f"Error: {os.strerror(exc.code) if exc.code > 0 else exc}: "
                               f"{tool} {line}")
                    if check:
                        raise proc.CommandError([tool, *map(str, words)], 2, "", message) from exc
                    errors.append(message)
                finally:
                    if words[0] == "link":
                        self._indexes = {}
        return "\n".join(errors)

    def _index(self, dev: str) -> int:
        """A link's index (remembered within a batch until a link command)."""
        with self._lock:
            if dev not in self._indexes:
                found = self.ipr.link_lookup(ifname=dev)
                if not found:
                    raise NetlinkError(errno.ENODEV, f"Cannot find device {dev}")
                self._indexes[dev] = int(found[0])
            return self._indexes[dev]

    def _request(self, tool: str, w: _Words) -> Callable[[], Any]:
        """The netlink request a command's words ask for (not sent yet)."""
        head = (tool, w.next())
        translate = {("ip", "link"): self._ip_link, ("ip", "addr"): self._ip_addr,
                     ("ip", "route"): self._ip_route, ("ip", "neigh"): self._ip_neigh,
                     ("bridge", "fdb"): self._bridge_fdb,
                     ("bridge", "link"): self._bridge_link}.get(head)
        if translate is None:
            raise Unsupported(" ".join(head))
        return translate(w.next(), w)

    def _ip_link(self, verb: str, w: _Words) -> Callable[[], Any]:
        if verb == "add":
            return self._link_add(w)
        if verb == "del":
            dev = w.next()
            return lambda: self.ipr.link("del", index=self._index(dev))
        if verb != "set":
            raise Unsupported(f"link {verb}")
        dev = w.next()
        if dev == "dev":
            dev = w.next()
        attrs: dict[str, Any] = {}
        master: str | None = None
        for word in w:
            if word in ("up", "down"):
                attrs["state"] = word
            elif word == "mtu":
                attrs["mtu"] = int(w.next())
            elif word == "name":
                attrs["ifname"] = w.next()
            elif word == "address":
                attrs["address"] = w.next()
            elif word == "master":
                master = w.next()
            elif word == "arp":
                attrs["arp"] = w.next() == "on"
            elif word == "netns":
                target = w.next()  # a pid living in it, or a named netns
                attrs["net_ns_pid" if target.isdigit() else "net_ns_fd"] = (
                    int(target) if target.isdigit() else target)
            else:
                raise Unsupported(f"link set {word}")

        def request() -> None:
            index = self._index(dev)
            extra = dict(attrs)
            if master is not None:
                extra["master"] = self._index(master)
            if "arp" in extra:  # IFF_NOARP
                off = not extra.pop("arp")
                extra["flags"], extra["change"] = (0x80 if off else 0), 0x80
            state = extra.pop("state", None)
            if extra:
                self.ipr.link("set", index=index, **extra)
            if state is not None:  # after the rest: `ip` sets the flags last too
                self.ipr.link("set", index=index, state=state)
        return request

    def _link_add(self, w: _Words) -> Callable[[], Any]:
        attrs: dict[str, Any] = {"ifname": w.next()}
        dev: str | None = None
        while True:
            word = w.next()
            if word == "mtu":
                attrs["mtu"] = int(w.next())
            elif word == "type":
                attrs["kind"] = w.next()
                break
            else:
                raise Unsupported(f"link add {word}")
        kind = attrs["kind"]
        for word in w:
            if kind == "veth" and word == "peer":
                if w.next() != "name":
                    raise Unsupported("veth peer without name")
                attrs["peer"] = {"ifname": w.next()}
                rest = list(w)
                for key, value in zip(rest[::2], rest[1::2]):
                    if key == "mtu":
                        attrs["peer"]["mtu"] = int(value)
                    elif key == "netns" and value.isdigit():  # made straight into a pid's
                        attrs["peer"]["net_ns_pid"] = int(value)
                    else:
                        raise Unsupported(f"veth peer {' '.join(rest)}")
                if len(rest) % 2:
                    raise Unsupported(f"veth peer {' '.join(rest)}")
            elif kind == "bridge" and word in ("stp_state", "forward_delay"):
                attrs[f"br_{word}"] = int(w.next())
            elif kind == "vxlan" and word in ("id", "dstport", "ttl"):
                attrs[{"id": "vxlan_id", "dstport": "vxlan_port", "ttl": "vxlan_ttl"}[word]] = \
                    int(w.next())
            elif kind == "vxlan" and word == "local":
                attrs["vxlan_local"] = w.next()
            elif kind == "vxlan" and word == "dev":
                dev = w.next()
            elif kind == "vxlan" and word in ("learning", "nolearning"):
                attrs["vxlan_learning"] = int(word == "learning")
            elif kind == "vxlan" and word in ("proxy", "l2miss", "l3miss"):
                attrs[f"vxlan_{word}"] = 1
            elif kind == "vxlan" and word == "noudpcsum":
                attrs["vxlan_udp_csum"] = 0
            elif kind == "vxlan" and word == "df":
                if w.next() != "set":
                    raise Unsupported("vxlan df")
                attrs["vxlan_df"] = 1
            else:
                raise Unsupported(f"link add type {kind} {word}")
        if kind == "vxlan":
            attrs.setdefault("vxlan_learning", 1)  # `ip` leaves learning on unless told

        def request() -> None:
            if dev is not None:
                attrs["vxlan_link"] = self._index(dev)
            self.ipr.link("add", **attrs)
        return request

    def _ip_addr(self, verb: str, w: _Words) -> Callable[[], Any]:
        if verb == "flush" and w.next() == "dev":
            dev = w.next()
            return lambda: self.ipr.flush_addr(index=self._index(dev))
        if verb != "add":
            raise Unsupported(f"addr {verb}")
        address = ipaddress.IPv4Interface(w.next())
        if w.next() != "dev":
            raise Unsupported("addr add without dev")
        dev = w.next()
        return lambda: self.ipr.addr("add", index=self._index(dev), address=str(address.ip),
                                     prefixlen=address.network.prefixlen)

    def _ip_route(self, verb: str, w: _Words) -> Callable[[], Any]:
        if verb not in ("add", "replace"):
            raise Unsupported(f"route {verb}")
        attrs: dict[str, Any] = {"proto": RTPROT_BOOT}
        dst = w.next()
        if dst == "blackhole":
            attrs["type"] = "blackhole"
            dst = w.next()
        attrs["dst"] = "0.0.0.0/0" if dst == "default" else str(ipaddress.IPv4Network(dst))
        dev: str | None = None
        for word in w:
            if word == "via":
                attrs["gateway"] = w.next()
            elif word == "dev":
                dev = w.next()
            elif word == "scope":
                attrs["scope"] = SCOPES[w.next()]
            elif word == "onlink":
                attrs["flags"] = 4  # RTNH_F_ONLINK
            elif word == "mtu":
                attrs["metrics"] = {"attrs": [["RTAX_MTU", int(w.next())]]}
            elif word == "proto":
                attrs["proto"] = int(w.next())
            else:
                raise Unsupported(f"route {word}")
        if "gateway" not in attrs and "type" not in attrs and "scope" not in attrs:
            attrs["scope"] = SCOPES["link"]  # `ip`: a route with no gateway is on-link

        def request() -> None:
            if dev is not None:
                attrs["oif"] = self._index(dev)
            self.ipr.route(verb, **attrs)
        return request

    def _ip_neigh(self, verb: str, w: _Words) -> Callable[[], Any]:
        if verb != "replace":
            raise Unsupported(f"neigh {verb}")
        dst = w.next()
        words = dict(zip(*[iter(list(w))] * 2))
        if set(words) != {"lladdr", "dev", "nud"} or words["nud"] != "permanent":
            raise Unsupported("neigh replace " + " ".join(words))
        return lambda: self.ipr.neigh("replace", dst=dst, lladdr=words["lladdr"],
                                      ifindex=self._index(words["dev"]), state=NUD_PERMANENT)

    def _bridge_fdb(self, verb: str, w: _Words) -> Callable[[], Any]:
        if verb not in ("replace", "append"):
            raise Unsupported(f"fdb {verb}")
        mac = w.next()
        attrs: dict[str, Any] = {"lladdr": mac}
        dev = ""
        for word in w:
            if word == "dev":
                dev = w.next()
            elif word == "dst":
                attrs["dst"] = w.next()
            elif word == "vni":
                attrs["vni"] = int(w.next())
            elif word == "self":
                attrs["flags"] = NTF_SELF
            elif word == "permanent":
                attrs["state"] = NUD_PERMANENT
            else:
                raise Unsupported(f"fdb {word}")
        return lambda: self.ipr.fdb(verb, ifindex=self._index(dev), **attrs)

    def _bridge_link(self, verb: str, w: _Words) -> Callable[[], Any]:
        words = list(w)
        if verb != "set" or len(words) != 4 or words[0] != "dev" or words[2] != "isolated":
            raise Unsupported(f"bridge link {verb} {' '.join(words)}")
        return lambda: self.ipr.brport("set", index=self._index(words[1]),
                                       isolated=int(words[3] == "on"))


_open: dict[str, Namespace] = {}
_registry_lock = threading.Lock()


def at(netns: int | str, run: str) -> Namespace:
    """The socket of a namespace (a pid living in it, or a named netns) of the run with
    prefix ``run``, opened on first use; a path that names another namespace since (a
    reused pid) gets a fresh one."""
    path = netns_path(netns)
    with _registry_lock:
        found = _open.get(path)
        if found is not None:
            try:
                same = os.stat(path).st_ino == found.inode
            except OSError:
                same = False
            if same:
                return found
            found.close()
        label = f"netns {netns}" if isinstance(netns, str) else f"pid {netns}"
        _open[path] = Namespace(netns, label, run)
        return _open[path]


def close_run(run: str) -> None:
    """Close every socket the run ``run`` opened (teardown: they would keep its namespaces)."""
    with _registry_lock:
        for path in [p for p, ns in _open.items() if ns.run == run]:
            _open.pop(path).close()
