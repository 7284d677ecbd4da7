"""Semi- and self-supervised building blocks, as pure functions.

`augment` (FixMatch's weak / strong views, contrastive views), `fixmatch`
(losses), `darp` (pseudo-label refinement), `thresholds` (FreeMatch's
adaptive thresholds), `pretrain` (SimCLR / SimSiam encoder pretraining).
Import the submodules by name; this package imports none of them.
"""

__all__ = ["augment", "darp", "fixmatch", "pretrain", "thresholds"]
