"""One trial step of the frozen-pattern flow, and its error.

Explicit FSAL Runge-Kutta methods with at most ``_UNROLL_STAGES`` stages run with their stages
unrolled (:func:`erk_step`), taking the event values at the step's end from the last stage's
forward pass; others go through the solver's own ``step``.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp

from ..stiff import h_rho
from . import _functions, _sliding

_UNROLL_STAGES = 7
# A step may span at most this many pending save times (each is interpolated from the step's
# dense output); more cost interpolations, fewer cost steps cut short at save times.
SAVE_SLOTS = 8


def unrolled(solver) -> bool:
    """Whether ``solver``'s steps run unrolled (explicit FSAL tableau, last stage at t1)."""
    tab = getattr(solver, "tableau", None)
    return (isinstance(solver, diffrax.AbstractERK) and isinstance(tab, diffrax.ButcherTableau)
            and tab.fsal and tab.ssal and float(tab.c[-1]) == 1.0
            and tab.num_stages <= _UNROLL_STAGES)


def erk_step(tab, fn, t0, t1, y0, state, jump):
    """One step of an explicit FSAL Runge-Kutta method (last stage at (t1, y1)), stages
    unrolled. ``fn(t, y) -> (f, aux)``. Returns y1, the error estimate, the dense information in
    Diffrax's layout (k_i = h f_i, for ``solver.interpolation_cls``), the next FSAL state and
    the last stage's aux: whatever the field computes at (t1, y1) comes free with the step.

    Diffrax's step runs its stages in an inner loop (one trace of the field, any tableau); on a
    small net each stage is a handful of tiny operations, and the inner loop's bookkeeping and
    the separate forward pass for the events cost more than the field itself."""
    first, f_prev = state
    h = t1 - t0
    dt = y0.dtype
    # The first stage afresh after a jump (pattern change, projection): evaluated when any run
    # of the batch needs it, used only by those (a run's arithmetic does not depend on others).
    again = first | jump
    f0 = jax.lax.cond(eqxi.unvmap_any(again), lambda: jnp.where(again, fn(t0, y0)[0], f_prev),
                      lambda: f_prev)
    ks = [h * f0]
    for ci, row in zip(tab.c, tab.a_lower):
        yi = y0 + sum(jnp.asarray(a, dt) * k for a, k in zip(row, ks) if a != 0)
        fi, aux = fn(t0 + jnp.asarray(ci, dt) * h, yi)
        ks.append(h * fi)
    yerr = sum(jnp.asarray(b, dt) * k for b, k in zip(tab.b_error, ks) if b != 0)
    dense = dict(y0=y0, y1=yi, k=jnp.stack(ks))
    return yi, yerr, dense, (jnp.zeros_like(first), fi), aux


def error_ratio(y0, y1, yerr, rtol, atol):
    """The RMS of the error estimate scaled by ``atol + rtol * max(|y0|, |y1|)``: <= 1 accepts.
    With a finite derivative at 0 (a run that is done takes zero-length steps while others go
    on, and sqrt'(0) = inf would make its gradient NaN: 0 * inf); NaN -> inf."""
    sc = atol + rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1))
    ms = jnp.mean((yerr / sc) ** 2)
    return jnp.where(ms > 0, jnp.sqrt(jnp.where(ms > 0, ms, 1.0)),
                     jnp.where(jnp.isnan(ms), jnp.inf, 0.0))


def quadrature_gap(tab, frac):
    """The quadrature error of a Runge-Kutta step for a unit jump of the integrand at fraction
    ``frac`` of the step: sum of the weights of the stages past the jump, minus the share of
    the step past it. (The step's solution misses a jump of the field by h times this.)"""
    c = jnp.asarray((0.0,) + tuple(float(x) for x in tab.c), frac.dtype)
    b = jnp.asarray(tuple(float(x) for x in tab.b_sol), frac.dtype)
    past = (c[None, :] > frac[:, None]).astype(frac.dtype)
    return past @ b - (1.0 - frac)


def through(setup, data, y1, t, h, on, on_end, held, E0, E1, slots: int = 0, first=None):
    """The kinks a step from clock time ``t`` of size ``h`` went through (``crossings="step"``;
    ``E0``, ``E1``: the event values at its two ends with offsets, crossings measured from the
    start's sides ``on``): the error they add, the sum over the flipped pairs of the jump of the
    field, ``-(slope change) c_k dz_k/dtheta`` (in the loop's clock: times e^s under log time),
    times h times the step's quadrature gap at the crossing time (read off the crossing
    function's values at the two ends); whether a flipped pair is pushed back by its new side
    (it would slide: the step must not go through its kink) and the earliest such pair's
    crossing, as a fraction of the step (1 if none). One backward pass (the field and c = dL/dh
    at y1 under the end's sides) and one linearisation of the pre-activations (its transpose
    for the error, a jvp for the rates). ``slots`` > 0, for a lane that holds pairs: the field
    and the jumps projected onto the held kinks (the held rows at y1: the first layer's do not
    depend on the pattern; a flip at a point where a deeper pair is held counts as pushed
    back, since it changes that pair's row). ``first``: the held set's first-layer rows
    (:func:`gfsim.events._sliding.first_rows`; None: built here)."""
    model = setup.model
    P = setup.pairs
    flips = on_end != on
    e0, e1 = E0[:P], E1[:P]  # >= 0 at the start, < 0 at the end where flipped
    frac = jnp.clip(e0 / jnp.where(flips, e0 - e1, 1.0), 0.0, 1.0)
    gap = quadrature_gap(setup.solver.tableau, frac)
    dslope = (model.right - model.left) * jnp.where(on_end, 1.0, -1.0)
    D_end = model.slopes(on_end, held)
    g, c_end = model.grad_and_c(y1, data, D_end)
    F = -g
    if slots:  # a lane that holds pairs: the field and the jumps projected onto its kinks
        rows = _sliding.HeldRows(model, data, y1, D_end, held, slots, first)
        project = lambda v: v - rows.min_norm(*rows.apply(v))[0]  # noqa: E731
        F = project(F)
    zf = lambda th: model.forward(th, data.X, D_end)[1]  # noqa: E731
    z, lin = jax.linearize(zf, y1)
    jump = -gap * dslope * c_end
    if setup.log_time:  # the field in the clock s is e^s times the flow's
        jump = jump * jnp.exp(t + frac * h)
    cot = jnp.where(flips, h * jump, 0.0).reshape(z.shape)
    kink = jax.linear_transpose(lin, y1)(cot)[0]
    if slots:
        kink = project(kink)
    dz = lin(F).reshape(-1)
    # a pair that would slide is pushed back by its new side. (A quadratic through the crossing
    # values at the ends and the end rate, to tell pairs that crossed, went on and turned from
    # those pushed back at once, missed slides whose kink lay early in the step.)
    pushed = flips & (jnp.where(on_end, 1.0, -1.0) * dz < 0)
    if slots and len(model.hidden) > 1:
        # a flip at a point where a deeper pair is held changes that pair's row of J, which the
        # projected jump above leaves out: the step must not go through it either
        n = data.X.shape[0]
        H = held.reshape(n, model.hsum)
        deep_at = jnp.any(H[:, model.hidden[0]:], axis=1)
        pushed = pushed | (flips.reshape(n, model.hsum) & deep_at[:, None]).reshape(-1)
    return kink, jnp.any(pushed), jnp.min(jnp.where(pushed, frac, 1.0))


def attempt(setup, data, y, t, h, on, held, jump, fsal, save_index, slots: int,
            offsets=None, adapt=None, first=None):
    """One trial step of one run from ``(t, y)`` with step size ``h``, cut at t1 and at the
    ``SAVE_SLOTS``-th pending save time. Returns y1, t_next, the error estimate, its ratio to
    the tolerance (for the acceptance test see :mod:`._control`), the dense output, the next
    FSAL state, the event values at y1 (without offsets, crossings measured from the start's
    sides), the stiffness flag and the sides at y1.

    Under ``crossings="step"`` (``setup.stepping``) and ``adapt`` (the driver passes it for the
    lanes that step through crossings), each stage takes every free
    pair on the side its state is on (:func:`gfsim.events._functions.stage_sides`, with the
    crossing ``offsets`` at the start); the driver adds the kinks' error (:func:`through`).
    ``first``: the held set's first-layer rows (None: built here when ``slots``)."""
    model, solver = setup.model, setup.solver
    t_next = _step_end(setup, t, h, save_index)
    clocked = _clock(setup)
    stiff = jnp.zeros((), bool)
    stepping = setup.stepping
    P = setup.pairs

    def sides(y_):
        if not stepping:
            return on
        return _functions.stage_sides(model, data, y_, on, held, offsets[:P], adapt)

    # Sliding steps keep Diffrax's step: unrolling the projected field (a backward pass per held
    # pair, per stage) measured no faster on the sliding case and compiled slower.
    if setup.unrolled and not slots:
        def fn(t_, y_):
            o = sides(y_)
            f, values = _functions.field_and_values(model, data, y_, o, held, side=on)
            return clocked(t_, f), (values, o)

        y1, yerr, dense, fsal1, (E1, on_end) = erk_step(solver.tableau, fn, t, t_next, y, fsal,
                                                        jump)
    else:
        # (the held rows' first-layer part, once for the step's stages and its end)
        if not slots:
            first = None
        elif first is None:
            first = _sliding.first_rows(model, data, held)
        term = diffrax.ODETerm(lambda t_, y_, a: clocked(
            t_, _sliding.field(model, data, y_, sides(y_), held, slots, first=first)[0]))
        y1, yerr, dense, fsal1, _ = solver.step(term, t, t_next, y, None, fsal, jump)
        on_end = sides(y1)
        # the event values at the step's end, under the same choice of projection
        E1 = _functions.values(model, data, y1, on_end, held, slots, first, side=on)
    if setup.watch:  # the stiffness watch of solver="auto", from the step's own stages
        stiff = h_rho(solver.tableau, dense["k"]) > setup.stiff_limit
    err = error_ratio(y, y1, yerr, setup.rtol, setup.atol)
    return y1, t_next, yerr, err, dense, fsal1, E1, stiff, on_end


def attempt_implicit(setup, data, y, t, h, on, held, jump, fsal, save_index, slots: int = 0,
                     first=None):
    """One trial step of the frozen-pattern flow of a lane by the implicit solver of
    ``Auto(events=True)`` (Kvaerno5 with Newton iterations on the field's Jacobian,
    :meth:`gfsim.stiff.Auto.implicit`), cut as :func:`attempt` cuts; the same
    outputs (never stiff: the watch reads explicit steps). A step whose Newton iterations
    fail is rejected (an infinite error ratio).

    A lane that slides (``slots``, with its held set's first-layer rows ``first``) holds
    first-layer pairs only (:func:`gfsim.events._sliding.deep_held`): its field is the gradient
    projected off those rows by a constant projection P, so every stage stays on the affine
    manifold {z_K = 0} and the Newton systems ``(I + gamma h P H) dk = r`` are symmetric on its
    tangent space, where the right-hand sides and the conjugate-gradient iterates lie."""
    model = setup.model
    t_next = _step_end(setup, t, h, save_index)
    clocked = _clock(setup)
    if slots and first is None:
        first = _sliding.first_rows(model, data, held)
    term = diffrax.ODETerm(lambda t_, y_, a: clocked(t_, _sliding.field(
        model, data, y_, on, held, slots, first=first, deep=False)[0]))
    solver = setup.auto.implicit(setup.rtol, setup.atol, setup.controller.norm,
                                 scale=jnp.max(jnp.abs(y)))
    solver = eqx.tree_at(lambda s: s.scan_kind, solver, setup.implicit_scan_kind,
                         is_leaf=lambda x: x is None)
    y1, yerr, dense, fsal1, result = solver.step(term, t, t_next, y, None, fsal, jump)
    E1 = _functions.values(model, data, y1, on, held, slots, first, deep=False)
    err = error_ratio(y, y1, yerr, setup.rtol, setup.atol)
    err = jnp.where(result == diffrax.RESULTS.successful, err, jnp.inf)
    return y1, t_next, yerr, err, dense, fsal1, E1, jnp.zeros((), bool), on


def _step_end(setup, t, h, save_index):
    """Where a trial step of size ``h`` from ``t`` ends: at t1 and at the ``SAVE_SLOTS``-th
    pending save time at the latest."""
    ts = setup.ts
    S = ts.shape[0]
    t_next = jnp.minimum(t + h, setup.t1)
    last = save_index + SAVE_SLOTS - 1
    return jnp.where(last < S, jnp.minimum(t_next, ts[jnp.minimum(last, S - 1)]), t_next)


def _clock(setup):
    """The field in the loop's clock: under log time s = log(1 + t), f times dt/ds = e^s."""
    return lambda t_, f: jnp.exp(t_) * f if setup.log_time else f
