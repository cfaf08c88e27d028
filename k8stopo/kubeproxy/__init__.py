"""kube-proxy's three modes as node agents (``--proxy-mode``), each composable with
every CNI variant: ``Cluster(spec, agents=[PodServers, proxy_class(mode)])``."""
from __future__ import annotations

from ..spec import SpecError
from .base import KubeProxy
from .iptables import IptablesProxy
from .nftables import NftablesProxy
from .userspace import UserspaceProxy

MODES: dict[str, type[KubeProxy]] = {
    cls.mode: cls for cls in (IptablesProxy, NftablesProxy, UserspaceProxy)
}
DEFAULT_MODE = "iptables"


def proxy_class(mode: str) -> type[KubeProxy]:
    try:
        return MODES[mode]
    except KeyError:
        raise SpecError(f"unknown --proxy-mode {mode!r} (known: {', '.join(MODES)})") from None
