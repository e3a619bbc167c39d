"""The benchmark suite behind ``gfsim bench`` and the scripts in benchmarks/.

The workloads and the protocol are those of ../shared/benchmarks.md (docs/benchmarks.md has the
results). scipy and torch (the ``bench`` extra) are imported lazily by the baselines that need
them; a missing one is skipped and recorded, never required.
"""

from .measure import accuracy as accuracy
from .measure import fit_first_order as fit_first_order
from .measure import median_time as median_time
from .problem import Problem as Problem
from .suite import check_options as check_options
from .suite import run_problem as run_problem
from .suite import run_suite as run_suite
from .suite import write as write
from .workloads import WORKLOADS as WORKLOADS
