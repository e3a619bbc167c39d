"""Lane refill: with fewer lanes than runs, a lane whose run is done takes the next pending run,
so lanes do not idle while the longest run of a batch finishes (the lockstep waste of a vmapped
solve)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _saves
from ._state import LoopState, select


def take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def store_and_load(setup, state: LoopState, start_lanes) -> LoopState:
    """Keep what is needed of the runs that are done; give their lanes the next pending runs
    (lanes left without one idle, with run index R). ``start_lanes(theta0, data)``: the
    starting state of a batch of lanes."""
    R = setup.runs
    rf, lanes = state.refill, state.lanes
    fin = lanes.done & (rf.run_of_lane < R)
    record = rf.record.put(jnp.where(fin, rf.run_of_lane, R), lanes)
    new_rid = rf.next_run + jnp.cumsum(fin).astype(jnp.int32) - 1
    load = fin & (new_rid < R)
    cand = jnp.where(load, new_rid, 0)
    d_new = take(setup.data, cand)
    fresh = start_lanes(setup.theta0[cand], d_new)
    saves, saved_held = _saves.put_start(setup, state.saves, state.saved_held,
                                         jnp.where(load, new_rid, R), fresh)
    refill = rf.__class__(
        data=select(load, d_new, rf.data),
        run_of_lane=jnp.where(load, new_rid, jnp.where(fin, R, rf.run_of_lane)),
        next_run=rf.next_run + jnp.sum(load).astype(jnp.int32),
        record=record,
    )
    return state.replace(lanes=select(load, fresh, lanes), saves=saves, saved_held=saved_held,
                         refill=refill)
