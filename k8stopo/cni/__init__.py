"""The registry of CNI variants: adding one is one module plus one entry here (and its
name in ``spec.SPEC_VARIANTS``, the same order, which charts read without importing the
variants; a test keeps the two equal)."""
from __future__ import annotations

from ..spec import SpecError, pick
from .base import Variant
from .calico import CalicoBGP, CalicoIPIP, CalicoVXLAN
from .docker import DockerBridge, DockerOverlay
from .flannel import FlannelHostGW, FlannelUDP, FlannelVXLAN
from .host import HostNetwork
from .macvlan import Macvlan
from .weave import WeaveFastDP, WeaveSleeve

VARIANTS: dict[str, type[Variant]] = {
    cls.name: cls for cls in (HostNetwork, FlannelVXLAN, FlannelHostGW, FlannelUDP, CalicoBGP,
                              CalicoIPIP, CalicoVXLAN, WeaveFastDP, WeaveSleeve, Macvlan,
                              DockerBridge, DockerOverlay)
}


def _refuse(name: str) -> SpecError:
    return SpecError(f"unknown CNI variant {name!r} (known: {', '.join(VARIANTS)})")


def variant(name: str) -> type[Variant]:
    """The class of a variant by name; SpecError naming the available ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise _refuse(name) from None


def names(value: str) -> tuple[str, ...]:
    """A comma list of variants (or ``all``), checked against the registry."""
    if value.strip() == "all":
        return tuple(VARIANTS)
    for name in (v.strip() for v in value.split(",")):
        if name and name not in VARIANTS:
            raise _refuse(name)
    return pick(value, tuple(VARIANTS), "CNI variant")
