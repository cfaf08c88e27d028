"""One cluster per shape for the tests that only read it (routes, captures, probes): a module
assigns ``name = shared(cni, ..., nodes=3)`` and its tests take ``name`` as a fixture.

A test that changes its cluster for good (a fault, a stopped daemon) or counts from a fresh
one builds its own instead. One that needs a single CNI of a fixture of several takes it with
``@pytest.mark.parametrize(name, [cni], indirect=True)``: pytest hands it the same cluster as
the other tests of that CNI, instead of building a twin.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest

from k8stopo.cluster import Cluster
from k8stopo.spec import ClusterSpec


def shared(cni: str, *more: str, **spec: Any) -> Any:
    """A module-scoped fixture: a cluster of ``spec`` per CNI (parametrised when there are
    several), built before the first test of that CNI and torn down after its last (pytest
    groups the tests by CNI)."""
    cnis = [cni, *more]

    @pytest.fixture(scope="module", params=cnis if more else None)
    def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
        with Cluster(ClusterSpec(cni=getattr(request, "param", cni), **spec)) as c:
            yield c

    return cluster
