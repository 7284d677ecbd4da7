"""Acquisition strategies, by name.

    strategy = make_strategy("npc", num_candidates=1000)
    acquisition = strategy.select(key, ctx, pool, q)

New strategies register a factory with `register`. The NPC family is a kernel
(`kernels`: last layer, full network, infinite width, embedding) × a search
(`search`: random batches, swaps), composed by `npc.KernelSearch`.
"""
from __future__ import annotations

from typing import Callable

from npc_jax.strategies.albl import ALBL
from npc_jax.strategies.badge import Badge
from npc_jax.strategies.base import Acquisition, AcquisitionContext, Strategy, check_query
from npc_jax.strategies.coreset import Coreset
from npc_jax.strategies.maxherding import MaxHerding
from npc_jax.strategies.npc import NPC, KernelSearch, NPCEmbed, npc_variant
from npc_jax.strategies.npc_search import NPCSearch
from npc_jax.strategies.passive import Passive
from npc_jax.strategies.probcover import ProbCover
from npc_jax.strategies.typiclust import TypiClust
from npc_jax.strategies.uncertainty import Entropy, LeastConfidence, Margin

_REGISTRY: dict[str, Callable[..., Strategy]] = {}


def register(name: str, factory: Callable[..., Strategy]) -> None:
    if name in _REGISTRY:
        raise ValueError(f"Strategy {name!r} is already registered.")
    _REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(_REGISTRY)


def make_strategy(name: str, **options) -> Strategy:
    """The strategy registered under `name`, built with `options`."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown strategy {name!r}; available: {', '.join(available())}.")
    try:
        return _REGISTRY[name](**options)
    except TypeError as error:
        if "argument" not in str(error):   # a TypeError from inside the factory
            raise
        raise ValueError(f"Strategy {name!r} does not take the options {sorted(options)} "
                         f"({error}); check config.strategy_options.{name}.") from None


register("passive", Passive)
register("npc", NPC)
# NPC = random search × a finite network's kernel; the variants fix one option.
register("npc_probs", npc_variant("npc_probs", output="probs"))
register("npc_full", npc_variant("npc_full", kernel="full"))
register("npc_typical", npc_variant("npc_typical", candidates="typical"))
# Cosine-normalised kernel: every point weighs the same, so a large-norm
# (outlying) feature vector no longer inflates a batch's λ_min.
register("npc_norm", npc_variant("npc_norm", normalize=True))
register("npc_search", NPCSearch)      # swap search × the last-layer kernel
register("margin", Margin)
register("entropy", Entropy)
register("least_confidence", LeastConfidence)
register("coreset", Coreset)
register("badge", Badge)
register("albl", ALBL)


def _npc_infinite(**options) -> Strategy:
    # Imported on use: npc_jax.infinite needs neural-tangents (jax < 0.6).
    from npc_jax.strategies.npc_infinite import NPCInfinite
    return NPCInfinite(**options)


register("npc_infinite", _npc_infinite)
# Low-budget peers on a pool embedding (issue 13).
register("typiclust", TypiClust)
register("probcover", ProbCover)
register("maxherding", MaxHerding)
# NPC's rule on the peers' embedding (cosine kernel): the two compared on one representation.
register("npc_embed", NPCEmbed)

__all__ = ["ALBL", "Acquisition", "AcquisitionContext", "Badge", "Coreset", "Entropy",
           "KernelSearch", "LeastConfidence", "Margin", "MaxHerding", "NPC", "NPCEmbed",
           "NPCSearch", "Passive", "ProbCover", "Strategy", "TypiClust",
           "available", "check_query", "make_strategy", "register"]
