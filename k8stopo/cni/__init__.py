"""The registry of CNI variants: adding one is one module plus one entry here."""
from __future__ import annotations

from ..spec import SpecError
from .base import Variant
from .calico import CalicoBGP
from .flannel import FlannelHostGW, FlannelVXLAN
from .host import HostNetwork

VARIANTS: dict[str, type[Variant]] = {
    cls.name: cls for cls in (HostNetwork, FlannelVXLAN, FlannelHostGW, CalicoBGP)
}


def variant(name: str) -> type[Variant]:
    """The class of a variant by name; SpecError naming the known ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise SpecError(f"unknown CNI variant {name!r} (known: {', '.join(VARIANTS)})") from None
