"""NPC with a better optimiser of Eq. 3 than random search (beyond the paper).

`NPCSearch` = `search.swap_search` (the best of m random batches and a greedy
residual batch, improved by exact swaps; see there) × the last-layer kernel
(logits or probs, optionally normalised). The swaps score kernel columns over
the whole unlabeled pool, so every pool point is represented at once: a few
hundred floats per point for the last layer; the full kernel would need every
pool point's Jacobian and is refused.
"""
from __future__ import annotations

import functools
from typing import Callable

from npc_jax.strategies import kernels
from npc_jax.strategies.base import AcquisitionContext
from npc_jax.strategies.kernels import Kernel
from npc_jax.strategies.npc import KernelSearch
from npc_jax.strategies.search import check_num_candidates, swap_search

__all__ = ["NPCSearch"]


class NPCSearch(KernelSearch):
    """NPC: random search, then greedy residual selection, then exact swaps.

    Args:
      num_candidates: m random batches of the first stage (0 skips it), or "pool".
      max_swaps: swap rounds at most (each scores `swap_candidates` batches).
      swap_candidates: replacements scored exactly per swap round.
      greedy: also start from the greedy residual batch.
      kernel: must be "last".
      output, normalize, float64: the kernel's, as for `npc.NPC`.
      chunk_size: candidate batches per scoring call.
      jacobian_chunk, memory_mb: accepted for option compatibility with NPC
        (they concern kernel="full" only).
      kernel_fn: inject a kernel, see `npc.KernelSearch`.
    """

    name = "npc_search"

    def __init__(self, num_candidates: int | str = 200, max_swaps: int = 60,
                 swap_candidates: int = 64, greedy: bool = True, *, kernel: str = "last",
                 output: str = "logits", normalize: bool = False, chunk_size: int = 128,
                 jacobian_chunk: int = 32, memory_mb: float = 1024,
                 float64: bool | None = None,
                 kernel_fn: Callable[[AcquisitionContext], Kernel] | None = None):
        check_num_candidates(num_candidates, allow_zero=True)
        kernels.check_options(kernel, output)
        if kernel != "last":
            raise ValueError("npc_search needs the last-layer kernel (kernel='last'): its "
                             "swaps score kernel columns over the whole pool; use 'npc' "
                             "with kernel='full' instead.")
        self.num_candidates = num_candidates
        self.kernel, self.output, self.normalize = kernel, output, bool(normalize)
        self.max_swaps, self.swap_candidates = int(max_swaps), int(swap_candidates)
        self.greedy = bool(greedy)
        make_kernel = functools.partial(kernels.empirical_kernel, kernel=kernel, output=output,
                                        normalize=bool(normalize), float64=float64)
        search = functools.partial(swap_search, num_candidates=num_candidates,
                                   max_swaps=self.max_swaps,
                                   swap_candidates=self.swap_candidates, greedy=self.greedy,
                                   chunk_size=int(chunk_size))
        super().__init__(make_kernel, search,
                         {"kernel": kernel, "output": output, "normalize": bool(normalize)},
                         chunk_size=chunk_size, kernel_fn=kernel_fn)
