"""NPC with a better optimiser of Eq. 3 than random search (beyond the paper).

max over X_u ⊂ X_U, |X_u| = q, of λ_min(K(X_L ∪ X_u)) is combinatorial; the
paper samples m random batches and keeps the best. `NPCSearch` starts from
the better of two batches and improves it by exact swaps:

1. Random search: the best of m random batches (the paper's Algorithm 1).
2. Greedy: q points chosen one at a time, each maximising its residual
   r(x) = K(x, x) − k_S(x)ᵀ K_S⁻¹ k_S(x) given the set S chosen so far
   (X_L first). Why this proxy: for any point i of a set,
   λ_min(K) ≤ 1 / (K⁻¹)_ii = the residual of i given the others, so λ_min is
   at most the smallest residual, and greedy keeps every residual large.
3. Swap local search from the better start: take the batch point with the
   largest weight in the eigenvector of λ_min (the most redundant one);
   rank every pool point by its residual given the set without it; score the
   `swap_candidates` best replacements exactly (batched eigvalsh) and accept
   the best if it raises λ_min; else try the next point of the eigenvector.
   Stops after `max_swaps` evaluations rounds or when no point improves.

Needs the kernel's columns over the whole unlabeled pool, so it supports the
last-layer kernels (logits or probs, optionally normalised), whose
representation is a few hundred floats per point; the full kernel would need
every pool point's Jacobian.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from npc_jax.data import Pool
from npc_jax.strategies.base import Acquisition, AcquisitionContext, check_query
from npc_jax.strategies.npc import NPC, _score_summary, sample_batches, score_batches


class NPCSearch(NPC):
    """NPC: random search, then greedy residual selection, then exact swaps.

    Args:
      num_candidates: m random batches of the first stage (0 skips it).
      max_swaps: swap rounds at most (each scores `swap_candidates` batches).
      swap_candidates: replacements scored exactly per swap round.
      greedy: also start from the greedy residual batch.
      **options: the NPC options (kernel must be "last").
    """

    name = "npc_search"

    def __init__(self, num_candidates: int | str = 200, max_swaps: int = 60,
                 swap_candidates: int = 64, greedy: bool = True, **options):
        if num_candidates == 0:
            num_candidates, skip_random = 1, True
        else:
            skip_random = False
        super().__init__(num_candidates=num_candidates, **options)
        if self.kernel != "last":
            raise ValueError("npc_search needs the last-layer kernel (kernel='last'): its "
                             "swaps score kernel columns over the whole pool; use 'npc' "
                             "with kernel='full' instead.")
        self.skip_random = skip_random
        self.max_swaps = int(max_swaps)
        self.swap_candidates = int(swap_candidates)
        self.greedy = bool(greedy)

    # -- kernel columns --------------------------------------------------------

    def _columns(self, rep_all, diag, rows, cols):
        """K(rows, cols) of the (normalised) kernel: (len(rows), len(cols))."""
        a = tuple(jnp.asarray(r[rows]) for r in rep_all)
        b = tuple(jnp.asarray(r[cols]) for r in rep_all)
        k = np.asarray(self.gram(a, b), np.float64)
        if self.normalize:
            k = k / np.sqrt(np.outer(diag[rows], diag[cols]))
        return k

    def _diag(self, rep_all):
        chunks = [np.asarray(jax.vmap(lambda *r: self.gram(
            tuple(x[None] for x in r), tuple(x[None] for x in r))[0, 0])(
                *[jnp.asarray(x[i:i + 8192]) for x in rep_all]), np.float64)
                  for i in range(0, len(rep_all[0]), 8192)]
        return np.concatenate(chunks)

    def _residuals(self, k_cols, k_set, d_self):
        """r(x) = d(x) − k(x)ᵀ K_S⁻¹ k(x) for every row x of k_cols (N, s)."""
        jitter = 1e-10 * np.trace(k_set) / len(k_set)
        chol = np.linalg.cholesky(k_set + jitter * np.eye(len(k_set)))
        w = np.linalg.solve(chol, k_cols.T)                    # (s, N)
        return d_self - np.einsum("sn,sn->n", w, w)

    # -- selection ---------------------------------------------------------------

    def select(self, key: jax.Array, ctx: AcquisitionContext, pool: Pool,
               q: int) -> Acquisition:
        check_query(pool, q)
        unlabeled = pool.unlabeled_indices
        labeled = pool.labeled_indices
        num_l = len(labeled)
        # Row order: labeled first, then the unlabeled pool.
        everything = np.concatenate([labeled, unlabeled])
        rep_all = self.representation(ctx, everything)
        diag = self._diag(rep_all)
        lab_rows = np.arange(num_l)
        kw = dict(gram=self.gram, normalize=self.normalize, float64=self.float64,
                  chunk_size=self.chunk_size)
        rep_l = tuple(r[:num_l] for r in rep_all)

        def score_rows(batch_rows):  # (b, q) rows of rep_all -> λ_min (b,)
            return score_batches(rep_l, tuple(r[batch_rows] for r in rep_all), **kw)

        starts, info = [], {}
        if not self.skip_random:
            m = len(unlabeled) if self.num_candidates == "pool" else int(self.num_candidates)
            batches = num_l + sample_batches(key, unlabeled, m, q)
            scores = score_rows(batches)
            best = int(np.argmax(scores))
            starts.append((float(scores[best]), batches[best]))
            info["random_batches"] = _score_summary(scores)
        if self.greedy:
            greedy_rows = self._greedy(rep_all, diag, num_l, q)
            greedy_score = float(score_rows(greedy_rows[None])[0])
            starts.append((greedy_score, greedy_rows))
            info["greedy_lambda_min"] = greedy_score
        if not starts:
            raise ValueError("npc_search needs num_candidates > 0 or greedy=True.")
        current_score, current = max(starts, key=lambda t: t[0])
        info["start_lambda_min"] = current_score
        current, current_score, swaps = self._swap_search(
            rep_all, diag, lab_rows, current.copy(), current_score, score_rows)
        info.update({"lambda_min": float(current_score), "swaps_accepted": swaps,
                     "kernel": self.kernel, "output": self.output,
                     "normalize": self.normalize})
        return Acquisition(everything[current].astype(np.int64), info)

    def _greedy(self, rep_all, diag, num_l, q):
        """q rows (of the unlabeled part) by largest residual, X_L given."""
        n = len(diag)
        d_self = diag if not self.normalize else np.ones(n)
        chosen = list(range(num_l))
        k_cols = self._columns(rep_all, diag, np.arange(n), np.array(chosen)) if num_l else None
        picks = []
        for _ in range(q):
            r = (self._residuals(k_cols, k_cols[chosen], d_self) if chosen else d_self.copy())
            r[chosen] = -np.inf
            pick = int(np.argmax(r))
            chosen.append(pick)
            picks.append(pick)
            col = self._columns(rep_all, diag, np.arange(n), np.array([pick]))
            k_cols = col if k_cols is None else np.concatenate([k_cols, col], 1)
        return np.array(picks)

    def _swap_search(self, rep_all, diag, lab_rows, batch, score, score_rows):
        n = len(diag)
        d_self = diag if not self.normalize else np.ones(n)
        num_l = len(lab_rows)
        accepted = 0
        rounds = 0
        while rounds < self.max_swaps:
            members = np.concatenate([lab_rows, batch])
            k_cols = self._columns(rep_all, diag, np.arange(n), members)   # (N, L+q)
            k_set = k_cols[members]
            _, vecs = np.linalg.eigh(k_set)
            order = np.argsort(-np.abs(vecs[num_l:, 0]))  # batch positions, most redundant first
            improved = False
            for position in order:
                if rounds >= self.max_swaps:
                    break
                rounds += 1
                keep = np.delete(np.arange(len(members)), num_l + position)
                r = self._residuals(k_cols[:, keep], k_set[np.ix_(keep, keep)], d_self)
                r[members] = -np.inf
                r[:num_l] = -np.inf
                top = np.argsort(-r)[:self.swap_candidates]
                candidates = np.repeat(batch[None], len(top), 0)
                candidates[:, position] = top
                scores = score_rows(candidates)
                best = int(np.argmax(scores))
                if scores[best] > score:
                    batch, score = candidates[best], float(scores[best])
                    accepted += 1
                    improved = True
                    break
            if not improved:
                break
        return batch, score, accepted
