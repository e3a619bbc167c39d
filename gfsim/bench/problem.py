"""A benchmark problem: a batch of nets, their data, a horizon, and which knobs each method is
run at. The workloads of ../shared/benchmarks.md are built as Problems (gfsim.bench.workloads)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..data import Dataset
from ..nets import MLP

SAVE_FRACTIONS = (0.0, 1 / 30, 0.1, 1 / 3, 1.0)


@dataclasses.dataclass
class Problem:
    """One benchmark problem and the settings of every method run on it.

    **Arguments:**

    - ``name``: what the tables call it (``"W-C depth 4"``); ``workload``: its workload
      (``"W-C"``); ``description``: one line saying what it is.
    - ``net``: a batch of :class:`gfsim.MLP` (leading run axis); ``data``: one
      :class:`gfsim.Dataset` shared by all runs, or a batch paired run by run.
    - ``t1``, ``loss``, ``reduction``: the flow, as for :func:`gfsim.simulate`. The save times
      are ``t1 * (0, 1/30, 1/10, 1/3, 1)``.
    - ``rtols``: gfsim's and the hand-written Diffrax's tolerances.
    - ``gd_steps``: GD step counts (lr = t1 / steps; multiples of 30 so the lr divides every save
      time); ``torch_steps``: those also run in PyTorch; longer torch runs than
      ``torch_max_steps`` are timed on that many steps and scaled.
    - ``scipy_rtols``, ``scipy_subset``: scipy's tolerances and how many runs its Python loop
      solves (its time is scaled to all runs); ``scipy_max_evals``: gradient evaluations per
      run after which scipy is stopped (the run counts as not reaching t1).
    - ``max_steps``: step budget of gfsim and of the hand-written Diffrax; ``ref_max_steps``:
      of the reference.
    - ``reference_method``: ``method`` of the Dopri8 reference (``"events"`` for ReLU nets,
      whose kinks stall a plain solve at rtol 1e-12; ``"plain"`` for linear nets).
    - ``balance_kind``: which invariants :func:`gfsim.analysis.balance_drift` measures.
    """

    name: str
    workload: str
    description: str
    net: MLP
    data: Dataset
    t1: float
    loss: str = "square"
    reduction: str = "mean"
    rtols: tuple[float, ...] = (1e-4, 1e-6, 1e-8)
    gd_steps: tuple[int, ...] = (300, 600, 1200)
    torch_steps: tuple[int, ...] = (300,)
    torch_max_steps: int = 20_000
    scipy_rtols: tuple[float, ...] = (1e-6, 1e-8)
    scipy_subset: int = 2
    scipy_max_evals: int = 20_000
    max_steps: int = 100_000
    ref_max_steps: int = 1_000_000
    reference_method: str = "auto"
    balance_kind: str = "neuron"

    def __post_init__(self):
        if not self.net.is_batched:
            raise ValueError("Problem.net must be a batch of nets (runs=...).")
        for s in self.gd_steps + self.torch_steps:
            if s % 30:
                raise ValueError(f"GD step count {s} must be a multiple of 30.")

    @property
    def runs(self) -> int:
        return self.net.runs

    @property
    def widths(self) -> tuple[int, ...]:
        return self.net.widths

    @property
    def ts(self) -> np.ndarray:
        return float(self.t1) * np.asarray(SAVE_FRACTIONS)

    def subset(self, index, name: str, description: str | None = None) -> Problem:
        """The same problem on the runs ``index`` only."""
        index = np.asarray(index)
        data = self.data[index] if self.data.is_batched else self.data
        return dataclasses.replace(self, name=name, net=self.net[index], data=data,
                                   description=description or self.description)

    def run_data(self, i: int) -> Dataset:
        """The dataset of run ``i``."""
        return self.data[i] if self.data.is_batched else self.data


def hand_loss(theta, X, Y, mask, *, widths, activation, reduction, loss="square"):
    """The loss written by hand on a flat parameter vector (the layout of
    :func:`gfsim.bench.measure.flat_theta`): f = W_k act(... act(W_1 x)), no biases. ``square``:
    ``sum`` is 1/2 sum of squares, ``mean`` the mean over the (observed) entries;
    ``exponential``: exp(-y f) summed or averaged."""
    act = {"relu": jax.nn.relu, "linear": lambda z: z}[activation]
    h, i = X, 0
    k = len(widths) - 1
    for j, (fi, fo) in enumerate(zip(widths[:-1], widths[1:])):
        W = theta[i:i + fi * fo].reshape(fo, fi)
        i += fi * fo
        h = h @ W.T
        if j < k - 1:
            h = act(h)
    if loss == "square":
        r2, half = (h - Y) ** 2, 0.5
    elif loss == "exponential":
        r2, half = jnp.exp(-Y * h), 1.0
    else:
        raise ValueError(f"hand_loss: loss={loss!r}; allowed: square, exponential.")
    if mask is not None:
        r2 = jnp.where(mask > 0, r2, 0.0)
    if reduction == "sum":
        return half * jnp.sum(r2)
    return jnp.sum(r2) / (r2.size if mask is None else jnp.sum(mask))
