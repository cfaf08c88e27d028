"""Experiments as files: ``experiments/NAME.yaml`` -> the settings of one ``bench`` run.

An experiment file is a YAML mapping; every key is optional and has the
command line's default (docs/bench.md lists them)::

    description: what it asks, in a sentence
    cni: all                 # or a list of variants
    scenarios: [host-to-host, pod-to-pod-cross-node]
    protocols: [tcp, tcp_rr, icmp]
    nodes: 2
    pods_per_node: 2
    duration: 1              # whole seconds per measurement
    repeat: 3
    streams: 1
    mtu: 1500
    offloads: on             # or off
    msg_size: 64             # tcp_rr bytes
    udp_bandwidth: "0"       # iperf3 -b; 0 = unlimited
    sweep:                   # at most one parameter, several values
      streams: [1, 2, 4, 8]
    faults: [underlay-link-down, server-stopped, node-stopped]   # docs/bench.md, "Faults"
    budget: 8m               # extra rounds while verdict pairs stay undecided

A file with ``kind:`` other than ``bench`` is a control-plane experiment
(:mod:`k8stopo.controlplane`: ``kube-proxy-rules``, ``kube-proxy-no-retry``, ``dns``,
``policy-cost``); its other keys are that kind's parameters (docs/SPEC.md, "Commands").

The file is checked completely before anything is built: an unknown key or kind, a value
of the wrong type, an unknown variant, scenario or protocol is a
:class:`~k8stopo.spec.SpecError` naming the file (one line, exit status 2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from . import controlplane, yamlfile
from .cni import names as cni_names
from .spec import FAULTS, PROTOCOLS, SCENARIOS, SWEEPABLE, SpecError, pick


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an integer")
    return value


def _on_off(value: Any) -> str:
    # YAML 1.1 (PyYAML) reads an unquoted on/off as a boolean
    if isinstance(value, bool):
        return "on" if value else "off"
    if value in ("on", "off"):
        return str(value)
    raise TypeError("on or off")


def _int_or_text(what: str) -> Callable[[Any], str]:
    """A converter taking an integer or a string, kept as the command line's string."""
    def convert(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(what)
        return str(value)
    return convert


def _names(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise TypeError("a name or a non-empty list of names")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


#: key -> converter to the command line's form (comma lists, "on"/"off", str rates)
KEYS: dict[str, Callable[[Any], Any]] = {
    "description": _text, "cni": _names, "scenarios": _names, "protocols": _names,
    "nodes": _int, "pods_per_node": _int, "duration": _int, "repeat": _int, "streams": _int,
    "mtu": _int, "offloads": _on_off, "msg_size": _int, "udp_length": _int,
    "udp_bandwidth": _int_or_text("an iperf3 rate such as 0, 500M or 2G"),
    "underlay": _text, "faults": _names, "budget": _int_or_text("a duration such as 8m, 90s or 0"),
}


def _value(path: Path, key: str, value: Any) -> Any:
    try:
        return KEYS[key](value)
    except TypeError as exc:
        raise SpecError(f"{path}: {key} must be {exc}, not {value!r}") from None


def _sweep(path: Path, sweep: Any, settings: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    if not isinstance(sweep, dict) or len(sweep) != 1:
        raise SpecError(f"{path}: sweep must map exactly one parameter to a list of values")
    (name, values), = sweep.items()
    if name not in SWEEPABLE:
        raise SpecError(f"{path}: cannot sweep {name!r} (sweepable: {', '.join(SWEEPABLE)})")
    if name in settings:
        raise SpecError(f"{path}: {name} is both set and swept")
    if not isinstance(values, list) or not values:
        raise SpecError(f"{path}: sweep {name} must be a non-empty list, not {values!r}")
    return name, tuple(_value(path, name, v) for v in values)


def _control_plane(path: Path, data: dict[Any, Any]) -> dict[str, Any]:
    """A control-plane experiment: its ``kind`` and checked ``params``."""
    if "description" in data:
        _value(path, "description", data["description"])
    try:
        if not isinstance(data["kind"], str):
            raise SpecError(f"kind must be a string, not {data['kind']!r}")
        k = controlplane.kind(data["kind"])
        params = controlplane.params(k, {key: value for key, value in data.items()
                                         if key not in ("kind", "description")})
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    return {"kind": k.name, "params": params, "experiment": path.stem}


def load(path: Path) -> dict[str, Any]:
    """The experiment's settings in the command line's form, plus ``experiment`` (its name:
    the file's stem) and ``sweep`` (None or (parameter, values)); checked, nothing built.
    For a control-plane kind: ``kind``, ``params`` and ``experiment`` (:func:`_control_plane`)."""
    path = Path(path)
    docs = yamlfile.documents(path, "experiment")
    data = docs[0] if len(docs) == 1 else None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: an experiment is a YAML mapping of settings")
    if data.get("kind", controlplane.BENCH) != controlplane.BENCH:
        return _control_plane(path, data)
    data = {k: v for k, v in data.items() if k != "kind"}  # an explicit `kind: bench`
    unknown = [k for k in data if k not in KEYS and k != "sweep"]
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r} (known: "
                        f"{', '.join([*KEYS, 'sweep'])})")
    settings = {k: _value(path, k, v) for k, v in data.items() if k != "sweep"}
    settings["sweep"] = _sweep(path, data["sweep"], settings) if "sweep" in data else None
    try:
        if "cni" in settings:
            cni_names(settings["cni"])
        for key, allowed in (("scenarios", SCENARIOS), ("protocols", PROTOCOLS),
                             ("faults", FAULTS)):
            if key in settings:
                pick(settings[key], allowed, key[:-1])
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    settings.pop("description", None)
    settings["experiment"] = path.stem
    return settings
