import os

# The persistent compilation cache is OFF for the test suite: in this session two of two
# parallel full runs (jaxlib 0.10.2, 2-core CPU) had a worker segfault inside JAX's cache code
# (compilation_cache.get_executable_and_time / put_executable_and_time, while another worker
# used the same directory), and a fresh CI clone gains little from it (it starts empty; only the
# two workers and the subprocess tests could share entries). Set GFSIM_CACHE_DIR to a directory
# to turn it back on. (tests/test_exported.py gives its subprocesses their own directory.)
os.environ.setdefault("GFSIM_CACHE_DIR", "0")

import gfsim  # noqa: E402,F401  (applies float64 and the cache settings)
