"""Exact gradient flow of ReLU nets through kinks and sliding modes.

Inside an activation pattern (which units are on for which points) the gradient field of a
ReLU net is smooth. gfsim integrates it with the pattern FROZEN (h = D z with D fixed), so a
step never sees the discontinuity, and handles the pattern changes as events:

- every (hidden unit, point) pair ``k`` that is not sliding carries the event function
  ``s_k z_k`` (its pre-activation times its side); a step across a root is cut at the root,
  located on the solver's dense output;
- at a root the field on both sides decides: if both push the same way the pair crosses (its
  side flips); if both push into the surface it SLIDES (the Filippov solution, the lr -> 0 limit
  of gradient descent): the pair is held at z_k = 0;
- while a set K of pairs slides, the field is the gradient projected onto the tangent space of
  {z_K = 0}: F = -P grad L with P = I - J^T (J J^T)^-1 J, J = dz_K/dtheta. For a ReLU net the
  Filippov field with generalized derivatives lambda_k in [0, 1] differs from -grad L only along
  the rows of J, so the sliding condition dz_K/dt = 0 picks exactly this projection, at any
  depth. The multipliers lambda_k = m_k / c_k (m the projection coefficients, c_k = dL/dh_k)
  are monitored: a pair leaves the surface, on the side lambda points to, when lambda_k reaches
  0 or 1;
- after every accepted sliding step the state is projected back onto {z_K = 0} (one
  Gauss-Newton step), so drift off the surface stays at round-off. The projection moves along
  rows of J, which are orthogonal to the per-neuron rescalings, so balancedness invariants move
  only at second order.

The batch is advanced in one loop over all runs; the costly branches (event location, the
projection) run only on iterations where some run needs them, so runs with different event
counts do not serialise the batch. Reverse-mode gradients go through the checkpointed loop.
"""

from __future__ import annotations

import dataclasses

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.scipy.linalg

from .losses import loss_value
from .trajectory import Status

_ILLINOIS_ITERS = 30
# Reruns of the event search when a function that was not triggered at the step's end is
# negative at the root found (it dipped below zero and back inside the step).
_RELOCATE_ROUNDS = 3
_TAU_TOL = 1e-14  # event location: bracket width, as a fraction of the step
_F_TOL = 1e-12  # ... or |event| at the returned point, relative to its value at the step's end
_LOOP_KIND = "checkpointed"
# A sliding pair is released when lambda leaves [off - slack, 1 + slack] (times 1 - off), and
# a pair reaching its kink slides when neither side pushes it away by more than _GRAZE of the
# rates. The hysteresis stops grazing exits (lambda touching a bound and returning) from
# cycling between release and capture; it perturbs the flow only at second order in slack.
_LAMBDA_SLACK = 1e-7
_GRAZE = 1e-9
# A step may span at most this many pending save times (each is interpolated from the step's
# dense output); more cost interpolations, fewer cost steps cut short at save times.
_SAVE_SLOTS = 8
# Passes of "release the held pairs whose multiplier left [off, 1]" after a capture.
_RELEASE_ROUNDS = 3
# A free pair's crossing fires at side * z = -_Z_SLACK * |w_u| |h_i| (not at 0): the landing is
# then past the kink by more than round-off, so the flipped side starts strictly positive, and
# a pair that grazes its kink right after a change is found on its way back.
_Z_SLACK = 1e-13


# Explicit FSAL methods with at most this many stages run with their stages unrolled in the
# loop (see _erk_step); others (implicit, longer tableaus) through Diffrax's own step.
_UNROLL_STAGES = 7


def _unrolled(solver) -> bool:
    tab = getattr(solver, "tableau", None)
    return (isinstance(solver, diffrax.AbstractERK) and isinstance(tab, diffrax.ButcherTableau)
            and tab.fsal and tab.ssal and float(tab.c[-1]) == 1.0
            and tab.num_stages <= _UNROLL_STAGES)


def _erk_step(tab, fn, t0, t1, y0, state, jump):
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


@dataclasses.dataclass(frozen=True)
class EventConfig:
    """Static settings of the event-driven solve (part of the compile key)."""

    loss: str
    reduction: str
    solver: diffrax.AbstractSolver
    max_steps: int
    max_sliding: int
    has_stop: bool
    lanes: int | None = None  # runs advanced at once (None: all); fewer lanes refill


def _parts(net):
    params, skeleton = eqx.partition(net, eqx.is_array)
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    return theta, unravel, skeleton


class _Model:
    """Frozen-pattern forward pass and its derivatives for one (unbatched) net structure."""

    def __init__(self, net, cfg: EventConfig, unravel, skeleton):
        self.unravel = unravel
        self.skeleton = skeleton
        self.cfg = cfg
        self.hidden = tuple(w.shape[-2] for w in net.weights[:-1])
        self.hsum = sum(self.hidden)
        self.off = float(net.negative_slope) if net.activation == "leaky_relu" else 0.0

    def layers(self, theta):
        net = eqx.combine(self.unravel(theta), self.skeleton)
        return net.weights, net.biases

    def forward(self, theta, X, D, E=None, scales=False):
        """Outputs and hidden pre-activations (n, hsum) with the pattern frozen: h = D * z
        (D: (n, hsum) slopes). ``E`` (n, hsum) is added to h (to read off dL/dh). With
        ``scales``, also |w_u| |h_i| (+ |b_u|) per pair: the natural size of each z."""
        ws, bs = self.layers(theta)
        h, zs, ss, start = X, [], [], 0
        for j, w in enumerate(ws):
            z = h @ w.T
            if bs is not None:
                z = z + bs[j]
            if j == len(ws) - 1:
                out = z
                break
            if scales:
                sc = jnp.linalg.norm(h, axis=-1)[..., None] * jnp.linalg.norm(w, axis=-1)
                ss.append(sc if bs is None else sc + jnp.abs(bs[j]))
            width = self.hidden[j]
            zs.append(z)
            h = D[..., start:start + width] * z
            if E is not None:
                h = h + E[..., start:start + width]
            start += width
        if scales:
            return out, jnp.concatenate(zs, axis=-1), jnp.concatenate(ss, axis=-1)
        return out, jnp.concatenate(zs, axis=-1)

    def loss(self, theta, data, D, E=None):
        out, _ = self.forward(theta, data.X, D, E)
        return loss_value(self.cfg.loss, self.cfg.reduction, out, data.Y, data.mask)

    def zflat(self, theta, data, D):
        return self.forward(theta, data.X, D)[1].reshape(-1)

    def grad_and_c(self, theta, data, D):
        """grad_theta L and c = dL/dh per pair (flat), pattern frozen at D."""
        E = jnp.zeros(D.shape, theta.dtype)
        g, c = jax.grad(self.loss, argnums=(0, 3))(theta, data, D, E)
        return g, c.reshape(-1)

    def grad_and_c_aux(self, theta, data, D):
        """:meth:`grad_and_c`, plus the pre-activations z and their scales |w_u| |h_i| (flat)
        from the same forward pass (an unrolled step uses its last stage's for the events)."""

        def loss(th, E):
            out, z, sc = self.forward(th, data.X, D, E, scales=True)
            return loss_value(self.cfg.loss, self.cfg.reduction, out, data.Y, data.mask), (z, sc)

        E = jnp.zeros(D.shape, theta.dtype)
        (g, c), (z, sc) = jax.grad(loss, argnums=(0, 1), has_aux=True)(theta, E)
        return g, c.reshape(-1), z.reshape(-1), sc.reshape(-1)

    def jac_rows(self, theta, data, D, idx, valid):
        """Rows d z_k / d theta for the pairs idx (flat pair index = point * hsum + unit)."""
        point, unit = idx // self.hsum, idx % self.hsum

        def row(i, u):
            f = lambda th: self.forward(th, data.X[i][None], D[i][None])[1][0, u]  # noqa: E731
            return jax.grad(f)(theta)

        rows = jax.vmap(row)(point, unit)
        return jnp.where(valid[:, None], rows, 0.0)


def _solve_gram(J, valid, rhs):
    G = J @ J.T
    scale = jnp.maximum(jnp.max(jnp.diag(G)), jnp.finfo(J.dtype).tiny)
    # (the floor: a held pair whose input has died has a zero row, and so may all of them)
    jitter = jnp.maximum(1e-13 * scale, jnp.finfo(J.dtype).tiny)
    G = G + jnp.diag(jnp.where(valid, jitter, 1.0))
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(G), rhs)


class _Lane:
    """Everything the loop needs for one run, closed over its data."""

    def __init__(self, model: _Model, data):
        self.m = model
        self.data = data
        self.off = model.off

    def slopes(self, on, held):
        d = jnp.where(on & ~held, 1.0, self.off)
        return d.reshape(-1, self.m.hsum)

    def held_slots(self, held, slots: int):
        (idx,) = jnp.nonzero(held, size=slots, fill_value=0)
        valid = jnp.arange(slots) < jnp.sum(held)
        return idx, valid

    def field(self, theta, on, held, project: int):
        """The (possibly sliding) field and the multipliers lambda of the held pairs.
        ``project``: 0 for the plain field, else the number of slots for held pairs (static;
        at least the number of held pairs)."""
        F, lam, _, _ = self._field(theta, on, held, project, self.m.grad_and_c)
        return F, lam

    def field_and_events(self, theta, on, held):
        """The plain field (no projection) and :meth:`events` at one point, from one forward
        pass."""
        F, _, z, scale = self._field(theta, on, held, 0, self.m.grad_and_c_aux)
        return F, self._assemble(z, scale, on, held, None, 0)

    def _field(self, theta, on, held, project, grad_fn):
        D = self.slopes(on, held)
        g, c, *aux = grad_fn(theta, self.data, D)
        z, scale = aux if aux else (None, None)
        F = -g
        if not project:
            return F, None, z, scale
        idx, valid = self.held_slots(held, project)
        J = self.m.jac_rows(theta, self.data, D, idx, valid)
        mcoef = _solve_gram(J, valid, J @ F)
        F = F - J.T @ mcoef
        tiny = jnp.finfo(F.dtype).tiny

        def lam_of(c):
            ck = c[idx]
            lam = self.off + mcoef * ck / (ck * ck + tiny)
            return jnp.zeros(held.shape, F.dtype).at[idx].add(jnp.where(valid, lam, 0.0))

        # m_k = (lambda_k - off) c_k(lambda), with c_k(lambda) = dL/dh_k when the held pairs
        # DOWNSTREAM of k at the same point have their slopes lambda (a path through several
        # held pairs carries the product of their lambdas). One backward pass per hidden layer
        # below the last makes it exact, layer by layer from the output.
        lam = lam_of(c)
        for _ in range(len(self.m.hidden) - 1):
            D_lam = jnp.where(held, lam, D.reshape(-1)).reshape(D.shape)
            lam = lam_of(self.m.grad_and_c(theta, self.data, D_lam)[1])
        return F, lam, z, scale

    def events(self, theta, on, held, project: int):
        """Event functions, all >= 0 while nothing happens: side * z for free pairs,
        lambda - off and 1 - lambda for held ones (+inf where not applicable)."""
        D = self.slopes(on, held)
        _, z, scale = self.m.forward(theta, self.data.X, D, scales=True)
        lam = self.field(theta, on, held, project)[1] if project else None
        return self._assemble(z.reshape(-1), scale.reshape(-1), on, held, lam, project)

    def _assemble(self, z, scale, on, held, lam, project):
        side = jnp.where(on, 1.0, -1.0)
        slack = _Z_SLACK * jax.lax.stop_gradient(scale)
        cross = jnp.where(held, jnp.inf, side * z + slack)
        if project:
            ls = _LAMBDA_SLACK * (1.0 - self.off)
            lo = jnp.where(held, lam - self.off + ls, jnp.inf)
            hi = jnp.where(held, 1.0 - lam + ls, jnp.inf)
        else:
            lo = hi = jnp.full(z.shape, jnp.inf, z.dtype)
        return jnp.concatenate([cross, lo, hi])

    def project(self, theta, on, held, slots: int):
        D = self.slopes(on, held)
        idx, valid = self.held_slots(held, slots)
        for _ in range(2):
            z = self.m.zflat(theta, self.data, D)[idx]
            J = self.m.jac_rows(theta, self.data, D, idx, valid)
            theta = theta - J.T @ _solve_gram(J, valid, jnp.where(valid, z, 0.0))
        return theta

    def decide(self, theta, on, held, hit, project: int):
        """For the pairs ``hit`` that reached their kink: cross (flip side) or slide (hold).
        ``project``: as for :meth:`field`, with room for the held pairs AND the hit ones."""
        P = held.shape[0]
        zfun = lambda th: self.m.zflat(th, self.data, self.slopes(on, held))  # noqa: E731

        def rate(side_on):
            on2 = jnp.where(hit, side_on, on)
            F, _ = self.field(theta, on2, held, project)
            return jax.jvp(zfun, (theta,), (F,))[1]

        a = rate(jnp.zeros(P, bool))  # dz/dt with the hit pairs off
        b = rate(jnp.ones(P, bool))  # ... and on
        tol = _GRAZE * (jnp.abs(a) + jnp.abs(b))
        slide = hit & (a >= -tol) & (b <= tol)
        new_on = jnp.where(hit & ~slide, a + b > 0, on)
        new_held = held | slide
        if project:
            # A capture changes the projection, and with it the multipliers of the pairs
            # already held: one whose lambda is now outside [off, 1] would be pushed off its
            # surface (the sliding set must solve the complementarity problem). Release such
            # pairs, to the side lambda points to, until the set is consistent.
            ls = _LAMBDA_SLACK * (1.0 - self.off)
            for _ in range(_RELEASE_ROUNDS):
                _, lam = self.field(theta, new_on, new_held, project)
                lo = new_held & (lam < self.off - ls)
                hi = new_held & (lam > 1.0 + ls)
                new_held = new_held & ~(lo | hi)
                new_on = jnp.where(lo | hi, hi, new_on)
        return new_on, new_held, slide & new_held


def solve_events(net, data, t1, ts, rtol, atol, stop_loss, cfg: EventConfig, batched: bool):
    """Event-driven solve of a batch (leading run axis on net and data when ``batched``)."""
    single = net if not batched else jax.tree_util.tree_map(lambda a: a[0], net)
    _, unravel, skeleton = _parts(single)
    model = _Model(single, cfg, unravel, skeleton)
    if batched:
        theta0 = jax.vmap(lambda n: _parts(n)[0])(net)
    else:
        theta0 = _parts(net)[0][None]
        data = jax.tree_util.tree_map(lambda a: a[None], data)
    R, p = theta0.shape
    n = data.X.shape[1]
    P = n * model.hsum
    S = ts.shape[0]
    dtype = theta0.dtype
    solver = cfg.solver
    order = solver.order(diffrax.ODETerm(lambda t, y, a: y))
    K = cfg.max_sliding
    unrolled = _unrolled(solver)

    def lane(d):
        return _Lane(model, d)

    def by_projection(flag, fn):
        """fn(K) if any run slides, else fn(0): one choice for the whole batch, so the
        projection's cost (a backward pass per slot) is paid only on iterations where some run
        needs it. (Tiers of slots, e.g. 4 while no run holds more, gained 6% on W-B and cost a
        third more compile time: every branch is one more trace.)"""
        return jax.lax.cond(flag, lambda: fn(K), lambda: fn(0))

    def vm(fn, *args):
        return jax.vmap(fn)(*args)

    # Lanes: the loop advances L runs at a time. With L < R a lane whose run is done takes the
    # next pending run (refill), so lanes do not idle while the longest run of a batch finishes.
    L = R if cfg.lanes is None else min(int(cfg.lanes), R)
    refill = L < R
    at_zero = ts <= 0  # save slots at t = 0
    S0 = jnp.sum(at_zero).astype(jnp.int32)

    def ev_all(theta, on, held, project, dat):
        return vm(lambda th, o, h, d: lane(d).events(th, o, h, project), theta, on, held, dat)

    # Event values are kept with a per-pair offset: a pair that sits a hair on the wrong side
    # right after a change (a bounce off its kink) starts its next search strictly positive.
    def rebase(raw):
        off = jnp.where(raw < 0, -2.0 * raw, 0.0)
        return raw + off, off

    dummy = diffrax.ODETerm(lambda t, y, a: y)

    def init_lanes(theta0, dat):
        """The starting state of a batch of lanes: pattern, initial kinks, event values, first
        step size."""
        B = theta0.shape[0]

        def init_one(theta, d):
            net1 = eqx.combine(unravel(theta), skeleton)
            z = jnp.concatenate(net1.preactivations(d.X)[:-1], axis=-1).reshape(-1)
            on = z > 0
            # a pair exactly at its kink decides (cross or slide); but not one whose input is
            # all zero (every unit below it off at that point): its z is 0 for any weights,
            # its constraint row is zero, and its side does not matter until an upstream pair
            # turns on (then it leaves 0 and its event fires as usual)
            _, _, sc = model.forward(theta, d.X, lane(d).slopes(on, jnp.zeros_like(on)),
                                     scales=True)
            return on, (z == 0) & (sc.reshape(-1) > 0)

        on0, at0 = vm(init_one, theta0, dat)
        held0 = jnp.zeros((B, P), bool)

        def decide_all(theta, on, held, hit):
            return vm(lambda th, o, h, k, d: lane(d).decide(th, o, h, k, K), theta, on, held,
                      hit, dat)

        on0, held0, _ = jax.lax.cond(
            jnp.any(at0), decide_all, lambda th, o, h, k: (o, h, jnp.zeros_like(h)), theta0,
            on0, held0, at0,
        )
        theta0 = jax.lax.cond(
            jnp.any(held0),
            lambda th: vm(lambda t_, o, h, d: lane(d).project(t_, o, h, K), th, on0, held0,
                          dat),
            lambda th: th,
            theta0,
        )
        E0, Eoff0 = rebase(
            by_projection(jnp.any(held0), lambda pr: ev_all(theta0, on0, held0, pr, dat))
        )
        # initial step size (Hairer's heuristic, first half)
        F0 = by_projection(
            jnp.any(held0),
            lambda pr: vm(lambda th, o, h, d: lane(d).field(th, o, h, pr)[0], theta0, on0,
                          held0, dat),
        )
        scale0 = atol + rtol * jnp.abs(theta0)
        d0 = jnp.sqrt(jnp.mean((theta0 / scale0) ** 2, axis=1))
        d1 = jnp.sqrt(jnp.mean((F0 / scale0) ** 2, axis=1))
        h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.maximum(d1, 1e-300))
        h0 = jnp.minimum(h0, t1)
        zeros = jnp.zeros((B,), jnp.int32)
        return dict(
            t=jnp.zeros((B,), dtype),
            y=theta0,
            h=h0,
            on=on0,
            held=held0,
            E=E0,
            Eoff=Eoff0,
            jump=jnp.ones((B,), bool),
            done=jnp.zeros((B,), bool),
            status=zeros + int(Status.REACHED_T1),
            steps=zeros,
            accepted=zeros,
            rejected=zeros,
            crossings=zeros,
            slides=jnp.sum(held0, axis=1).astype(jnp.int32),
            si=jnp.full((B,), S0, jnp.int32),
            fsal=jax.vmap(lambda th: solver.init(dummy, 0.0, 1.0, th, None))(theta0),
        )

    def take(tree, idx):
        return jax.tree_util.tree_map(lambda a: a[idx], tree)

    def pick(mask, new, old):
        """Per lane: ``new`` where ``mask`` (L,), else ``old`` (matching pytrees)."""
        return jax.tree_util.tree_map(
            lambda a, b: jnp.where(mask.reshape((L,) + (1,) * (a.ndim - 1)), a, b), new, old)

    def put_start(saves, sheld, rows, st):
        """The t = 0 save slots of runs ``rows`` (R: none) from their starting state."""
        where_to = jnp.where(at_zero[None, :], jnp.arange(S)[None, :], S)
        saves = saves.at[rows[:, None], where_to].set(
            jnp.broadcast_to(st["y"][:, None, :], (rows.shape[0], S, p)), mode="drop")
        sheld = sheld.at[rows[:, None], where_to].set(
            jnp.broadcast_to(st["held"][:, None, :], (rows.shape[0], S, P)), mode="drop")
        return saves, sheld

    lanes0 = init_lanes(theta0[:L], take(data, jnp.arange(L)))
    zeros_L = jnp.zeros((L,), jnp.int32)
    rid0 = jnp.arange(L, dtype=jnp.int32)
    saves0, sheld0 = put_start(jnp.full((R, S, p), jnp.nan, dtype),
                               jnp.zeros((R, S, P), bool), rid0, lanes0)
    state0 = dict(lanes0, saves=saves0, sheld=sheld0, it=jnp.zeros((), jnp.int32))
    # what is kept of a run when it is done (per run, R rows), and which lanes hold which run
    KEEP = ("t", "y", "on", "held", "status", "steps", "accepted", "rejected", "crossings",
            "slides")
    if refill:
        state0.update(
            d=take(data, jnp.arange(L)),
            rid=rid0,
            nxt=jnp.asarray(L, jnp.int32),
            runs={k: jnp.zeros((R,) + lanes0[k].shape[1:], lanes0[k].dtype) for k in KEEP},
        )

    def step_one(y, t, h, on, held, jump, fsal, si, d, project):
        ln = lane(d)
        term = diffrax.ODETerm(lambda t_, y_, a: ln.field(y_, on, held, project)[0])
        t_next = jnp.minimum(t + h, t1)
        last = si + _SAVE_SLOTS - 1
        t_next = jnp.where(last < S, jnp.minimum(t_next, ts[jnp.minimum(last, S - 1)]), t_next)
        # jump after a pattern change or a projection: the first stage is re-evaluated (for
        # the whole batch if any run needs it, in Diffrax's step; see _erk_step for ours).
        # Sliding steps keep Diffrax's step: unrolling the projected field (a backward pass per
        # held pair, per stage) measured no faster on the sliding case and compiled slower.
        if unrolled and not project:
            fn = lambda t_, y_: ln.field_and_events(y_, on, held)  # noqa: E731
            y1, yerr, dense, fsal1, E1 = _erk_step(solver.tableau, fn, t, t_next, y, fsal, jump)
        else:
            y1, yerr, dense, fsal1, _ = solver.step(term, t, t_next, y, None, fsal, jump)
            # the event functions at the step's end, under the same choice of projection
            E1 = ln.events(y1, on, held, project)
        sc = atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y1))
        # sqrt with a finite derivative at 0: a run that is done takes zero-length steps while
        # others go on, and sqrt'(0) = inf would make its gradient NaN (0 * inf)
        ms = jnp.mean((yerr / sc) ** 2)
        err = jnp.where(ms > 0, jnp.sqrt(jnp.where(ms > 0, ms, 1.0)),
                        jnp.where(jnp.isnan(ms), jnp.inf, 0.0))
        ok = jnp.isfinite(err) & (err <= 1.0) & jnp.all(jnp.isfinite(y1))
        return y1, t_next, err, ok, dense, fsal1, E1

    def body(s):
        dat = s["d"] if refill else data  # each lane's dataset
        active = ~s["done"]
        sliding = jnp.any(s["held"] & active[:, None])

        def do_step(project):
            return vm(
                lambda y, t, h, o, hl, j, f, i, d: step_one(y, t, h, o, hl, j, f, i, d, project),
                s["y"], s["t"], s["h"], s["on"], s["held"], s["jump"], s["fsal"], s["si"], dat,
            )

        y1, t_next, err, ok, dense, fsal1, E1 = by_projection(sliding, do_step)
        ok = ok & active
        E1 = E1 + s["Eoff"]
        trig = (E1 < 0) & (E1 < s["E"]) & ok[:, None]
        has_ev = jnp.any(trig, axis=1)

        def interp(t0_, t1_, dn, tq):
            return solver.interpolation_cls(t0=t0_, t1=t1_, **dn).evaluate(tq)

        def locate(project_all):
            # Only the multiplier events (lambda reaching 0 or 1) need the projection; when no
            # run has one triggered, the search evaluates the pre-activations alone.
            need_lam = jnp.any(trig[:, P:])
            return jax.lax.cond(need_lam, lambda: _locate(project_all), lambda: _locate(0))

        def _locate(project):
            """The first root in each run's step, as a fraction tau of the step, and the event
            functions that fire by then. The functions triggered at the step's end are searched
            first; a function that is negative at the point found dipped below zero and back
            inside the step (unseen at the step's end), so its root comes first: it joins the
            triggered set and the search reruns on [0, tau], at most _RELOCATE_ROUNDS times. (Cut
            at the later root, the pair would sit on the wrong side of its kink with the pattern
            unchanged, and the frozen-pattern field would no longer be the gradient.)"""

            def ev_at(tau, t0_, t1_, dn, on, held, d, off):
                y = interp(t0_, t1_, dn, t0_ + tau * (t1_ - t0_))
                return lane(d).events(y, on, held, project) + off

            def search(t0_, t1_, dn, on, held, d, tr, Ea, off, bmax):
                # Illinois on phi(tau) = min over triggered functions, along the dense output,
                # on [0, bmax] (phi(0) >= 0 > phi(bmax))
                def phi(tau):
                    e = ev_at(tau, t0_, t1_, dn, on, held, d, off)
                    return jnp.min(jnp.where(tr, e, jnp.inf))

                fa = jnp.min(jnp.where(tr, Ea, jnp.inf))
                fa = jnp.where(jnp.isfinite(fa), fa, 0.0)
                fb = phi(bmax)

                def it(c):
                    a, b, fa, fb, side, fbt = c
                    # secant point; in a run with no triggered event fa, fb are not finite, and
                    # the masked-out division must stay finite too (its derivative would turn
                    # the run's gradient into NaN: 0 * NaN)
                    den = fb - fa
                    fine = jnp.isfinite(fa) & jnp.isfinite(fb) & (den != 0)
                    x = (a * jnp.where(fine, fb, 1.0) - b * jnp.where(fine, fa, 0.0)) / jnp.where(
                        fine, den, 1.0
                    )
                    x = jnp.where(fine & (x > a) & (x < b), x, 0.5 * (a + b))
                    fx = phi(x)
                    neg = fx < 0
                    # Illinois: halve the retained end's value when the same end stays twice
                    fa2 = jnp.where(neg, jnp.where(side == 1, fa * 0.5, fa), fx)
                    fb2 = jnp.where(neg, fx, jnp.where(side == -1, fb * 0.5, fb))
                    a2 = jnp.where(neg, a, x)
                    b2 = jnp.where(neg, x, b)
                    side2 = jnp.where(neg, 1, -1)
                    return a2, b2, fa2, fb2, side2, jnp.where(neg, fx, fbt)

                # Until b (where the event has fired) is within _F_TOL of the step's change of
                # the event function from the root, or the bracket is _TAU_TOL of the step wide;
                # at most _ILLINOIS_ITERS times. A bounded loop: reverse mode goes through it.
                start = (jnp.zeros((), dtype), bmax, fa, fb, jnp.zeros((), int), fb)
                ftol = _F_TOL * jnp.abs(fb)
                a, b, *_ = eqxi.while_loop(
                    lambda c: (c[1] - c[0] > _TAU_TOL) & (-c[5] > ftol),
                    it,
                    start,
                    max_steps=_ILLINOIS_ITERS,
                    kind="bounded",
                )
                return jnp.where(fa < 0, 0.0, b)

            args = (s["t"], t_next, dense, s["on"], s["held"], dat)

            def round_(c):
                tau, tr, pending, r, _ = c
                tau_new = vm(search, *args, tr, s["E"], s["Eoff"], tau)
                tau = jnp.where(pending, tau_new, tau)
                e = vm(ev_at, tau, *args, s["Eoff"])
                extra = pending[:, None] & ~tr & (e < 0) & (e < s["E"])
                return tau, tr | extra, jnp.any(extra, axis=1), r + 1, e

            tau, tr, _, _, e = eqxi.while_loop(
                lambda c: jnp.any(c[2]) & (c[3] <= _RELOCATE_ROUNDS),
                round_,
                (jnp.ones((L,), dtype), trig, has_ev, jnp.zeros((), jnp.int32),
                 jnp.zeros_like(s["E"])),
                max_steps=_RELOCATE_ROUNDS + 1,
                kind="bounded",
            )
            # e: the event functions (with offsets) at the root, under this search's projection
            return tau, tr, e

        # -- pattern changes at the event --------------------------------------------------
        def apply_events(project, y_end, trig, e_end):
            """``e_end``: the event functions at ``y_end`` if the search computed them under
            the same projection (no run slides: both without), else None."""

            def one(y, on, held, tr, d, off, e):
                ln = lane(d)
                if e is None:
                    e = ln.events(y, on, held, project) + off
                fired = tr & (e < 0)
                fired = fired | (tr & ~jnp.any(fired))  # at least the triggering ones
                cross_hit = fired[:P]
                lo_hit = fired[P:2 * P]
                hi_hit = fired[2 * P:]
                # leaving a sliding surface: to the side lambda points to
                released = held & (lo_hit | hi_hit)
                held2 = held & ~released
                on2 = jnp.where(released, hi_hit, on)
                on3, held3, slid = ln.decide(y, on2, held2, cross_hit & ~held, project)
                crossed = cross_hit & ~held & ~slid
                count = lambda m: jnp.sum(m).astype(jnp.int32)  # noqa: E731
                return y, on3, held3, count(crossed), count(slid)

            return vm(one, y_end, s["on"], s["held"], trig, dat, s["Eoff"], e_end)

        def event_branch(project):
            # locate the first root in the step, cut the step there, apply the changes
            tau, tr, e_end = locate(project)
            tau = jnp.where(has_ev, tau, 1.0)
            t_end = jnp.where(has_ev, s["t"] + tau * (t_next - s["t"]), t_next)
            y_end = jnp.where(has_ev[:, None], vm(interp, s["t"], t_next, dense, t_end), y1)
            return (t_end, y_end) + apply_events(project, y_end, tr,
                                                 None if project else e_end)[1:]

        def no_event_branch():
            return t_next, y1, s["on"], s["held"], zeros_L, zeros_L

        # One switch for the whole batch: no event anywhere, events without / with sliding.
        branch = jnp.where(jnp.any(has_ev), jnp.where(sliding, 2, 1), 0)
        t_end, y_end, on_new, held_new, n_cross, n_slide = jax.lax.switch(
            branch, (no_event_branch, lambda: event_branch(0), lambda: event_branch(K))
        )
        y_new = y_end
        # keep the changes of runs with an event only (the release pass of decide runs on every
        # run of the event branch)
        on_new = jnp.where(has_ev[:, None], on_new, s["on"])
        held_new = jnp.where(has_ev[:, None], held_new, s["held"])
        # back onto {z_K = 0}: after an accepted sliding step, and after a new capture
        still = ok & jnp.any(held_new, axis=1)
        fresh = has_ev | still

        def after_change(project):
            # the projection (only where some run slides) and the event functions afresh
            yp = y_new
            if project:
                yp = jnp.where(
                    still[:, None],
                    vm(lambda y, o, hl, d: lane(d).project(y, o, hl, project), y_new, on_new,
                       held_new, dat),
                    y_new,
                )
            return yp, ev_all(yp, on_new, held_new, project, dat)

        def refresh():
            # Offsets. A pair whose state changed here (crossed, captured, released) and that
            # sits a hair on the wrong side of its new surface (the projection moves every pair
            # by up to the drift it corrects) gets one: its next search starts strictly
            # positive. Every other pair keeps its offset until it is back on its side; one
            # that has gone past it (further to the wrong side than the offset allows: it
            # drifted there, or a projection moved it) has its pattern set to the side its
            # pre-activation is on, and the event functions are evaluated afresh. (Refreshing
            # every offset at every event let a pair that drifts the wrong way push its
            # threshold ahead of it for good, with the pattern wrong and the loss rising.)
            yp, raw = by_projection(jnp.any(held_new), after_change)
            off_old = s["Eoff"]
            same = (on_new == s["on"]) & (held_new == s["held"])  # pairs this event left alone
            # (a held pair's crossing function is +inf: only free pairs can be past)
            past = fresh[:, None] & same & (raw[:, :P] + off_old[:, :P] < 0)

            def reflip():
                on2 = on_new ^ past
                return on2, by_projection(
                    jnp.any(held_new), lambda pr: ev_all(yp, on2, held_new, pr, dat))

            on2, raw = jax.lax.cond(jnp.any(past), reflip, lambda: (on_new, raw))
            changed = jnp.tile(~same | past, (1, 3))
            # after a flip, the pairs downstream of it at the same point moved by as much as
            # the flipped one was off: those that went past their offset are bounced too
            moved = jnp.concatenate(
                [fresh[:, None] & (raw[:, :P] + off_old[:, :P] < 0),
                 jnp.zeros_like(raw[:, P:], bool)], axis=1)
            off = jnp.where(changed | moved, rebase(raw)[1],
                            jnp.where(raw >= 0, 0.0, off_old))
            return yp, on2, raw + off, off, jnp.sum(past, axis=1).astype(jnp.int32)

        # (no run with an event or a projection: the values at the step's end, offsets kept)
        y_new, on_new, E_new, off_new, n_flip = jax.lax.cond(
            jnp.any(fresh), refresh, lambda: (y_new, on_new, E1, s["Eoff"], zeros_L))
        n_cross = n_cross + n_flip

        # -- saves in (t, t_end] from the dense output -------------------------------------
        # Steps end at the _SAVE_SLOTS-th pending save time at the latest (see step_one), so
        # at most that many slots, from si on, fall in a step: only those are interpolated.
        M = _SAVE_SLOTS
        slots = jnp.minimum(s["si"][:, None] + jnp.arange(M)[None, :], S - 1)  # (L, M)
        tq = ts[slots]
        due = (tq <= t_end[:, None]) & (s["si"][:, None] + jnp.arange(M)[None, :] < S)
        due = due & ok[:, None]

        def save_vals(k):
            # the first k slots (a run's due slots are the first ones from si on)
            v = vm(
                lambda t0_, t1_, dn, q: jax.vmap(lambda x: interp(t0_, t1_, dn, x))(
                    jnp.clip(q, t0_, t1_)
                ),
                s["t"], t_next, dense, tq[:, :k],
            )
            return v if k == M else jnp.concatenate([v, jnp.zeros((L, M - k, p), dtype)], 1)

        # Most iterations have at most one save due per run: interpolate one slot then, not M
        # (with M for every run, saving was 14% of W-A's time).
        n_due = jnp.max(jnp.sum(due, axis=1))
        vals = jax.lax.switch(
            jnp.minimum(n_due, 2),
            (lambda: jnp.zeros((L, M, p), dtype), lambda: save_vals(1), lambda: save_vals(M)),
        )
        # the state after an event belongs to the new pattern: an exact hit on t_end saves it
        vals = jnp.where((tq == t_end[:, None])[:, :, None] & has_ev[:, None, None],
                         y_new[:, None, :], vals)
        # scatter (not a select over all slots): slots that are not due go out of range
        rows = (s["rid"] if refill else jnp.arange(L))[:, None]  # idle lanes: R, dropped
        where_to = jnp.where(due, slots, S)
        saves = s["saves"].at[rows, where_to].set(vals, mode="drop")
        sheld = s["sheld"].at[rows, where_to].set(
            jnp.broadcast_to(s["held"][:, None, :], (L, M, P)), mode="drop"
        )
        si_new = s["si"] + jnp.sum(due, axis=1).astype(jnp.int32)

        # -- step size ----------------------------------------------------------------------
        safe_err = jnp.where(jnp.isfinite(err), err, jnp.inf)
        fac = 0.9 * jnp.maximum(safe_err, 1e-10) ** (-1.0 / order)
        fac = jnp.where(ok, jnp.clip(fac, 0.2, 10.0), jnp.clip(fac, 0.1, 0.9))
        fac = jnp.where(jnp.isfinite(fac), fac, 0.1)
        h_new = jnp.where(active, s["h"] * fac, s["h"])

        t_new = jnp.where(ok, t_end, s["t"])
        y_keep = jnp.where(ok[:, None], y_new, s["y"])
        on_keep = jnp.where(ok[:, None], on_new, s["on"])
        held_keep = jnp.where(ok[:, None], held_new, s["held"])
        E_keep = jnp.where(ok[:, None], E_new, s["E"])
        Eoff_keep = jnp.where(ok[:, None], off_new, s["Eoff"])

        steps = s["steps"] + active
        done = s["done"] | (ok & (t_new >= t1))
        status = s["status"]
        overflow = jnp.sum(held_keep, axis=1) > K
        status = jnp.where(active & overflow, int(Status.SLIDING_CAPACITY), status)
        # a step that cannot be made finite at any step size the clock can still resolve (relative
        # to t, not t1: a long log-time run overflowing on a trial step is just rejected)
        nonfinite = active & ~jnp.isfinite(err) & (
            s["h"] * fac < jnp.maximum(1e-13 * jnp.abs(s["t"]), jnp.finfo(dtype).tiny))
        status = jnp.where(nonfinite, int(Status.NONFINITE), status)
        if cfg.has_stop:
            lval = vm(
                lambda y, o, hl, d: model.loss(y, d, lane(d).slopes(o, hl)),
                y_keep, on_keep, held_keep, dat,
            )
            hit_stop = active & ok & (lval < stop_loss) & ~done
            status = jnp.where(hit_stop, int(Status.STOP_LOSS), status)
            done = done | hit_stop
        done = done | (active & (overflow | nonfinite))
        exhausted = active & ~done & (steps >= cfg.max_steps)
        status = jnp.where(exhausted, int(Status.MAX_STEPS), status)
        done = done | exhausted
        new = dict(
            t=t_new,
            y=y_keep,
            h=h_new,
            on=on_keep,
            held=held_keep,
            E=E_keep,
            Eoff=Eoff_keep,
            jump=jnp.where(ok, has_ev | still, s["jump"]),
            fsal=pick(ok, fsal1, s["fsal"]),
            done=done,
            status=status,
            steps=steps,
            accepted=s["accepted"] + ok,
            rejected=s["rejected"] + (active & ~ok),
            crossings=s["crossings"] + jnp.where(ok, n_cross, 0),
            slides=s["slides"] + jnp.where(ok, n_slide, 0),
            saves=saves,
            sheld=sheld,
            si=si_new,
            it=s["it"] + 1,
        )
        if not refill:
            return new
        new.update(d=s["d"], rid=s["rid"], nxt=s["nxt"], runs=s["runs"])
        return jax.lax.cond(jnp.any(new["done"] & (new["rid"] < R)), store_and_load,
                            lambda st: st, new)

    def store_and_load(st):
        """Keep what is needed of the runs that are done; give their lanes the next pending
        runs (lanes left without one idle, with run index R)."""
        fin = st["done"] & (st["rid"] < R)
        to = jnp.where(fin, st["rid"], R)
        runs = {k: st["runs"][k].at[to].set(st[k], mode="drop") for k in KEEP}
        new_rid = st["nxt"] + jnp.cumsum(fin).astype(jnp.int32) - 1
        load = fin & (new_rid < R)
        cand = jnp.where(load, new_rid, 0)
        d_new = take(data, cand)
        fresh = init_lanes(theta0[cand], d_new)
        out = dict(st, runs=runs, d=pick(load, d_new, st["d"]))
        out.update({k: pick(load, v, st[k]) for k, v in fresh.items()})
        out["rid"] = jnp.where(load, new_rid, jnp.where(fin, R, st["rid"]))
        out["nxt"] = st["nxt"] + jnp.sum(load).astype(jnp.int32)
        out["saves"], out["sheld"] = put_start(st["saves"], st["sheld"],
                                               jnp.where(load, new_rid, R), fresh)
        return out

    final = eqxi.while_loop(
        lambda s: ~jnp.all(s["done"]),
        body,
        state0,
        # with refill, list scheduling ends by (sum of run lengths) / L + the longest run
        max_steps=(cfg.max_steps + 1) * ((-(-R // L) + 1) if refill else 1),
        kind=_LOOP_KIND,
    )
    fr = final["runs"] if refill else final  # per run: what was kept when it was done

    def finish(theta, ys, on, held, d):
        D = lane(d).slopes(on, held)
        losses = jax.vmap(lambda y: _true_loss(model, y, d))(ys)
        fl = _true_loss(model, theta, d)
        g = jax.grad(model.loss)(theta, d, D)
        return losses, fl, jnp.isfinite(fl) & jnp.all(jnp.isfinite(g))

    losses, final_loss, finite = vm(
        finish, fr["y"], final["saves"], fr["on"], fr["held"], data
    )
    status = jnp.where(finite, fr["status"], int(Status.NONFINITE)).astype(jnp.int32)
    saved = jax.vmap(jax.vmap(unravel))(final["saves"])
    fin = jax.vmap(unravel)(fr["y"])
    saved_net = eqx.combine(saved, skeleton)
    final_net = eqx.combine(fin, skeleton)
    sliding = _split_pairs(final["sheld"], n, model.hidden)
    out = dict(
        loss=losses,
        weights=saved_net.weights,
        biases=saved_net.biases,
        final_weights=final_net.weights,
        final_loss=final_loss,
        t_final=fr["t"],
        status=status,
        num_steps=fr["steps"],
        num_accepted=fr["accepted"],
        num_rejected=fr["rejected"],
        num_crossings=fr["crossings"],
        num_slides=fr["slides"],
        sliding=sliding,
    )
    if not batched:
        out = jax.tree_util.tree_map(lambda a: a[0], out)
    out["loop_steps"] = final["it"]
    return out


def _true_loss(model: _Model, theta, d):
    net = eqx.combine(model.unravel(theta), model.skeleton)
    return loss_value(model.cfg.loss, model.cfg.reduction, net(d.X), d.Y, d.mask)


def _split_pairs(flags, n, hidden):
    """(..., n * hsum) pair flags -> one (..., n, width) array per hidden layer."""
    f = flags.reshape(flags.shape[:-1] + (n, sum(hidden)))
    out, start = [], 0
    for w in hidden:
        out.append(f[..., start:start + w])
        start += w
    return tuple(out)
