"""The loop state of the event-driven solve, typed.

Shapes: L lanes (runs advanced at once), R runs, p parameters, P (unit, point) pairs, S save
times; event values come three per pair (3P: crossing, release low, release high)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree


class Lanes(eqx.Module):
    """Per lane: where its run is, its pattern, its event values and its counters."""

    t: Float[Array, " L"]
    y: Float[Array, "L p"]
    h: Float[Array, " L"]  # the next trial step size
    controller_state: PyTree  # the step-size controller's state
    on: Bool[Array, "L P"]  # the side of each pair (pre-activation > 0)
    held: Bool[Array, "L P"]  # pairs held on their kink (sliding)
    event_values: Float[Array, "L E"]  # with offsets; E = 3P
    event_offsets: Float[Array, "L E"]
    jump: Bool[Array, " L"]  # the state changed outside the ODE: the first stage afresh
    first_stage: PyTree  # the solver's FSAL state
    done: Bool[Array, " L"]
    status: Int[Array, " L"]
    steps: Int[Array, " L"]
    accepted: Int[Array, " L"]
    rejected: Int[Array, " L"]
    crossings: Int[Array, " L"]
    slides: Int[Array, " L"]
    save_index: Int[Array, " L"]  # the next save time not yet written
    loss0: Float[Array, " L"]  # the loss where the run started (for the plateau rule)
    # the stiffness watch under solver="auto" (gfsim.stiff.count_stiff): [stiff steps, calm
    # steps since the last stiff one]; and whether the lane steps implicitly
    watch: Float[Array, "L 2"]
    implicit: Bool[Array, " L"]
    # crossings="step": how many more accepted steps locate their crossings (0: steps go
    # through them)
    located: Int[Array, " L"]
    # crossings="step": accepted steps in a row that went through no kink (from
    # _control.KINK_MEMORY on, the lane's steps are sized by the I rule again)
    kink_calm: Int[Array, " L"]

    def replace(self, **changes) -> Lanes:
        return dataclasses.replace(self, **changes)

    def where(self, mask: Bool[Array, " L"], other: Lanes) -> Lanes:
        """Per lane: ``self`` where ``mask``, else ``other``."""
        return select(mask, self, other)


# what is kept of a run when it is done (when lanes are refilled)
RECORD_FIELDS = ("t", "y", "on", "held", "status", "steps", "accepted", "rejected", "crossings",
                 "slides", "loss0")


class RunRecord(eqx.Module):
    """Per run (R rows): what is kept of it when it is done, for lanes that are refilled."""

    t: Float[Array, " R"]
    y: Float[Array, "R p"]
    on: Bool[Array, "R P"]
    held: Bool[Array, "R P"]
    status: Int[Array, " R"]
    steps: Int[Array, " R"]
    accepted: Int[Array, " R"]
    rejected: Int[Array, " R"]
    crossings: Int[Array, " R"]
    slides: Int[Array, " R"]
    loss0: Float[Array, " R"]

    @classmethod
    def empty(cls, lanes: Lanes, runs: int) -> RunRecord:
        return cls(**{k: jnp.zeros((runs,) + getattr(lanes, k).shape[1:],
                                   getattr(lanes, k).dtype) for k in RECORD_FIELDS})

    def put(self, rows: Int[Array, " L"], lanes: Lanes) -> RunRecord:
        """The runs ``rows`` (out of range: dropped) taken from the lanes."""
        return RunRecord(**{k: getattr(self, k).at[rows].set(getattr(lanes, k), mode="drop")
                            for k in RECORD_FIELDS})


class Refill(eqx.Module):
    """Which run each lane holds, when there are fewer lanes than runs."""

    data: PyTree  # each lane's dataset (leading axis L)
    run_of_lane: Int[Array, " L"]  # R: the lane is idle
    next_run: Int[Array, ""]
    record: RunRecord


class LoopState(eqx.Module):
    lanes: Lanes
    saves: Float[Array, "R S p"]  # the state at each save time (NaN until written)
    saved_held: Bool[Array, "R S P"]  # the held pairs at each save time
    iteration: Int[Array, ""]
    refill: Refill | None = None  # None: one lane per run
    progress: PyTree = None  # a Diffrax progress meter's state, when a bar is shown

    def replace(self, **changes) -> LoopState:
        return dataclasses.replace(self, **changes)


def select(mask, new, old):
    """Per lane: ``new`` where ``mask`` (L,), else ``old`` (matching pytrees)."""
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old)
