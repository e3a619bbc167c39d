"""Saves: the state at the requested times, interpolated from each step's dense output.

Steps end at the ``SAVE_SLOTS``-th pending save time at the latest (see
:func:`gfsim.events._step.attempt`), so at most that many save slots, from a run's
``save_index`` on, fall in one step: only those are interpolated. Slots are written by scatter
into the (R, S, p) save array; slots that are not due go out of range and are dropped."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._step import SAVE_SLOTS


def interpolate(solver, t0, t1, dense, tq):
    """The state at time ``tq`` in [t0, t1] on one step's dense output."""
    return solver.interpolation_cls(t0=t0, t1=t1, **dense).evaluate(tq)


def record(setup, lanes, t_next, t_end, dense, y_new, has_event, ok, saves, saved_held, rows,
           implicit=None):
    """Write the save slots due in (t, t_end] of each lane's accepted step.

    ``t_next``: where the trial step ended (its dense output spans [t, t_next]); ``t_end``:
    where it was cut (the event) or ``t_next``; ``y_new``: the state after the event's changes
    (an exact hit on t_end saves it: the state after an event belongs to the new pattern);
    ``rows``: the run each lane holds (out of range: dropped). Returns the saves, the saved held
    sets and the new save indices. ``implicit``: the lanes whose step was the implicit
    solver's (its own dense output), or None (none was)."""
    ts, solver = setup.ts, setup.solver
    S = ts.shape[0]
    M = SAVE_SLOTS
    L, p = lanes.y.shape
    P = lanes.held.shape[1]
    ahead = lanes.save_index[:, None] + jnp.arange(M)[None, :]
    slots = jnp.minimum(ahead, S - 1)  # (L, M)
    tq = ts[slots]
    due = (tq <= t_end[:, None]) & (ahead < S) & ok[:, None]

    def values(k):
        # the first k slots (a run's due slots are the first ones from save_index on)
        def on(sol):
            return jax.vmap(
                lambda t0_, t1_, dn, q: jax.vmap(lambda x: interpolate(sol, t0_, t1_, dn, x))(
                    jnp.clip(q, t0_, t1_)
                )
            )(lanes.t, t_next, dense, tq[:, :k])

        v = on(solver)
        if implicit is not None:
            v = jnp.where(implicit[:, None, None], on(setup.auto_implicit_dense), v)
        return v if k == M else jnp.concatenate([v, jnp.zeros((L, M - k, p), v.dtype)], 1)

    # Most iterations have at most one save due per run: interpolate one slot then, not M
    # (with M for every run, saving was 14% of W-A's time).
    n_due = jnp.max(jnp.sum(due, axis=1))
    vals = jax.lax.switch(
        jnp.minimum(n_due, 2),
        (lambda: jnp.zeros((L, M, p), lanes.y.dtype), lambda: values(1), lambda: values(M)),
    )
    vals = jnp.where((tq == t_end[:, None])[:, :, None] & has_event[:, None, None],
                     y_new[:, None, :], vals)
    rows = rows[:, None]
    where_to = jnp.where(due, slots, S)
    saves = saves.at[rows, where_to].set(vals, mode="drop")
    saved_held = saved_held.at[rows, where_to].set(
        jnp.broadcast_to(lanes.held[:, None, :], (L, M, P)), mode="drop"
    )
    return saves, saved_held, lanes.save_index + jnp.sum(due, axis=1).astype(jnp.int32)


def put_start(setup, saves, saved_held, rows, lanes):
    """The t = 0 save slots of runs ``rows`` (out of range: none) from the lanes' starting
    state."""
    S = setup.ts.shape[0]
    p = lanes.y.shape[1]
    P = lanes.held.shape[1]
    at_zero = setup.ts <= 0
    where_to = jnp.where(at_zero[None, :], jnp.arange(S)[None, :], S)
    saves = saves.at[rows[:, None], where_to].set(
        jnp.broadcast_to(lanes.y[:, None, :], (rows.shape[0], S, p)), mode="drop")
    saved_held = saved_held.at[rows[:, None], where_to].set(
        jnp.broadcast_to(lanes.held[:, None, :], (rows.shape[0], S, P)), mode="drop")
    return saves, saved_held
