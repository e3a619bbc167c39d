"""The driver: the event-driven solve of a batch, one loop over all runs.

Each iteration, for every lane at once (see docs/nonsmooth.md):

1. a trial step of the frozen-pattern flow (sliding lanes: the projected field) with its error
   ratio and the event values at its end (:mod:`._step`);
2. if some event function fell below zero in an acceptable step, the first root on the dense
   output (:mod:`._locate`), the step cut there and the pattern changes applied: cross, slide or
   release (:mod:`._decide`);
3. after a change or a sliding step: the state projected back onto the held kinks
   (:mod:`._sliding`) and the event values and their offsets afresh;
4. the save times passed, interpolated from the dense output (:mod:`._saves`);
5. the next step size (:mod:`._control`), and the run's status: done at t1, at stop_loss or
   stop_grad, out of steps, non-finite;
6. with fewer lanes than runs, lanes whose run is done take the next pending run
   (:mod:`._refill`).

The costly branches (event location, the projection) run only on iterations where some run
needs them (one choice for the whole batch), so runs with different event counts do not
serialise the batch. Reverse-mode gradients go through the checkpointed loop.
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp

from .. import methods
from .._result import RawResult, final_status
from ..stiff import Auto, count_stiff, stability_boundary, steps_to_go
from ..trajectory import Status
from . import _control, _decide, _functions, _locate, _refill, _saves, _sliding, _step
from ._model import FrozenPattern, flatten
from ._state import Lanes, LoopState, Refill, RunRecord, select

# the main loop: checkpointed for reverse mode, a plain while loop for forward mode (jvp)
_LOOP_KIND = {"reverse": "checkpointed", "forward": "lax"}


class Setup:
    """What every part of one solve reads: the model, the solver, the batch's data and the
    problem's constants. Built at trace time (its arrays are traced); not a pytree."""

    def __init__(self, net, data, t1, ts, rtol, atol, stops, method, loss, reduction,
                 has_stop, batched, has_stop_grad=False, has_stop_plateau=False,
                 log_time=False, stiff_phase="off"):
        single = net if not batched else jax.tree_util.tree_map(lambda a: a[0], net)
        self.model = FrozenPattern(single, loss, reduction)
        if batched:
            self.theta0 = jax.vmap(lambda n: flatten(n)[0])(net)
        else:
            self.theta0 = flatten(net)[0][None]
            data = jax.tree_util.tree_map(lambda a: a[None], data)
        self.data = data  # leading run axis
        self.runs, self.params = self.theta0.shape
        self.points = data.X.shape[1]
        self.pairs = self.points * self.model.hsum
        # under log time the loop's clock is s = log(1 + t) (the field times e^s = 1 + t)
        self.log_time = log_time
        self.ts, self.t1 = (jnp.log1p(ts), jnp.log1p(t1)) if log_time else (ts, t1)
        self.stop_loss, self.stop_grad, self.stop_plateau = stops
        self.has_stop_plateau = has_stop_plateau
        # solver="auto" (gfsim.stiff.Auto): its explicit solver steps, watched; under
        # stiff_phase="explicit" a run whose steps are stability-limited (and that holds no
        # pair below the first hidden layer) ends the loop to be continued by the host with
        # stiff_phase="implicit", where such runs step implicitly until their next event (see
        # flow._finish_stiff)
        self.auto = method.solver if isinstance(method.solver, Auto) else None
        self.solver = self.auto.explicit if self.auto is not None else method.solver
        self.stiff_phase = stiff_phase if self.auto is not None else "off"
        self.error_order = self.solver.error_order(diffrax.ODETerm(lambda t, y, a: y))
        self.controller = _control.controller(method, rtol, atol)
        self.rtol, self.atol = self.controller.rtol, self.controller.atol
        self.unrolled = _step.unrolled(self.solver)
        # crossings="step": steps go through the crossings of free pairs (see methods.Events)
        self.stepping = method.crossings == "step"
        # the event search on the crossing functions' polynomials (None: on the net itself)
        self.nodes = _locate.node_count(self.model, self.solver, self.points)
        # (the implicit steps' dense output takes the explicit one's place: Kvaerno5 has 7
        # stages, as Tsit5 and Dopri5 do; another explicit solver steps explicitly throughout)
        self.watch = (self.stiff_phase != "off" and self.unrolled
                      and self.solver.tableau.num_stages == 7)
        self.implicit_steps = self.watch and self.stiff_phase == "implicit"
        if self.watch:
            self.stiff_limit = self.auto.threshold * stability_boundary(self.solver.tableau)
            # (only its dense output is used: the implicit steps' interpolation for saves)
            self.auto_implicit_dense = diffrax.Kvaerno5()
        # dense rows for held pairs below the first hidden layer (see _sliding)
        self.slots = method.max_sliding or methods.SLIDING_START
        self.max_steps = method.max_steps
        self.has_stop = has_stop
        self.has_stop_grad = has_stop_grad
        self.adjoint = "forward" if isinstance(method.adjoint, diffrax.ForwardMode) else "reverse"
        if self.adjoint == "forward" and hasattr(self.solver, "scan_kind"):
            # the stages' loop (Diffrax's own step, on sliding steps) must support jvp too
            self.solver = eqx.tree_at(lambda s: s.scan_kind, self.solver, "lax",
                                      is_leaf=lambda x: x is None)
        self.implicit_scan_kind = "lax" if self.adjoint == "forward" else "bounded"
        self.lanes = self.runs if method.lanes is None else min(int(method.lanes), self.runs)
        self.refill = self.lanes < self.runs

    def wall(self, s):
        """The time t of the loop's clock value ``s``."""
        return jnp.expm1(s) if self.log_time else s

    def by_projection(self, flag, fn):
        """fn(slots) if any run slides, else fn(0): one choice for the whole batch, so the
        projection's cost (a backward pass per slot) is paid only on iterations where some run
        needs it. (Tiers of slots, e.g. 4 while no run holds more, gained 6% on W-B and cost a
        third more compile time: every branch is one more trace.)"""
        return jax.lax.cond(flag, lambda: fn(self.slots), lambda: fn(0))

    def event_values(self, theta, on, held, slots, data, first=None):
        """The event values of every lane (``first``: the lanes' held rows' first-layer part,
        or None)."""
        m = self.model
        return jax.vmap(lambda th, o, h, d, f: _functions.values(m, d, th, o, h, slots, f))(
            theta, on, held, data, first)


# crossings="step": how many accepted steps locate their crossings after a kink the lane could
# not step through
LOCATE_STEPS = 8

# crossings="step": a step whose flipped pair is pushed back at fraction >= CUT_FRAC of it is
# taken again to CUT_SHORT times that fraction
CUT_FRAC = 0.05
CUT_SHORT = 0.99

# the status of a run that the explicit phase hands to the implicit one (never returned)
HANDED_OVER = -1


class _ProgressMeter(diffrax.TqdmProgressMeter):
    """Diffrax's tqdm bar, closed at the loop's last reading (Diffrax's own close sets it to
    100%, but a run handed over to the implicit phase stops short of t1)."""

    @staticmethod
    def _close_bar(bar):
        bar.close()

    def finish(self, state, progress):
        """Show ``progress`` (bypassing the refresh interval), then close."""
        state = eqx.tree_at(lambda s: s.step, state, jnp.zeros_like(state.step))
        self.close(self.step(state, progress))


def start_lanes(setup: Setup, theta0, data, resume=None) -> Lanes:
    """The starting state of a batch of lanes: each pair on the side its pre-activation is on,
    none held (a resumed lane: its held set), the event values and the first step size.

    A pair that starts exactly at its kink (z = 0) starts off. Its crossing function is then
    the slack alone, so if the flow pushes it onto its positive side, the first step finds the
    root at its very start and the pair crosses or slides like any other; if the flow pushes it
    further off, nothing happens. No decision (and no projection) is needed before the loop, so
    the loop's own event handling is the only one compiled.

    ``resume``: lanes that go on from where the explicit phase handed them over (their clock
    time ``t``, state ``y``, pattern ``on``, held set ``held``, start loss ``loss0`` and
    counters; a lane is handed over only while it holds no pair below the first hidden layer),
    stepping implicitly."""
    m = setup.model
    B, P = theta0.shape[0], setup.pairs
    # (a resumed held set: projected, with first-layer rows only)
    slots = setup.slots if resume is not None else 0
    if resume is not None:
        theta0 = resume["y"]

    def one(theta, d, on=None, t0=None, held=None):
        net = eqx.combine(m.unravel(theta), m.skeleton)
        if on is None:
            on = jnp.concatenate(net.preactivations(d.X)[:-1], axis=-1).reshape(-1) > 0
        if held is None:
            held = jnp.zeros(P, bool)
        values = _functions.values(m, d, theta, on, held, slots, deep=False)
        clocked = _step._clock(setup)  # (a resumed lane's first step at its own time)
        term = diffrax.ODETerm(lambda t, y, a: clocked(
            t, _sliding.field(m, d, y, on, held, slots, deep=False)[0]))
        h0, cstate = _control.initial_step(setup, term, theta, d, t0)
        # a start whose loss or gradient is not finite (an overflowing init) is done at once:
        # it would reject every step at t = 0 until the budget ran out, holding the batch up
        loss0 = m.true_loss(theta, d)
        finite = jnp.isfinite(loss0) & jnp.all(
            jnp.isfinite(_sliding.field(m, d, theta, on, held, 0)[0]))
        return on, values, h0, cstate, finite, loss0

    if resume is None:
        on0, E, h0, cstate0, finite0, loss0 = jax.vmap(one)(theta0, data)
        t0 = jnp.zeros((B,), theta0.dtype)
        held0 = jnp.zeros((B, P), bool)
    else:
        t0, loss0, held0 = resume["t"], resume["loss0"], resume["held"]
        on0, E, h0, cstate0, finite0, _ = jax.vmap(one)(theta0, data, resume["on"], t0, held0)
    E0, Eoff0 = _functions.rebase(E)
    zeros = jnp.zeros((B,), jnp.int32)
    S0 = jnp.sum(setup.ts[None, :] <= t0[:, None], axis=1).astype(jnp.int32)
    dummy = diffrax.ODETerm(lambda t, y, a: y)
    return Lanes(
        t=t0,
        y=theta0,
        h=h0,
        controller_state=cstate0,
        on=on0,
        held=held0,
        event_values=E0,
        event_offsets=Eoff0,
        jump=jnp.ones((B,), bool),
        first_stage=jax.vmap(lambda th: setup.solver.init(dummy, 0.0, 1.0, th, None))(theta0),
        done=~finite0,
        status=jnp.where(finite0, int(Status.REACHED_T1), int(Status.NONFINITE)).astype(
            jnp.int32),
        # (a resumed lane goes on counting: max_steps is the run's budget, both phases)
        **{k: zeros if resume is None else resume[k].astype(jnp.int32)
           for k in ("steps", "accepted", "rejected", "crossings", "slides")},
        save_index=S0,
        loss0=loss0,
        watch=jnp.zeros((B, 2), theta0.dtype),
        implicit=jnp.full((B,), resume is not None),
        located=jnp.zeros((B,), jnp.int32),
        kink_calm=jnp.full((B,), _control.KINK_MEMORY, jnp.int32),
    )


def _cut_at_events(setup: Setup, s: Lanes, data, t_next, y1, dense, trig, has_ev, E1):
    """If any lane has an event: locate the first root (with the projection only if some lane
    slides and has a release event), cut the step there and apply the pattern changes (with the
    projection if some lane slides). Returns t_end, y_end, on, held and the
    numbers of crossings and captures per lane."""
    m, solver = setup.model, setup.solver
    P = setup.pairs
    zeros_L = jnp.zeros(s.t.shape, jnp.int32)

    def locate(slots):
        def one(t0_, t1_, dn, on, held, d, tr, Ea, Eb, off):
            interp = lambda tau: _saves.interpolate(  # noqa: E731
                solver, t0_, t1_, dn, t0_ + tau * (t1_ - t0_))
            return _locate.first_root(m, d, interp, on, held, tr, Ea, Eb, off, slots)

        return jax.vmap(one)(s.t, t_next, dense, s.on, s.held, data, trig, s.event_values, E1,
                             s.event_offsets)

    def locate_nodes():
        # the crossing functions as polynomials on the dense output (the search on the net
        # if some run's pairs were negative at its root after every round)
        def one(t0_, t1_, dn, on, held, d, tr, Ea, Eb, off):
            interp = lambda tau: _saves.interpolate(  # noqa: E731
                solver, t0_, t1_, dn, t0_ + tau * (t1_ - t0_))
            return _locate.first_root_nodes(m, d, interp, on, held, tr, Ea, Eb, off,
                                            setup.nodes)

        *found, over = jax.vmap(one)(s.t, t_next, dense, s.on, s.held, data, trig,
                                     s.event_values, E1, s.event_offsets)
        return jax.lax.cond(jnp.any(over & has_ev), lambda: locate(0), lambda: tuple(found))

    def cut_and_apply(sliding):
        # Only the release events (lambda reaching its bounds) need the projection in the
        # search; when no run has one triggered, the search evaluates the pre-activations alone.
        need_lam = sliding & jnp.any(trig[:, P:])
        tau, tr, e_end = jax.lax.cond(
            need_lam, lambda: locate(setup.slots),
            locate_nodes if setup.nodes else lambda: locate(0))
        tau = jnp.where(has_ev, tau, 1.0)
        t_end = jnp.where(has_ev, s.t + tau * (t_next - s.t), t_next)
        y_end = jnp.where(
            has_ev[:, None],
            jax.vmap(lambda a, b, dn, q: _saves.interpolate(solver, a, b, dn, q))(
                s.t, t_next, dense, t_end),
            y1)

        def apply(slots):
            # the values the search computed apply when it used the same projection (none)
            e = None if slots else e_end
            return jax.vmap(
                lambda y, o, h, tr_, d, off, ev: _decide.apply(m, d, y, o, h, tr_, off, ev,
                                                               slots),
                in_axes=(0, 0, 0, 0, 0, 0, None if e is None else 0),
            )(y_end, s.on, s.held, tr, data, s.event_offsets, e)

        return (t_end, y_end) + setup.by_projection(sliding, apply)

    def no_event_branch():
        return t_next, y1, s.on, s.held, zeros_L, zeros_L

    sliding = jnp.any(s.held & ~s.done[:, None])
    return jax.lax.cond(jnp.any(has_ev), lambda: cut_and_apply(sliding), no_event_branch)


def _refresh(setup: Setup, s: Lanes, data, y_new, on_new, held_new, fresh, still, firsts):
    """After events and sliding steps: the projection back onto the held kinks, and the event
    values and offsets afresh.

    A pair whose state changed here (crossed, captured, released) and that sits a hair on the
    wrong side of its new surface (the projection moves every pair by up to the drift it
    corrects) gets an offset: its next search starts strictly positive. Every other pair keeps
    its offset until it is back on its side; one that has gone past it (further to the wrong
    side than the offset allows: it drifted there, or a projection moved it) has its pattern
    set to the side its pre-activation is on, and the event values are evaluated afresh.
    (Refreshing every offset at every event let a pair that drifts the wrong way push its
    threshold ahead of it for good, with the pattern wrong and the loss rising.)

    ``firsts``: the lanes' first-layer rows of the iteration's start held set (:func:`held_rows`),
    used where no lane's held set changed."""
    m = setup.model
    P = setup.pairs

    def after_change(slots):
        yp = y_new
        first = None
        if slots:
            # (the new held set's first-layer rows, once for the projection and the values)
            # (built afresh only on iterations where some lane's held set changed)
            first = jax.lax.cond(
                jnp.any(held_new != s.held),
                lambda: _lanes_first_rows(m, data, held_new), lambda: firsts)
            yp = jnp.where(
                still[:, None],
                jax.vmap(lambda y, o, hl, d, f: _sliding.project(m, d, y, o, hl, slots, f))(
                    y_new, on_new, held_new, data, first),
                y_new,
            )
        return yp, setup.event_values(yp, on_new, held_new, slots, data, first)

    any_held = jnp.any(held_new)
    yp, raw = setup.by_projection(any_held, after_change)
    off_old = s.event_offsets
    same = (on_new == s.on) & (held_new == s.held)  # pairs this event left alone
    # (a held pair's crossing function is +inf: only free pairs can be past)
    past = fresh[:, None] & same & (raw[:, :P] + off_old[:, :P] < 0)

    def reflip():
        on2 = on_new ^ past
        return on2, setup.by_projection(
            any_held, lambda pr: setup.event_values(yp, on2, held_new, pr, data))

    on2, raw = jax.lax.cond(jnp.any(past), reflip, lambda: (on_new, raw))
    # (kind by kind, each (lanes, P) with its mask: tiling the masks to 3P and selecting once
    # cost six times as much at n = 1000, the broadcast defeating the CPU's vector loops)
    changed = ~same | past
    # after a flip, the pairs downstream of it at the same point moved by as much as the
    # flipped one was off: those that went past their offset are bounced too (crossings only)
    moved = fresh[:, None] & (raw[:, :P] + off_old[:, :P] < 0)

    def kind(k, mask):
        r, o = raw[:, k * P:(k + 1) * P], off_old[:, k * P:(k + 1) * P]
        return jnp.where(mask, _functions.rebase(r)[1], jnp.where(r >= 0, 0.0, o))

    off = jnp.concatenate([kind(0, changed | moved), kind(1, changed), kind(2, changed)], axis=1)
    return yp, on2, raw + off, off, jnp.sum(past, axis=1).astype(jnp.int32)


def _lanes_first_rows(m, data, held):
    """:func:`gfsim.events._sliding.first_rows` of each lane's held set."""
    return jax.vmap(lambda d, hl: _sliding.first_rows(m, d, hl))(data, held)


def held_rows(setup: Setup, data, held):
    """The lanes' first-layer rows of their held sets (:func:`gfsim.events._sliding.first_rows`:
    a nonzero search, a gather, Gram blocks and their inverses), built on iterations where some
    lane holds pairs (zeros otherwise, unused): the trial step, the kinks it went through and
    the refresh share them, where each built its own (three times per sliding iteration)."""
    def build():
        return _lanes_first_rows(setup.model, data, held)

    shapes = jax.eval_shape(build)
    return jax.lax.cond(jnp.any(held), build, lambda: jax.tree_util.tree_map(
        lambda a: jnp.zeros(a.shape, a.dtype), shapes))


def _iterate(setup: Setup, state: LoopState) -> LoopState:
    """One iteration of the loop over all lanes."""
    s = state.lanes
    P = setup.pairs
    data = state.refill.data if setup.refill else setup.data  # each lane's dataset
    active = ~s.done
    sliding = jnp.any(s.held & active[:, None])
    # crossings="step": the lanes whose step goes through crossings (a sliding lane's too, on
    # its projected field), not while it locates after a kink it could not take (located > 0;
    # -1: a step cut short before a pair that would slide, the one after it located)
    through_lane = active & (s.located <= 0)
    if setup.implicit_steps:
        through_lane = through_lane & ~s.implicit

    firsts = held_rows(setup, data, s.held)

    # 1. the trial step
    def trial(slots):
        return jax.vmap(
            lambda y, t, h, o, hl, j, f, i, d, off, ad, fr: _step.attempt(
                setup, d, y, t, h, o, hl, j, f, i, slots, off, ad, fr)
        )(s.y, s.t, s.h, s.on, s.held, s.jump, s.first_stage, s.save_index, data,
          s.event_offsets, through_lane, firsts)

    out = setup.by_projection(sliding, trial)
    if setup.implicit_steps:
        # lanes that step implicitly (Auto(events=True), stiff between events; a held set
        # of first-layer pairs only, projected): their trial step is Kvaerno5's, on iterations
        # where some lane needs it
        implicit = s.implicit & active

        def with_implicit(out):
            def run(slots):
                return jax.vmap(
                    lambda y, t, h, o, hl, j, f, i, d, fr: _step.attempt_implicit(
                        setup, d, y, t, h, o, hl, j, f, i, slots, fr)
                )(s.y, s.t, s.h, s.on, s.held, s.jump, s.first_stage, s.save_index, data,
                  firsts)

            imp = setup.by_projection(jnp.any(s.held & implicit[:, None]), run)
            return select(implicit, imp, out)

        out = jax.lax.cond(jnp.any(implicit), with_implicit, lambda o: o, out)
    y1, t_next, yerr, err, dense, fsal1, E1, stiff, on_end = out
    E1 = E1 + s.event_offsets
    if setup.stepping:
        # crossings="step": the kinks a step went through add their error (only on iterations
        # where some lane's step flipped a pair)
        flips = (on_end != s.on) & through_lane[:, None]
        n_flips = jnp.sum(flips, axis=1)
        smooth_ok = err <= 1.0

        def kinks():
            def run(slots):
                return jax.vmap(
                    lambda y, t, tn, o, oe, hl, d, e0, e1, fr: _step.through(
                        setup, d, y, t, tn - t, o, oe, hl, e0, e1, slots, fr)
                )(y1, s.t, t_next, s.on, on_end, s.held, data, s.event_values, E1, firsts)

            kink, back, back_frac = setup.by_projection(sliding, run)
            return kink, back & through_lane, back_frac

        kink, back, back_frac = jax.lax.cond(
            jnp.any(flips), kinks,
            lambda: (jnp.zeros_like(y1), jnp.zeros(s.t.shape, bool), jnp.ones_like(s.t)))
        yerr = jnp.abs(yerr) + jnp.abs(kink)
        err = jax.vmap(lambda a, b, e: _step.error_ratio(a, b, e, setup.rtol, setup.atol))(
            s.y, y1, yerr)
    # the PI rule (EventController.sliding_rule) for lanes at kinks: holding pairs, or (under
    # crossings="step") stepping through kinks - this trial step or one of the last
    # KINK_MEMORY accepted ones went through some: there a step's error grows like h with the
    # kinks it meets and the I rule cycles between accepting and rejecting. The I rule
    # elsewhere (the stiffness watch reads its overshoots of the stability boundary).
    at_kinks = jnp.any(s.held, axis=1)
    if setup.stepping:
        at_kinks = at_kinks | (n_flips > 0) | (s.kink_calm < _control.KINK_MEMORY)
    keep, h_next, cstate = jax.vmap(lambda h, y0, y1_, ye, cs, holds: _control.adapt(
        setup, h, y0, y1_, ye, cs, holds))(
        s.h, s.y, y1, yerr, s.controller_state, at_kinks)
    ok = keep & jnp.isfinite(err) & jnp.all(jnp.isfinite(y1), axis=1) & active
    trig = (E1 < 0) & (E1 < s.event_values) & ok[:, None]
    located, n_through = s.located, jnp.zeros(s.t.shape, jnp.int32)
    if setup.stepping:
        # a lane that stepped through crossings keeps the step unless a kink must be located: a
        # flipped pair that would slide, or kinks whose error failed the step where locating
        # them one by one is cheaper than shrinking the step (the kink error goes like h:
        # shrinking takes about err steps, locating one per kink)
        kinky = ~keep & smooth_ok & (n_flips > 0) & jnp.isfinite(err)
        # (and a release in a step through kinks: it is located on a step that flips none)
        released = jnp.any(trig[:, P:], axis=1) & (n_flips > 0)
        locate = through_lane & jnp.isfinite(err) & (
            back | released | (kinky & (err >= n_flips)))
        # shrinking for the kinks: the error is linear in h for a kink, not of the solver's order
        h_next = jnp.where(through_lane & kinky & ~locate, jax.lax.stop_gradient(
            jnp.minimum(h_next, 0.9 * s.h / jnp.maximum(err, 1.0))), h_next)
        # a pair pushed back: the step again, ending just before that pair's crossing (the
        # crossings before it stepped through), and the step after it located; one pushed
        # back right at the start: the same step again, located
        cut = locate & back & (back_frac >= CUT_FRAC)
        # (the fraction is of the step taken, which t1 or a save time may have cut short of h)
        h_next = jnp.where(locate, jnp.where(cut, CUT_SHORT * back_frac * (t_next - s.t), s.h),
                           h_next)
        ok = ok & ~locate
        n_through = jnp.where(ok & through_lane, n_flips, 0).astype(jnp.int32)
        on_through = jnp.where((ok & through_lane)[:, None], s.on ^ flips, s.on)
        # (its crossings are taken, not searched)
        trig = trig.at[:, :P].set(trig[:, :P] & ~through_lane[:, None]) & ok[:, None]
        # after kinks whose error it could not step through, a lane locates its next
        # LOCATE_STEPS accepted steps' crossings (sparse kinks fail one by one: stepping
        # through the next one at once would fail again); after a slide, the one step
        located = jnp.where(
            locate, jnp.where(cut, -1, jnp.where(back | released, 1, LOCATE_STEPS)),
            jnp.where(ok, jnp.where(s.located < 0, 1, jnp.maximum(s.located - 1, 0)),
                      s.located))
    has_ev = jnp.any(trig, axis=1)
    implicit_now = s.implicit
    if setup.implicit_steps:
        # an implicit step is not used to locate an event (its dense output is only cubic):
        # the lane goes back to explicit steps from where it is, a tenth of the step size, and
        # the watch starts again
        back = s.implicit & has_ev
        ok = ok & ~back
        trig = trig & ~back[:, None]
        has_ev = has_ev & ~back
        implicit_now = s.implicit & ~back
        h_next = jnp.where(back, 0.1 * s.h, h_next)

    # 2. events: locate, cut, decide
    t_end, y_new, on_new, held_new, n_cross, n_slide = _cut_at_events(
        setup, s, data, t_next, y1, dense, trig, has_ev, E1)
    # keep the changes of runs with an event only (the release pass of decide runs on every
    # run of the event branch)
    on_new = jnp.where(has_ev[:, None], on_new, on_through if setup.stepping else s.on)
    held_new = jnp.where(has_ev[:, None], held_new, s.held)

    # 3. back onto {z_K = 0}: after an accepted sliding step, and after a new capture (and
    # after crossings stepped through, the offsets of the flipped pairs afresh)
    still = ok & jnp.any(held_new, axis=1)
    fresh = has_ev | still | (n_through > 0)
    y_new, on_new, E_new, off_new, n_flip = jax.lax.cond(
        jnp.any(fresh),
        lambda: _refresh(setup, s, data, y_new, on_new, held_new, fresh, still, firsts),
        # (no run with an event or a projection: the values at the step's end, offsets kept)
        lambda: (y_new, on_new, E1, s.event_offsets, jnp.zeros_like(n_cross)))
    n_cross = n_cross + n_flip + n_through

    # 4. saves in (t, t_end]
    rows = state.refill.run_of_lane if setup.refill else jnp.arange(setup.lanes)
    saves, saved_held, save_index = _saves.record(
        setup, s, t_next, t_end, dense, y_new, has_ev, ok, state.saves, state.saved_held, rows,
        implicit=s.implicit if setup.implicit_steps else None)

    # 5. step size and status
    h_new = jnp.where(active, h_next, s.h)
    # the controller's history (the PI rule's last error) moves on steps taken in full only: not
    # on a step the solver took back (an implicit one at an event, a non-finite end), nor on one
    # cut short at t1 or a save time, whose error is not that of the proposed h
    cstate = select(ok & (t_next >= s.t + s.h), cstate, s.controller_state)  # (ok: active)
    t_new = jnp.where(ok, t_end, s.t)
    moved = Lanes(
        t=t_new, y=y_new, h=h_new, controller_state=cstate, on=on_new, held=held_new,
        # (a pair re-flipped by the refresh: the FSAL value is the field under the old sides)
        event_values=E_new, event_offsets=off_new, jump=has_ev | still | (n_flip > 0),
        first_stage=fsal1,
        done=s.done, status=s.status, steps=s.steps, accepted=s.accepted, rejected=s.rejected,
        crossings=s.crossings + n_cross, slides=s.slides + n_slide, save_index=save_index,
        loss0=s.loss0, watch=s.watch, implicit=s.implicit, located=located,
        kink_calm=(jnp.where(n_flips > 0, 0, jnp.minimum(s.kink_calm + 1, _control.KINK_MEMORY))
                   if setup.stepping else s.kink_calm))
    if setup.watch:  # accepted explicit steps count (implicit ones as calm)
        moved = moved.replace(watch=count_stiff(s.watch, stiff & ~s.implicit))
    # an accepted step moves the lane; a rejected one keeps its state (but its new step size
    # and its save index, and a lane gone back to explicit steps its new mode)
    new = moved.where(ok, s).replace(h=h_new, controller_state=cstate, save_index=save_index,
                                     located=located)
    if setup.implicit_steps:
        gone_back = s.implicit & ~implicit_now
        # (and the explicit step evaluates its first stage afresh: Kvaerno5's FSAL value is
        # its Newton solution, f(y) only to the Newton tolerance)
        new = new.replace(implicit=implicit_now, jump=new.jump | gone_back,
                          watch=jnp.where(gone_back[:, None], 0.0, new.watch))
    new = _outcome(setup, new, s, active, ok, err, data)
    if setup.watch:
        # stiff for `patience` accepted steps, holding no pair below the first hidden layer:
        # implicit steps from here (the explicit phase alone hands the run over to the host
        # instead). A held set of first-layer pairs keeps the implicit stages on its affine
        # manifold (attempt_implicit); a deeper pair's kink is curved, and a long implicit
        # step on the unprojected field left the held kinks by more than the projection back
        # onto them could take without moving free pairs across theirs (measured: a sliding
        # tail took 23,418 crossings where explicit steps took 176)
        due = (~new.done & ~new.implicit & (new.watch[:, 0] >= setup.auto.patience)
               & ~_sliding.deep_held(setup.model, new.held)
               & (steps_to_go(new.t, new.h, setup.t1) > setup.auto.horizon))
        if setup.implicit_steps:
            new = new.replace(implicit=new.implicit | due,
                              watch=jnp.where(due[:, None], 0.0, new.watch))
        else:
            new = new.replace(done=new.done | due,
                              status=jnp.where(due, HANDED_OVER, new.status))
    state = state.replace(lanes=new, saves=saves, saved_held=saved_held,
                          iteration=state.iteration + 1)
    if not setup.refill:
        return state
    return jax.lax.cond(
        jnp.any(new.done & (state.refill.run_of_lane < setup.runs)),
        lambda st: _refill.store_and_load(setup, st, lambda th, d: start_lanes(setup, th, d)),
        lambda st: st, state)


def _outcome(setup: Setup, new: Lanes, old: Lanes, active, ok, err, data) -> Lanes:
    """Counters, and which lanes are done and why."""
    steps = old.steps + active
    done = old.done | (ok & (new.t >= setup.t1))
    status = old.status
    overflow = _sliding.overflow(setup.model, new.held, setup.slots)
    status = jnp.where(active & overflow, int(Status.SLIDING_CAPACITY), status)
    # a step that cannot be made finite at any step size the clock can still resolve (relative
    # to t, not t1: a long log-time run overflowing on a trial step is just rejected)
    nonfinite = active & ~jnp.isfinite(err) & (
        new.h < jnp.maximum(1e-13 * jnp.abs(old.t), jnp.finfo(old.t.dtype).tiny))
    status = jnp.where(nonfinite, int(Status.NONFINITE), status)
    m = setup.model
    if setup.has_stop or setup.has_stop_plateau:  # the loss on the lanes' patterns, once
        lval = jax.vmap(lambda y, o, hl, d: m.loss(y, d, m.slopes(o, hl)))(
            new.y, new.on, new.held, data)
    if setup.has_stop:
        hit_stop = active & ok & (lval < setup.stop_loss) & ~done
        status = jnp.where(hit_stop, int(Status.STOP_LOSS), status)
        done = done | hit_stop
    if setup.has_stop_grad or setup.has_stop_plateau:
        def speed(slots):
            return jax.vmap(lambda y, o, hl, d: jnp.linalg.norm(
                _sliding.field(m, d, y, o, hl, slots)[0]))(new.y, new.on, new.held, data)

        # the norm of the field the flow follows (the sliding field while pairs slide)
        v = setup.by_projection(jnp.any(new.held & active[:, None]), speed)
    if setup.has_stop_grad:
        hit_grad = active & ok & (v < setup.stop_grad) & ~done
        status = jnp.where(hit_grad, int(Status.STOP_GRAD), status)
        done = done | hit_grad
    if setup.has_stop_plateau:
        # the loss's relative decrease per decade, ln10 t |v|^2 / L (as under method="plain"),
        # once the loss has come down 1% from the run's start
        rate = math.log(10.0) * setup.wall(new.t) * v ** 2 / jnp.abs(lval)
        hit_plat = active & ok & (lval < 0.99 * new.loss0) & (rate < setup.stop_plateau) & ~done
        status = jnp.where(hit_plat, int(Status.PLATEAU), status)
        done = done | hit_plat
    done = done | (active & (overflow | nonfinite))
    exhausted = active & ~done & (steps >= setup.max_steps)
    status = jnp.where(exhausted, int(Status.MAX_STEPS), status)
    done = done | exhausted
    return new.replace(done=done, status=status, steps=steps, accepted=old.accepted + ok,
                       rejected=old.rejected + (active & ~ok))


def solve_events(net, data, t1, ts, rtol, atol, stops, method, *, loss, reduction,
                 has_stop: bool, has_stop_grad: bool = False, batched: bool,
                 progress: bool = False, has_stop_plateau: bool = False,
                 log_time: bool = False, stiff_phase: str = "off", resume=None):
    """Event-driven solve of a batch (leading run axis on net and data when ``batched``).
    ``method``: a :class:`gfsim.methods.Events`; ``stops``: the (stop_loss, stop_grad,
    stop_plateau) thresholds; ``has_stop``, ``has_stop_grad``, ``has_stop_plateau``: whether each
    applies; ``log_time``: the loop's clock is s = log(1 + t). Under ``solver="auto"``,
    ``stiff_phase``: ``"off"`` (explicit steps only), ``"explicit"`` (runs that turn stiff
    end with status HANDED_OVER and their state in the second output) or ``"implicit"`` (the
    runs go on from ``resume``, that state, stepping implicitly until an event).
    Returns the RawResult and the hand-over state (None unless ``"explicit"``)."""
    setup = Setup(net, data, t1, ts, rtol, atol, stops, method, loss, reduction, has_stop,
                  batched, has_stop_grad, has_stop_plateau, log_time, stiff_phase)
    R, L, S, p, P = setup.runs, setup.lanes, ts.shape[0], setup.params, setup.pairs
    m = setup.model
    if resume is not None and not batched:
        resume = jax.tree_util.tree_map(lambda a: a[None], resume)
    lanes0 = start_lanes(setup, setup.theta0[:L], _refill.take(setup.data, jnp.arange(L)),
                         resume)
    rid0 = jnp.arange(L, dtype=jnp.int32)
    saves0, saved_held0 = _saves.put_start(setup, jnp.full((R, S, p), jnp.nan, setup.theta0.dtype),
                                           jnp.zeros((R, S, P), bool), rid0, lanes0)
    refill = None
    if setup.refill:
        refill = Refill(data=_refill.take(setup.data, jnp.arange(L)), run_of_lane=rid0,
                        next_run=jnp.asarray(L, jnp.int32),
                        record=RunRecord.empty(lanes0, R))
    meter = _ProgressMeter() if progress else None
    state0 = LoopState(lanes=lanes0, saves=saves0, saved_held=saved_held0,
                       iteration=jnp.zeros((), jnp.int32), refill=refill,
                       progress=None if meter is None else meter.init())

    def share(st):
        # the slowest lane's share of t1 (runs not yet loaded into a lane count as 0; a run
        # handed over to the implicit phase where it stopped: that phase's bar goes on from it)
        lanes = st.lanes
        finished = lanes.done & (lanes.status != HANDED_OVER)
        frac = jnp.min(jnp.where(finished, 1.0, lanes.t / setup.t1))
        if setup.refill:
            frac = jnp.where(st.refill.next_run < R, 0.0, frac)
        return frac

    def body(st):
        st = _iterate(setup, st)
        if meter is None:
            return st
        return st.replace(progress=meter.step(st.progress, share(st)))

    final = eqxi.while_loop(
        lambda st: ~jnp.all(st.lanes.done),
        body,
        state0,
        # with refill, list scheduling ends by (sum of run lengths) / L + the longest run
        max_steps=(setup.max_steps + 1) * ((-(-R // L) + 1) if setup.refill else 1),
        kind=_LOOP_KIND[setup.adjoint],
    )
    runs = final.refill.record if setup.refill else final.lanes  # per run
    if meter is not None:
        # the last reading over every run (with refill, lanes hold only their last run)
        last = jnp.min(jnp.where(runs.status != HANDED_OVER, 1.0, runs.t / setup.t1))
        meter.finish(final.progress, jax.lax.stop_gradient(last))

    def finish(theta, ys, on, held, d):
        losses = jax.vmap(lambda y: m.true_loss(y, d))(ys)
        fl = m.true_loss(theta, d)
        g = jax.grad(m.loss)(theta, d, m.slopes(on, held))
        return losses, fl, jnp.isfinite(fl) & jnp.all(jnp.isfinite(g))

    losses, final_loss, finite = jax.vmap(finish)(runs.y, final.saves, runs.on, runs.held,
                                                  setup.data)
    saved = eqx.combine(jax.vmap(jax.vmap(m.unravel))(final.saves), m.skeleton)
    end = eqx.combine(jax.vmap(m.unravel)(runs.y), m.skeleton)
    t_final = jnp.where(runs.t >= setup.t1, t1, setup.wall(runs.t))
    out = RawResult(
        loss=losses, weights=saved.weights, biases=saved.biases, final_weights=end.weights,
        final_loss=final_loss, t_final=t_final, status=final_status(runs.status, finite),
        num_steps=runs.steps, num_accepted=runs.accepted, num_rejected=runs.rejected,
        num_crossings=runs.crossings, num_slides=runs.slides,
        sliding=m.split_pairs(final.saved_held, setup.points), loop_steps=final.iteration)
    handed = None
    if setup.stiff_phase == "explicit":
        over = runs.status == HANDED_OVER
        out = eqx.tree_at(lambda r: r.t_stiff, out,
                          jnp.where(over, setup.wall(jnp.where(over, runs.t, 0.0)), jnp.nan),
                          is_leaf=lambda x: x is None)
        handed = {k: getattr(runs, k) for k in (
            "t", "y", "on", "held", "loss0", "steps", "accepted", "rejected", "crossings",
            "slides")}
    elif setup.stiff_phase == "implicit":
        out = eqx.tree_at(lambda r: r.t_stiff, out, setup.wall(resume["t"]),
                          is_leaf=lambda x: x is None)
    if not batched:
        out = jax.tree_util.tree_map(lambda a: a[0] if a.ndim else a, out)
        handed = None if handed is None else jax.tree_util.tree_map(lambda a: a[0], handed)
    return out, handed
