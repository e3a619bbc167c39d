"""Sweeps: a TOML spec of many runs -> a plan of batches -> a labelled store.

- :mod:`._spec`: the config fields and the spec format, validated before anything runs;
- :mod:`._plan`: runs grouped into batches (one compiled program per shape);
- :mod:`._runs`: the nets and data of a batch, its (sharded) solve, its xarray Dataset;
- :mod:`._execute`: the local and Ray backends, resume, progress and status.

See docs/sweeps.md.
"""

from ._execute import dry_run as dry_run
from ._execute import format_status as format_status
from ._execute import status as status
from ._execute import sweep as sweep
from ._plan import Plan as Plan
from ._plan import format_plan as format_plan
from ._plan import plan as plan
from ._runs import build_dataset as build_dataset
from ._runs import build_net as build_net
from ._runs import simulate_kwargs as simulate_kwargs
from ._runs import solve_batch as solve_batch
from ._spec import FIELDS as FIELDS
from ._spec import OPTIONS as OPTIONS
from ._spec import Spec as Spec
from ._spec import load_spec as load_spec
from ._spec import parse_spec as parse_spec
