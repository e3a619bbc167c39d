"""The paper's experiments, built from gfsim's public API only.

Each experiment is a function ``run(profile, out_dir, progress) -> Result`` registered by name.
``profile`` is ``"quick"`` (a laptop CPU in minutes) or ``"full"`` (the authors' scale).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .._registry import Registry

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
    data_file: str  # the .npz with the data behind the figures
    settings: dict
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)


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
