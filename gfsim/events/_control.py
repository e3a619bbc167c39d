"""Step-size control of the event-driven solve: a Diffrax step-size controller, per run.

The solver calls the controller's own ``init`` (the first step) and ``adapt_step_size`` (accept
or reject a trial step, and the next step size), so any :class:`diffrax.PIDController` works
here exactly as it does in ``method="plain"``: give ``Events(controller=PIDController(...))``
and ``Plain(controller=...)`` the same object and a tolerance means the same under both (a flow
that never reaches a kink then takes the very steps of Diffrax's ``diffeqsolve``, as long as no
step spans more than ``SAVE_SLOTS`` save times: the event solver cuts a step there).

The default of the event solver is :class:`EventController`, a ``PIDController`` with the rule
the event solver is tuned and tested with: an accepted step may also shrink (by
``0.9 err^(-1/q)``, at least 0.2), a rejected one shrinks by 0.1 to 0.9, and the first step is
the first half of Hairer's heuristic; while a run is at kinks - it holds pairs on their kinks,
or (``crossings="step"``) its steps go through kinks: the trial step or one of the last
:data:`KINK_MEMORY` accepted ones flipped pairs - its accepted steps take Diffrax's PI rule
instead (``pcoeff = 0.4``, ``icoeff = 0.3``), which damps the accept/reject cycle of
stability-limited sliding tails (the sliding seed of W-E quick: 4385 steps, 2260 rejected,
under the I rule; 3422, 1314 under this default) and of steps through dense crossings, whose
error grows like h with the kinks they meet (a depth-6 teacher-student run of the quick depth
experiment: 1629 steps, 824 rejected, under the I rule; 1171, 354). Elsewhere runs keep the I
rule: the stiffness watch of ``solver="auto"`` reads its steps' overshoots of the stability
boundary (under PI throughout, a ReLU tail switched to implicit steps at t = 79 instead of 41:
1083 steps against 604). Diffrax's own rule never shrinks an accepted step; on the event solver
it takes 10-12 % more steps on W-A and 4-16 % more on W-B at matched accuracy (see
docs/nonsmooth.md).

The trial step is proposed as ``h``; the solver may cut it shorter (at t1, at a save time, at
an event), but the controller adapts ``h`` itself, so a cut step does not shrink the next one.
"""

from __future__ import annotations

import dataclasses

import diffrax
import jax
import jax.numpy as jnp


# crossings="step": a lane's accepted steps keep the PI rule (EventController.sliding_rule) for
# this many accepted steps after the last one that went through kinks
KINK_MEMORY = 6


class EventController(diffrax.PIDController):
    """The event solver's default step-size rule, as a :class:`diffrax.PIDController` (so it can
    also be given to ``method="plain"``). An accepted step's factor is Diffrax's PID rule
    without its D part, ``safety * err^(-(pcoeff + icoeff)/q) * err_prev^(pcoeff/q)``, with
    ``q`` the solver's error order (Diffrax's; 5 for Tsit5) and ``err_prev`` the error ratio of
    the last accepted step, clipped to [0.2, ``factormax``] (so an accepted step may also
    shrink); a rejected step's is the I rule ``safety * err^(-1/q)``, clipped to [0.1,
    ``safety``]; 0.1 when the error is not finite. ``pcoeff``, ``icoeff``: Diffrax's defaults,
    0 and 1 (the I rule), for a run away from kinks. ``sliding_pcoeff``, ``sliding_icoeff``
    (default 0.4 and 0.3, one of the PI pairs Diffrax's documentation lists): the coefficients
    the event solver uses instead while a run holds pairs or steps through kinks
    (:meth:`sliding_rule`; see the module's notes), where steps cycle between accepting and
    rejecting under the I rule; they
    do not follow ``pcoeff``, ``icoeff`` (``EventController(..., pcoeff=0.4, icoeff=0.3)`` is
    the PI rule throughout because the two pairs then agree). A step cut short (at t1 or a save
    time), or taken back by the solver, does not move the PI rule's history.
    The first step: ``0.01 * ||y0|| / ||f(y0)||`` in the scaled norm (1e-6 if either is below
    1e-5). Of the inherited settings it reads ``rtol``, ``atol``, ``pcoeff``, ``icoeff``,
    ``safety`` and ``factormax``; the others (``dcoeff``, ``factormin``, ``dtmin``, ``dtmax``,
    ``norm``, ``force_dtmin``) do not apply, nor does ``error_order`` (the solver's is used)."""

    sliding_pcoeff: float = 0.4
    sliding_icoeff: float = 0.3

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is not None:
            return super().init(terms, t0, t1, y0, dt0, args, func, error_order)
        scale = self.atol + self.rtol * jnp.abs(y0)
        d0 = jnp.sqrt(jnp.mean((y0 / scale) ** 2))
        d1 = jnp.sqrt(jnp.mean((func(terms, t0, y0, args) / scale) ** 2))
        h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.maximum(d1, 1e-300))
        h0 = jax.lax.stop_gradient(h0)  # step sizes are not differentiated (Diffrax's rule)
        one = jnp.ones((), y0.dtype)
        # (Diffrax's state: 1/err of the last accepted step and of the one before, at_dtmin)
        return t0 + h0, (one, one, False)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order,
                        controller_state):
        from ._step import error_ratio

        err = error_ratio(y0, y1_candidate, y_error, self.rtol, self.atol)
        keep = jnp.isfinite(err) & (err <= 1.0)
        safe = jnp.maximum(jnp.where(jnp.isfinite(err), err, jnp.inf), 1e-10)
        inv_prev, inv_prev2, at_dtmin = controller_state
        accepted = (self.safety * safe ** (-(self.pcoeff + self.icoeff) / error_order)
                    * inv_prev ** (-self.pcoeff / error_order))
        rejected = self.safety * safe ** (-1.0 / error_order)
        fac = jnp.where(keep, jnp.clip(accepted, 0.2, self.factormax),
                        jnp.clip(rejected, 0.1, self.safety))
        fac = jax.lax.stop_gradient(jnp.where(jnp.isfinite(fac), fac, 0.1))
        dt = (t1 - t0) * fac
        next_t0 = jnp.where(keep, t1, t0)
        # the history moves on accepted steps only (a rejection keeps the last accepted error);
        # a zero error is stored as 1, as Diffrax does (no history)
        inv = jnp.where(err > 0, 1.0 / safe, 1.0)
        inv = jax.lax.stop_gradient(jnp.asarray(inv, jnp.result_type(inv_prev)))
        state = (jnp.where(keep, inv, inv_prev), jnp.where(keep, inv_prev, inv_prev2), at_dtmin)
        return keep, next_t0, next_t0 + dt, False, state, diffrax.RESULTS.successful

    def sliding_rule(self) -> EventController:
        """The rule of the steps of a run at kinks (holding pairs, or stepping through kinks):
        the same controller with ``pcoeff``, ``icoeff`` set to ``sliding_pcoeff``,
        ``sliding_icoeff``."""
        return dataclasses.replace(self, pcoeff=self.sliding_pcoeff, icoeff=self.sliding_icoeff)


def controller(method, rtol, atol) -> diffrax.AbstractAdaptiveStepSizeController:
    """The method's controller, or the default :class:`EventController` at the given
    tolerances."""
    return method.controller if method.controller is not None else EventController(
        rtol=rtol, atol=atol)


def initial_step(setup, term, theta, data, t0=None):
    """The first step size from ``t0`` (default 0) and the controller's state for one run, at
    most to t1."""
    t0 = jnp.zeros((), theta.dtype) if t0 is None else t0
    t_first, state = setup.controller.init(
        term, t0, setup.t1, theta, None, data,
        lambda terms, t, y, args: terms.vf(t, y, args), setup.error_order)
    # step sizes are not differentiated (Diffrax's convention): their sensitivity compounds
    # over the steps and overflowed to inf * 0 = NaN in long reverse passes
    return jax.lax.stop_gradient(jnp.minimum(t_first - t0, setup.t1 - t0)), state


def adapt(setup, h, y0, y1, yerr, state, holds=None):
    """After a trial step of proposed size ``h`` from ``y0``: whether its error is acceptable,
    the next proposed size and the controller's next state. A non-finite error estimate rejects
    the step (a PIDController then shrinks by its smallest factor). ``holds``: the lane is at
    kinks (holds pairs on them, or steps through them); an :class:`EventController` then sizes
    its next accepted step by its sliding rule (:meth:`EventController.sliding_rule`). Any other controller sizes every step by
    its own rule.

    The controller reads only the step's length, and returns the next one as a pair of times:
    it is shown the step as [-h, 0] (an accepted step's next one starts at 0) and as [0, h] (a
    rejected one's restarts at 0), so the next size comes back without the rounding of a
    difference of times."""
    yerr = jnp.where(jnp.isfinite(yerr), yerr, jnp.inf)
    zero = jnp.zeros((), h.dtype)

    def ask(t0, t1, ctrl=setup.controller):
        return ctrl.adapt_step_size(t0, t1, y0, y1, None, yerr, setup.error_order, state)

    keep, _, h_kept, _, state_kept, _ = ask(-h, zero)
    _, _, h_rejected, _, state_rejected, _ = ask(zero, h)
    if holds is not None and isinstance(setup.controller, EventController):
        # (a rejected step's size and the state are the same under both rules)
        _, _, h_sliding, _, _, _ = ask(-h, zero, setup.controller.sliding_rule())
        h_kept = jnp.where(holds, h_sliding, h_kept)
    state = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), state_kept,
                                   state_rejected)
    return keep, jax.lax.stop_gradient(jnp.where(keep, h_kept, h_rejected)), state
