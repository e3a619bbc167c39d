"""Stiff stepping without asking: explicit steps until they are stability-limited, then an
implicit solver with Newton iterations on Hessian-vector products.

Near a minimum the loss Hessian has eigenvalues far apart (a fast direction and slow ones), so
an explicit Runge-Kutta step is held to ``h < boundary / lambda_max`` long after the solution
has stopped changing on that scale: a linear net on targets it cannot fit took 17,700 Tsit5
steps to t = 1e4 at rtol 1e-8 (1e4 of them in the last decade). :class:`Auto` (the default
``solver="auto"`` of :func:`gfsim.simulate`) watches each explicit step for that: the last two
stages of Tsitouras' (and Dormand-Prince's) tableau sit at the same time, so
``h rho = ||k_7 - k_6|| / ||y_7 - y_6||`` estimates ``h |lambda|`` along the step's stiffest
direction for free (Hairer & Wanner, Solving ODEs II, IV.2). When it exceeds ``threshold`` of
the method's real stability boundary on ``patience`` accepted steps (a calm stretch of 6
steps starts the count again), and more than ``horizon`` explicit steps are still to go
(:func:`steps_to_go`: the time left to t1 over the present step's length), the run switches to
the implicit solver for the rest of its time; :attr:`gfsim.Trajectory.t_stiff` records when
(NaN: never). The horizon is the cost rule: a run that turns stiff near its end (the
reproduction's ReLU runs near their zero-loss ends, t1 = 300: 807 hand-overs, every one with
fewer than 300 explicit steps left) would pay the implicit program's compile and its dearer
steps for a few hundred cheap explicit ones; a long stiff tail has thousands to millions.

The implicit solver is Kvaerno's ESDIRK 5(4) (L-stable, stiffly accurate) with full Newton
iterations: Diffrax's default chord iteration (one Jacobian per step) rejected half its steps on
that linear net (1268 steps, 650 rejected), Newton 122 steps, 2 rejected. The Newton systems
``(I + gamma h H) dk = r`` are solved matrix-free by conjugate gradients (:class:`SymmetricCG`:
the field's Jacobian is minus the loss Hessian, so the system is symmetric, and positive
definite near a minimum), one Hessian-vector product (a tangent of the linearised gradient)
per iteration and no materialised Jacobian, so the cost scales with the net, not with its
square (the forward solve: under reverse mode optimistix's implicit adjoint solves the
transposed systems densely). Measured (benchmarks/stiff.py): on S-LSQ (240 parameters) the
same 149 median steps as dense LU in 0.126 s against 0.98 s steady; on W-D to its stiff
endpoint (2700 parameters, where dense LU would build a 2700 x 2700 Jacobian per Newton
iteration) 517 median steps where Tsit5 takes 8,780. ``linear_solver="dense"`` (LU) and
``"gmres"`` (restarted GMRES: without a preconditioner it stalled on ``I + gamma h H`` once
``h lambda_max`` is large, S-LSQ over 10 minutes) remain to choose.

Under the event solver (``method="events"``; ``Auto(events=False)`` keeps it explicit) the same
watch reads
the Tsit5 steps of each lane (:func:`h_rho`, :func:`count_stiff`); a lane that holds no pair
below the first hidden layer and has been stiff for ``patience`` steps takes Kvaerno5 steps on
its frozen pattern's field (smooth between events) until an implicit step's end shows an event:
that step is taken back and the lane goes on explicitly, so events are located on explicit steps
only. A lane that slides on first-layer kinks steps on its sliding field: those kinks are affine
in the weights (z = w_u . x_i + b_u), so the projection is constant and the Newton systems stay
symmetric on the sliding manifold's tangent space; a deeper kink is curved, and such a lane
steps explicitly.
Outside a trace both the plain and the event solver run the implicit phase as a second program,
for the runs that switched only (``gfsim.flow._finish_stiff``): a call whose runs never switch
does not compile it.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx

# a stiff run switches only while the explicit steps still to go (to t1, at its present step
# size) are more than this (Auto(horizon=...)): near its end the implicit phase's compile and
# its dearer steps cost more than the explicit steps they save
HORIZON = 2000.0

LINEAR_SOLVERS = ("auto", "cg", "dense", "gmres")
# conjugate gradients on the Newton systems: tolerance (at least 100 eps; relative to each
# entry of the right-hand side and to its largest, see SymmetricCG.compute) and step
# budget (a solve that runs out fails its Newton iteration: the step is retried smaller). On
# W-D (2 seeds, t1 = 3e4) CG rtol 1e-5 and 1e-10 gave the same steps and results.
CG_RTOL = 1e-8
CG_MAX_STEPS = 1000


class SymmetricCG(lx.AbstractLinearSolver):
    """Conjugate gradients on the implicit stages' Newton systems ``(I + gamma h H) dk = r``.

    The gradient flow's field is ``-grad L``, so its Jacobian is minus the loss Hessian: the
    system is symmetric, and positive definite wherever ``H > -1 / (gamma h)`` (near a minimum,
    always). Diffrax's root find does not tag its operator (lineax's CG wants the tag), so this
    tags it and runs :class:`lineax.CG`: one Hessian-vector product (a tangent of the
    linearised gradient) per iteration, no materialised Jacobian. An indefinite system (a large
    step near a saddle) may fail to converge: Newton fails, the step is rejected and retried
    smaller, where the system is definite again."""

    cg: lx.CG

    def init(self, operator, options):
        return self.cg.init(lx.TaggedLinearOperator(operator, lx.positive_semidefinite_tag),
                            options)

    def compute(self, state, vector, options):
        # lineax's CG tests each entry of the residual against atol + rtol |b_i|: an entry of
        # b near zero (a near-dead unit's parameters) would have to be met to atol alone. The
        # system is solved for b / max|b| instead, so atol is relative to b's largest entry.
        big = jnp.max(jnp.stack([jnp.max(jnp.abs(v)) for v in jax.tree_util.tree_leaves(
            vector)]))
        big = jnp.where(big > 0, big, 1.0)
        sol, result, stats = self.cg.compute(
            state, jax.tree_util.tree_map(lambda v: v / big, vector), options)
        return jax.tree_util.tree_map(lambda v: v * big, sol), result, stats

    def transpose(self, state, options):
        return self.cg.transpose(state, options)

    def conj(self, state, options):
        return self.cg.conj(state, options)

    def assume_full_rank(self):
        return self.cg.assume_full_rank()


def stability_boundary(tableau) -> float:
    """Where an explicit Runge-Kutta method's stability region meets the negative real axis:
    the largest ``x`` with ``|R(z)| <= 1`` on ``[-x, 0]`` (Tsit5: 3.5; Dopri5: 3.3)."""
    s = len(tableau.a_lower) + 1
    A = np.zeros((s, s))
    for i, row in enumerate(tableau.a_lower):
        A[i + 1, : len(row)] = row
    b = np.asarray(tableau.b_sol, float)
    for x in np.arange(0.0, 10.0, 0.005):
        z = -x
        R = 1.0 + z * b @ np.linalg.solve(np.eye(s) - z * A, np.ones(s))
        if abs(R) > 1.0 + 1e-12:
            return float(x - 0.005)
    return 10.0


def watchable(solver) -> bool:
    """Whether the stiffness of an explicit solver's steps can be read off its stages: an
    explicit tableau whose last two stages are at the step's end."""
    tab = getattr(solver, "tableau", None)
    return (isinstance(solver, diffrax.AbstractERK) and isinstance(tab, diffrax.ButcherTableau)
            and len(tab.c) >= 2 and float(tab.c[-1]) == 1.0 and float(tab.c[-2]) == 1.0)


class Auto(eqx.Module):
    """``solver="auto"``: an explicit Runge-Kutta solver that hands over to an implicit one
    when its steps are stability-limited (see :mod:`gfsim.stiff`).

    **Arguments:**

    - ``explicit``: the explicit solver (default Tsit5; its last two stages must sit at the
      step's end, as in Tsit5 and Dopri5).
    - ``patience``: accepted stiff steps before the switch (default 15, Hairer's choice).
    - ``threshold``: the share of the explicit method's stability boundary that ``h rho``
      must exceed for a step to count as stiff (default 0.9).
    - ``linear_solver``: the Newton systems' solver: ``"auto"`` (default) or ``"cg"``:
      matrix-free conjugate gradients (:class:`SymmetricCG`); ``"dense"``: LU of the
      materialised Jacobian (one Hessian-vector product per parameter); ``"gmres"``:
      matrix-free restarted GMRES (slow without a preconditioner: see the module's notes).
    - ``events``: whether runs under the event solver switch too (default True: a lane that
      holds no pair below the first hidden layer steps implicitly on its frozen pattern,
      projected while it slides, until its next event;
      605 steps to t = 1e4 where Tsit5 takes 110,374). False: Tsit5 throughout there.
    - ``horizon``: a stiff run switches only while more than this many explicit steps are
      still to go to t1 at its present step size (default :data:`HORIZON` = 2000; 0: as soon
      as it is stiff). Without it the reproduction's many short ReLU runs, stiff near their
      zero-loss ends with a few hundred steps left, made ``gfsim reproduce`` take 485 s
      instead of 214 s under the event solver; with it none of them switches.
    """

    explicit: diffrax.AbstractSolver = eqx.field(static=True)
    patience: int = eqx.field(static=True)
    threshold: float = eqx.field(static=True)
    linear_solver: str = eqx.field(static=True)
    events: bool = eqx.field(static=True)
    horizon: float = eqx.field(static=True)

    def __init__(self, explicit=None, patience: int = 15, threshold: float = 0.9,
                 linear_solver: str = "auto", events: bool = True, horizon: float = HORIZON):
        self.explicit = diffrax.Tsit5() if explicit is None else explicit
        if not watchable(self.explicit):
            raise ValueError(
                f"explicit={type(self.explicit).__name__} is not allowed in gfsim.stiff.Auto; "
                "allowed: an explicit Runge-Kutta solver whose last two stages sit at the "
                "step's end (Tsit5, Dopri5).")
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) \
                or patience < 1:
            raise ValueError(f"patience={patience!r} is not allowed; allowed: an integer >= 1.")
        self.patience = int(patience)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
                or not 0.0 < float(threshold) <= 1.0:
            raise ValueError(
                f"threshold={threshold!r} is not allowed; allowed: a number in (0, 1].")
        self.threshold = float(threshold)
        if linear_solver not in LINEAR_SOLVERS:
            raise ValueError(f"linear_solver={linear_solver!r} is not allowed; allowed: "
                             f"{', '.join(map(repr, LINEAR_SOLVERS))}.")
        self.linear_solver = linear_solver
        if not isinstance(events, (bool, np.bool_)):
            raise ValueError(f"events={events!r} is not allowed; allowed: True or False.")
        self.events = bool(events)
        if isinstance(horizon, bool) or not isinstance(horizon, (int, float, np.integer,
                                                                  np.floating)) \
                or not 0.0 <= float(horizon) < float("inf"):
            raise ValueError(
                f"horizon={horizon!r} is not allowed; allowed: a finite number >= 0.")
        self.horizon = float(horizon)

    def switches(self, kinked: bool, events: bool = False) -> bool:
        """Whether runs of a net may switch: under ``method="plain"`` not for a kinked
        activation (its plain field jumps at the kinks; under ``"events"`` the field between
        events is smooth, the frozen pattern's: they switch unless ``events=False``)."""
        if kinked and not events:
            return False
        return self.events or not events

    def name(self) -> str:
        return f"auto({type(self.explicit).__name__.lower()}>kvaerno5)"

    def implicit(self, rtol, atol, norm, scale=1.0) -> diffrax.AbstractSolver:
        """Kvaerno5 with Newton iterations at the step's own tolerances (traced values).
        ``scale``: the size of the state where the implicit steps start: Newton's residual
        test is absolute (optimistix ignores rtol there), so its atol is ``atol + rtol *
        scale``, the step controller's tolerance at that size (a fixed atol cannot be met by
        the round-off of a large field: weights of size 1e3 rejected 11,788 of 20,117 steps)."""
        eps = float(jnp.finfo(jnp.result_type(rtol)).eps)
        if self.linear_solver == "dense":
            linear = lx.AutoLinearSolver(well_posed=None)
        elif self.linear_solver == "gmres":
            linear = lx.GMRES(rtol=max(1e-8, 100 * eps), atol=1e-30, restart=40,
                              stagnation_iters=40, max_steps=400)
        else:
            tol = max(CG_RTOL, 100 * eps)
            linear = SymmetricCG(lx.CG(rtol=tol, atol=tol, max_steps=CG_MAX_STEPS))
        # (Newton's Cauchy termination: successive iterates within the tolerance. Its
        # rate-based alternative, cauchy_termination=False, failed fast so often on the
        # unfittable linear case that it took 1219 steps, 624 rejected, against 180 and 14.)
        return diffrax.Kvaerno5(root_finder=optx.Newton(
            rtol=rtol, atol=atol + rtol * scale, norm=norm, linear_solver=linear))

    def due(self, counts, t, t1):
        """Whether a watched plain run at clock time ``t`` switches: stiff for ``patience``
        steps, with more than ``horizon`` explicit steps still to go (``counts``: the watch's
        state, see :class:`_Watched`)."""
        return (counts[0] >= self.patience) & (
            steps_to_go(t, counts[2], t1) > self.horizon)

    def watched(self) -> _Watched:
        boundary = stability_boundary(self.explicit.tableau)
        return _Watched(self.explicit, self.threshold * boundary, self.patience)


class _Interpolation(diffrax.AbstractLocalInterpolation):
    """The inner solver's dense output for the parameters; the watch counters held constant."""

    t0: jax.Array
    t1: jax.Array
    inner: diffrax.AbstractLocalInterpolation
    aux: jax.Array

    def evaluate(self, t0, t1=None, left: bool = True):
        th = self.inner.evaluate(t0, t1, left)
        return th, (self.aux if t1 is None else jnp.zeros_like(self.aux))


class _Watched(diffrax.AbstractAdaptiveSolver):
    """An explicit solver on the state ``(theta, counts)`` that counts its stiff steps:
    ``counts = [stiff steps, calm steps since the last stiff one, the last step's size]``
    (floats, so they ride along as state). The field of ``counts`` is zero; the step sets
    them."""

    inner: diffrax.AbstractSolver
    limit: float = eqx.field(static=True)  # h rho above this: a stiff step
    patience: int = eqx.field(static=True)

    term_structure = diffrax.AbstractTerm

    @property
    def interpolation_cls(self):
        return _make_interpolation(self.inner.interpolation_cls)

    def order(self, terms):
        return self.inner.order(terms)

    def error_order(self, terms):
        return self.inner.error_order(terms)

    def _inner_term(self, terms, aux):
        return diffrax.ODETerm(lambda t, th, args: terms.vf(t, (th, aux), args)[0])

    def init(self, terms, t0, t1, y0, args):
        th0, aux0 = y0
        return self.inner.init(self._inner_term(terms, aux0), t0, t1, th0, args)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        th0, aux0 = y0
        th1, err, dense, state, result = self.inner.step(
            self._inner_term(terms, aux0), t0, t1, th0, args, solver_state, made_jump)
        counts = count_stiff(aux0[:2], h_rho(self.inner.tableau, dense["k"]) > self.limit)
        # (and this step's size, for the switch's steps_to_go)
        aux1 = jnp.concatenate([counts, jnp.reshape(t1 - t0, (1,)).astype(counts.dtype)])
        return ((th1, aux1), (err, jnp.zeros_like(aux1)),
                dict(inner=dense, aux=aux1), state, result)


def steps_to_go(t, h, t1):
    """How many steps like its present one the run at ``t`` still has to ``t1``: ``(t1 - t) /
    h`` on the loop's clock. Under log time (s = log(1 + t)) that counts steps of a fixed length
    in s, as the exponential loss's tail allows (its Hessian decays like 1/t); a constant
    Hessian's stability limit would make the s-steps shrink, so there the count is a lower
    bound (steps of a fixed wall-time length are always at least as many), and a run is never
    switched for steps it may not need."""
    tiny = jnp.finfo(jnp.result_type(t, h)).tiny
    return (t1 - t) / jnp.maximum(h, tiny)


def h_rho(tableau, k):
    """``h rho = ||k_s - k_{s-1}|| / ||y_s - y_{s-1}||`` of one explicit step from its stages
    ``k`` (``k_i = h f_i``, Diffrax's dense layout): the step's ``h |lambda|`` along its stiffest
    direction (the last two stages sit at the step's end; 0 for a step that did not move)."""
    a6 = np.zeros(len(tableau.a_lower[-1]))
    a6[: len(tableau.a_lower[-2])] = tableau.a_lower[-2]
    coef = jnp.asarray(np.asarray(tableau.a_lower[-1]) - a6, k.dtype)
    dy = jnp.tensordot(coef, k[: coef.shape[0]], axes=1)  # y_s - y_{s-1}
    num = jnp.linalg.norm(k[-1] - k[-2])
    den = jnp.linalg.norm(dy)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


CALM_RESET = 6  # calm accepted steps in a row that start the stiffness count again


def count_stiff(counts, stiff):
    """The watch's counters ``[stiff steps, calm steps since the last stiff one]`` after an
    accepted step (``stiff``: whether its h rho was over the limit)."""
    count, calm = counts[..., 0], counts[..., 1]
    calm = jnp.where(stiff, 0.0, calm + 1.0)
    count = jnp.where(stiff, count + 1.0, jnp.where(calm >= CALM_RESET, 0.0, count))
    return jnp.stack([count, calm], axis=-1).astype(counts.dtype)


def _make_interpolation(inner_cls):
    def build(*, t0, t1, inner, aux):
        return _Interpolation(t0=t0, t1=t1, inner=inner_cls(t0=t0, t1=t1, **inner), aux=aux)
    return build

