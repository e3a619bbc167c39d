"""The paper's experiments, built from gfsim's public API only.

Each experiment is a function ``run(profile, out_dir, progress) -> Result`` registered by name.
``profile`` is ``"quick"`` (a laptop CPU in minutes) or ``"full"`` (the authors' scale); the
tests use ``"tiny"``. It writes its figures into ``out_dir`` and returns its claims and its data
(``Result.data``: one labelled Dataset, built with :class:`Runs`), which ``gfsim reproduce``
writes to ``out_dir/<name>.zarr``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from .._registry import Registry
from ._store import Runs as Runs

PROFILES = ("quick", "full")


@dataclasses.dataclass
class Claim:
    """One row of the report: a claim of the paper beside what was measured."""

    claim: str
    setting: str
    measured: str
    verdict: str  # "agrees", "disagrees" or "inconclusive"


@dataclasses.dataclass
class Result:
    name: str
    title: str
    claims: list[Claim]
    figures: list[str]  # file names, relative to the output directory
    data_file: str  # the store with the data behind the figures (relative to the output dir)
    settings: dict
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)
    data: object = None  # the xarray.Dataset behind the figures, until it is written

    def to_json(self) -> str:
        """Everything but ``data``, as JSON (kept in the store's attributes, so a resumed
        ``gfsim reproduce`` rebuilds the report without running the experiment again)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "data"}
        d["claims"] = [dataclasses.asdict(c) for c in self.claims]
        return json.dumps(d, sort_keys=True, default=_plain)

    @classmethod
    def from_json(cls, text: str) -> Result:
        d = json.loads(text)
        d["claims"] = [Claim(**c) for c in d["claims"]]
        return cls(**d)


def _plain(x):
    """JSON for NumPy scalars and arrays, tuples (settings hold them)."""
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def store_name(name: str) -> str:
    """The store of experiment ``name``, relative to the output directory."""
    return f"{name}.zarr"


EXPERIMENTS: Registry[Callable] = Registry("experiment")


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (figures go to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 110) -> None:
    """Lay out, write and close a figure (closing frees it: experiments make many)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def register_experiment(name: str):
    return EXPERIMENTS.register(name)


# The order in which `gfsim reproduce` runs them.
ORDER = ("negative", "gf_vs_gd", "most_datasets", "linear", "depth", "neurons")

from . import depth as depth  # noqa: E402,F401
from . import gf_vs_gd as gf_vs_gd  # noqa: E402,F401
from . import linear_contrast as linear_contrast  # noqa: E402,F401
from . import most_datasets as most_datasets  # noqa: E402,F401
from . import negative_depth2 as negative_depth2  # noqa: E402,F401
from . import neurons as neurons  # noqa: E402,F401
