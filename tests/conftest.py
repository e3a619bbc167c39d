import os

# Persistent compilation cache for the test suite (before gfsim/jax are imported).
os.environ.setdefault(
    "GFSIM_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache")
)

import gfsim  # noqa: E402,F401  (applies float64 and the cache settings)
