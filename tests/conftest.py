import os

# Persistent compilation cache for the test suite (before gfsim/jax are imported).
os.environ.setdefault(
    "GFSIM_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache")
)

import gfsim  # noqa: E402,F401  (applies float64 and the cache settings)


# Compiled XLA programs hold memory mappings until JAX's caches (and gfsim's memo of loaded
# exports) let them go; an events solve holds over a thousand. An xdist worker that runs half
# the suite reaches the kernel's limit (vm.max_map_count, 65530 by default), and then an mmap
# inside XLA fails and the worker dies natively (a segfault in a compile, an abort in the
# compilation cache's write). Past a share of the limit, let the programs go: later tests
# reload them from the persistent cache.
def _map_limit() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


_MAPS_RELEASE = int(0.5 * _map_limit())


def _mappings() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def pytest_runtest_teardown(item, nextitem):
    if _MAPS_RELEASE and _mappings() > _MAPS_RELEASE:
        import gc

        import jax

        from gfsim import _exported

        jax.clear_caches()
        _exported._MEMO.clear()
        gc.collect()
        log = os.environ.get("GFSIM_TEST_MAPS_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {item.nodeid}: released, {_mappings()} mappings left\n")
