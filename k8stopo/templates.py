"""Jinja2 rendering of k8stopo/templates: daemon configs and rule sets live there, not in code.

One environment for every user (CNI variants, kube-proxy, cluster DNS, NetworkPolicy and
:mod:`k8stopo.daemon`), so a config is filled the same way wherever it is written.
``K8STOPO_TEMPLATES`` names a directory searched before the package's own (a test puts a
broken daemon config there to see the one-line failure a user would get).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.lru_cache(maxsize=4)
def _environment(first: str | None) -> jinja2.Environment:
    search = [*([first] if first else []), str(TEMPLATES)]
    return jinja2.Environment(loader=jinja2.FileSystemLoader(search),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True, autoescape=False)


def render(template: str, **values: object) -> str:
    """Fill one of the templates; a value the template needs and was not given is an error,
    never an empty string."""
    return _environment(os.environ.get("K8STOPO_TEMPLATES")).get_template(template).render(
        **values)
