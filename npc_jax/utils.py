"""Process-level settings for entry points."""
from __future__ import annotations

import os
from pathlib import Path


def enable_compilation_cache(path: str | None = None) -> None:
    """Persists XLA executables across processes (resumed runs skip recompiling).

    Default location: $NPC_JAX_CACHE or ~/.cache/npc_jax/xla.
    """
    import jax
    path = path or os.environ.get("NPC_JAX_CACHE") or str(Path.home() / ".cache/npc_jax/xla")
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
