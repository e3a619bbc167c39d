"""gfsim: exact, batched, differentiable gradient flow for deep linear and ReLU networks."""

from ._config import configure as _configure

_configure()

from . import analysis as analysis  # noqa: E402
from . import data as data  # noqa: E402
from . import derivatives as derivatives  # noqa: E402
from . import losses as losses  # noqa: E402
from . import nets as nets  # noqa: E402
from .data import Dataset as Dataset  # noqa: E402
from .derivatives import scaled as scaled  # noqa: E402
from .derivatives import stop_time as stop_time  # noqa: E402
from .descent import gd as gd  # noqa: E402
from .flow import grid as grid  # noqa: E402
from .flow import log_times as log_times  # noqa: E402
from .flow import objective as objective  # noqa: E402
from .flow import simulate as simulate  # noqa: E402
from .nets import MLP as MLP  # noqa: E402
from .store import load as load  # noqa: E402
from .store import save as save  # noqa: E402
from .trajectory import Status as Status  # noqa: E402
from .trajectory import Trajectory as Trajectory  # noqa: E402

__version__ = "0.1.0"
