"""NetworkPolicy: the v1 API parsed (model), its reference semantics (semantics), and the
agents that enforce it as the real projects do (Felix for calico-*, weave-npc for weave-*)."""
