"""The result of a gradient-flow (or gradient-descent) run."""

from __future__ import annotations

import enum

import equinox as eqx
import numpy as np
from jaxtyping import Array, Float, Int


class Status(enum.IntEnum):
    """Why a run ended. Stored per run as an int in :attr:`Trajectory.status`."""

    REACHED_T1 = 0  # integrated all the way to t1
    STOP_LOSS = 1  # the loss fell below stop_loss; later save slots hold NaN
    MAX_STEPS = 2  # the step budget ran out before t1; later save slots hold NaN
    NONFINITE = 3  # the loss or its gradient became NaN/inf
    FAILED = 4  # any other solver failure (e.g. an implicit solver's root find)
    SLIDING_CAPACITY = 5  # more pairs slid at once than max_sliding (raise it and rerun)
    STOP_GRAD = 6  # the gradient norm fell below stop_grad (a stationary point); later slots NaN
    PLATEAU = 7  # the loss fell by less than stop_plateau (relative) per decade; later slots NaN

    @property
    def label(self) -> str:
        return self.name.lower()


class Trajectory(eqx.Module):
    """Loss and weights at the save times, and how the run ended.

    For a batch of runs every field except ``ts`` has a leading run axis.

    **Fields:**

    - ``ts``: the save times ``(T,)``. For gradient descent, time = lr x steps.
    - ``loss``: the loss at each save time ``(T,)``; NaN after an early stop.
    - ``weights``: one array ``(T, out, in)`` per layer; NaN after an early stop.
    - ``biases``: likewise ``(T, out)`` per layer, or None for a bias-free net.
    - ``final_weights``: the weights where the run ended (at ``t_final``), ``(out, in)`` per layer.
    - ``final_loss``: the loss at ``final_weights``.
    - ``t_final``: the time the run ended (t1, or earlier: see ``status``).
    - ``status``: a :class:`Status` code per run.
    - ``num_steps``, ``num_accepted``, ``num_rejected``: solver step counts (for GD, steps taken).
    - ``num_crossings``: activation-pattern changes the flow went through (a (unit, point) pair
      whose pre-activation changed sign), counted by the event-driven ReLU solver; None otherwise.
    - ``num_slides``: sliding episodes (a pair held on its kink by the Filippov flow).
    - ``sliding``: which pairs slide at each save time: one boolean ``(T, n, width)`` per hidden
      layer, or None.
    - ``loss_name``, ``reduction``, ``activation``, ``method``: how it was run (recorded so a
      result is never separated from its time convention).
    - ``t_stiff``: under ``solver="auto"`` (the default, either method), the time the run
      switched from explicit to implicit steps (its explicit steps were stability-limited,
      :mod:`gfsim.stiff`; under ``"events"`` its first switch); NaN for a run that never
      switched (and for an events run inside a trace); None for other solvers.
    - ``loop_steps``, ``lanes``: for the event-driven solver, the iterations of its loop and how
      many runs it advanced at once (see ``simulate(..., lanes=...)``); None otherwise.
    """

    ts: Float[Array, " T"]
    loss: Float[Array, "*runs T"]
    weights: tuple[Array, ...]
    biases: tuple[Array, ...] | None
    final_weights: tuple[Array, ...]
    final_loss: Float[Array, "*runs"]
    t_final: Float[Array, "*runs"]
    status: Int[Array, "*runs"]
    num_steps: Int[Array, "*runs"]
    num_accepted: Int[Array, "*runs"]
    num_rejected: Int[Array, "*runs"]
    loss_name: str = eqx.field(static=True)
    reduction: str = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    method: str = eqx.field(static=True)
    num_crossings: Int[Array, "*runs"] | None = None
    num_slides: Int[Array, "*runs"] | None = None
    sliding: tuple[Array, ...] | None = None
    loop_steps: Int[Array, ""] | None = None
    max_sliding: Int[Array, "*runs"] | None = None
    t_stiff: Float[Array, "*runs"] | None = None
    lanes: int | None = eqx.field(static=True, default=None)

    @property
    def is_batched(self) -> bool:
        return self.status.ndim == 1

    @property
    def runs(self) -> int | None:
        return self.status.shape[0] if self.is_batched else None

    def status_labels(self) -> np.ndarray:
        """Status names (``"reached_t1"``, ``"stop_loss"``, ...) as a NumPy string array."""
        codes = np.asarray(self.status)
        return np.vectorize(lambda c: Status(int(c)).label, otypes=[object])(codes)

    def status_counts(self) -> dict[str, int]:
        codes = np.atleast_1d(np.asarray(self.status))
        return {s.label: int(np.sum(codes == s)) for s in Status if np.any(codes == s)}

    def lockstep_waste(self) -> float:
        """For a batch solved in lockstep: the share of lane-steps spent idle,
        1 - sum(steps) / (loop iterations * lanes); without a lane count (plain solver, GD: all
        runs in lockstep under vmap) 1 - sum(steps) / (max(steps) * runs). 0 for a single run."""
        steps = np.atleast_1d(np.asarray(self.num_steps))
        if self.loop_steps is not None and self.lanes:
            top = int(np.asarray(self.loop_steps))
            return 0.0 if top == 0 else float(1.0 - steps.sum() / (top * self.lanes))
        top = steps.max()
        return 0.0 if top == 0 else float(1.0 - steps.sum() / (top * steps.size))

    def __getitem__(self, index) -> Trajectory:
        """Select runs of a batch (``traj[3]``, ``traj[mask]``)."""
        if not self.is_batched:
            raise TypeError("Only a batched Trajectory can be indexed by run.")
        import jax

        from ._check import run_index

        index = run_index(index, self.runs, "a batched Trajectory")

        # the batch-wide fields (save times, loop iterations) are kept as they are
        keep = (self.ts, self.loop_steps)
        bare = eqx.tree_at(lambda t: (t.ts, t.loop_steps), self, (None, None),
                           is_leaf=lambda x: x is None)
        out = jax.tree_util.tree_map(lambda a: a[index], bare)
        return eqx.tree_at(lambda t: (t.ts, t.loop_steps), out, keep,
                           is_leaf=lambda x: x is None)

    def to_xarray(self, **coords):
        from .store import to_xarray
        return to_xarray(self, **coords)
