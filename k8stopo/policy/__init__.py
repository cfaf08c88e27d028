"""NetworkPolicy: the v1 API parsed (model), its reference semantics (semantics), and the
agents that enforce it as the real projects do (Felix for calico-*, weave-npc for weave-*).

The CLI and tests compose a cluster as ``Cluster(spec, agents=[*agents_for(variant_cls)])``;
a variant whose project enforces nothing gets no agent and :func:`not_enforced_notice`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..spec import SpecError

if TYPE_CHECKING:
    from ..agent import Agent
    from ..cni.base import Variant
    from .agent import PolicyAgent


def enforcers() -> tuple[type["PolicyAgent"], ...]:
    """Every enforcing agent (imported here: each needs its variant's dataplane module)."""
    from .felix import FelixPolicy
    from .weave_npc import WeaveNPC
    return (FelixPolicy, WeaveNPC)


def agents_for(variant: type["Variant"]) -> list[type["Agent"]]:
    """The policy agent the variant's real project runs (none when it enforces nothing)."""
    if not variant.enforces_policy:
        return []
    for agent in enforcers():
        if agent.serves(variant):
            return [agent]
    raise SpecError(f"{variant.name} enforces NetworkPolicy but no policy agent serves it")


def not_enforced_notice(variant: type["Variant"]) -> str | None:
    """The one line ``up`` and ``probe`` print for a variant that enforces nothing."""
    if variant.enforces_policy:
        return None
    return (f"variant {variant.name} does not enforce NetworkPolicy: "
            f"every pod reaches every pod whatever the policies say")
