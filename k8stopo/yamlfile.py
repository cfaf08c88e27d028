"""The user's YAML files (experiments, manifests), read strictly: any fault is one line.

PyYAML keeps the last of two equal keys of a mapping, so a repeated key would silently
drop a setting or a whole policy rule (an ignored policy field is a security hole):
it is refused, as kubectl's strict decoding refuses it. Unreadable files, bytes that are
not UTF-8 and YAML errors are :class:`~k8stopo.spec.SpecError` naming the file, never
a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from .spec import SpecError

_MERGE = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader refusing a key written twice in one mapping (``<<`` merges may still
    be overridden, as YAML means them to be)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class says so
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found key {key!r} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def documents(path: Path, what: str) -> list[Any]:
    """Every document of the YAML file ``path`` (a ``what``, for the message)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return parse(data, str(path))


def read_stdin() -> bytes:
    """Standard input, whole (read once: it cannot be read again)."""
    return sys.stdin.buffer.read()


def parse(data: bytes, name: str) -> list[Any]:
    """Every document of YAML ``data`` read from ``name`` (a file, ``<stdin>``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    try:
        return list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise SpecError(f"{name}: not valid YAML{at}: {' '.join(str(problem).split())}") \
            from None
