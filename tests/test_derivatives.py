"""Derivatives of trajectory functionals (issue 18) against central finite differences in
float64, under both adjoints, batched and unbatched, and the time to fit by the implicit rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gfsim
from gfsim import analysis as A

RTOL = 1e-11  # tight solves: finite differences of the solver's output then see the flow


def _linear_problem():
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    X = jax.random.normal(k1, (6, 3))
    Y = jax.random.normal(k2, (6, 2))
    return gfsim.MLP((3, 4, 2), "linear", key=k3, init="gaussian"), gfsim.Dataset(X, Y)


def _functionals(traj, data, net):
    """Every functional of the issue at the end of a run, as one vector."""
    W1 = traj.final_weights[0]
    prod = traj.final_weights[1] @ W1
    return jnp.stack([
        traj.final_loss,
        A.stable_rank(W1),
        A.effective_rank(W1),
        A.spectral_frobenius_ratio(W1),
        A.singular_values(prod)[..., 0],
    ])


def _central(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


def _close(a, b, rtol=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)))


@pytest.mark.parametrize("adjoint", ["reverse", "forward"])
def test_linear_net_every_functional_against_finite_differences(adjoint):
    base, data = _linear_problem()
    t1 = 1.5

    def run(scale, X, Y, t):
        d = gfsim.Dataset(X, Y)
        tr = gfsim.simulate(gfsim.scaled(base, scale), d, t, reduction="sum", rtol=RTOL,
                            num_saves=2, adjoint=adjoint)
        return _functionals(tr, d, base)

    args = (1.0, data.X, data.Y, t1)
    jac = jax.jacrev if adjoint == "reverse" else jax.jacfwd
    d_scale, d_X, d_Y, d_t1 = jac(run, argnums=(0, 1, 2, 3))(*args)
    _close(d_scale, _central(lambda s: run(s, *args[1:]), 1.0, 1e-4))
    _close(d_t1, _central(lambda t: run(1.0, data.X, data.Y, t), t1, 1e-4))
    # the data: a random direction (one finite difference instead of one per entry)
    for grad, which in ((d_X, 1), (d_Y, 2)):
        v = jax.random.normal(jax.random.key(which), args[which].shape)

        def along(e, which=which, v=v):
            a = list(args)
            a[which] = a[which] + e * v
            return run(*a)

        _close(jnp.tensordot(grad, v, axes=v.ndim), _central(along, 0.0, 1e-5))
    # and an independent truth for t1: dL/dt = -||grad L||^2 along the flow
    tr = gfsim.simulate(base, data, t1, reduction="sum", rtol=RTOL, num_saves=2)
    end = gfsim.MLP.from_weights(tr.final_weights, "linear")
    g = jax.grad(lambda n: gfsim.objective(n, data, reduction="sum"))(end)
    g2 = sum(jnp.sum(w ** 2) for w in g.weights)
    np.testing.assert_allclose(float(d_t1[0]), -float(g2), rtol=1e-7)


def test_batched_gradients_equal_the_runs_one_by_one():
    """vmap with an adaptive controller: each run keeps its own steps, and the gradient of a
    sum over a batch is each run's own gradient."""
    base, data = _linear_problem()
    scales = jnp.array([0.5, 1.0, 2.0])
    batch = jax.vmap(lambda s: gfsim.scaled(base, s))(scales)

    def total(nets):
        tr = gfsim.simulate(nets, data, 1.5, reduction="sum", rtol=1e-9, num_saves=2)
        return jnp.sum(A.stable_rank(tr.final_weights[0])), tr.num_steps

    g_batch, steps = jax.grad(total, has_aux=True)(batch)
    assert len(set(np.asarray(steps).tolist())) > 1  # the runs took different step counts
    for i in range(3):
        g_one, _ = jax.grad(total, has_aux=True)(batch[i])
        for a, b in zip(g_batch.weights, g_one.weights):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_stop_time_and_its_derivative_against_finite_differences():
    base, data = _linear_problem()
    tol = 0.5 * float(gfsim.simulate(base, data, 50.0, reduction="sum", rtol=1e-10,
                                     num_saves=2).final_loss) + 0.5 * float(
        gfsim.objective(base, data, reduction="sum"))

    def t_star(scale, tol=tol):
        return gfsim.stop_time(gfsim.scaled(base, scale), data, tol, 50.0, reduction="sum",
                               rtol=RTOL)

    t = float(t_star(1.0))
    assert 0.0 < t < 50.0
    # the loss at t* is tol (the crossing, not the end of the step that crossed it)
    tr = gfsim.simulate(base, data, t, reduction="sum", rtol=RTOL, num_saves=2)
    np.testing.assert_allclose(float(tr.final_loss), tol, rtol=1e-9)
    _close(jax.grad(t_star)(1.0), _central(t_star, 1.0, 1e-4))
    _close(jax.grad(t_star, argnums=1)(1.0, tol), _central(lambda q: t_star(1.0, q), tol,
                                                         1e-4 * tol))
    # a batch (the run itself and a slower one), and a horizon too short to get there
    nets = jax.vmap(lambda s: gfsim.scaled(base, s))(jnp.array([1.0, 0.9]))
    both = gfsim.stop_time(nets, data, tol, 50.0, reduction="sum", rtol=RTOL)
    assert abs(float(both[0]) - t) < 1e-9 * t and float(both[1]) != float(both[0])
    short = gfsim.stop_time(base, data, tol, 0.5 * t, reduction="sum", rtol=RTOL)
    assert np.isinf(float(short))
    # already below tol at the start: 0
    high = 2.0 * float(gfsim.objective(base, data, reduction="sum"))
    assert float(gfsim.stop_time(base, data, high, 5.0, reduction="sum", rtol=RTOL)) == 0.0
    with pytest.raises(ValueError, match="tol="):
        gfsim.stop_time(base, data, -1.0, 5.0)
    with pytest.raises(ValueError, match="stop_grad is set by stop_time"):
        gfsim.stop_time(base, data, tol, 5.0, stop_grad=1e-3)


@pytest.mark.parametrize("widths,batched", [((3, 4, 1), True), ((3, 4, 4, 1), False)])
def test_relu_nets_away_from_kinks_every_functional_both_adjoints(widths, batched):
    """Depths 2 (a batch of two) and 3 away from kinks (positive data and weights: every unit
    stays on, the field is smooth), with plain Diffrax in both modes; through the event solver:
    the crossing test below and test_kinks.py's reverse-mode one."""
    k1, k2 = jax.random.split(jax.random.key(3))
    X = jnp.abs(jax.random.normal(k1, (5, 3)))
    Y = jnp.abs(jax.random.normal(k2, (5, 1)))
    base = gfsim.MLP(widths, key=jax.random.key(6), runs=2 if batched else None)
    base = gfsim.MLP.from_weights([jnp.abs(w) for w in base.weights])
    data = gfsim.Dataset(X, Y)

    def f(s, t1, adjoint):
        tr = gfsim.simulate(gfsim.scaled(base, s), data, t1, rtol=RTOL, num_saves=2,
                            adjoint=adjoint, method="plain")
        z = A.preactivations(tr.final_weights, X if not batched else X[None])[:-1]
        zmin = jnp.min(jnp.stack([jnp.min(q) for q in z]))
        # (plain Diffrax stalls at a kink: reaching t1 says none was met on the way)
        return _functionals(tr, data, base), jnp.where(jnp.all(tr.status == 0), zmin, -1.0)

    fwd, zmin = jax.jacfwd(lambda s, t: f(s, t, "forward"), argnums=(0, 1), has_aux=True)(
        0.7, 1.0)
    rev = jax.jacrev(lambda s, t: f(s, t, "reverse")[0], argnums=(0, 1))(0.7, 1.0)
    assert float(zmin) > 0  # no kink reached: every unit on at the end too
    fd_s = _central(lambda s: f(s, 1.0, "forward")[0], 0.7, 1e-4)
    fd_t = _central(lambda t: f(0.7, t, "forward")[0], 1.0, 1e-4)
    for got in (fwd, rev):
        _close(got[0], fd_s)
        _close(got[1], fd_t)


def test_forward_mode_through_crossings_and_a_sliding_episode():
    """The non-smooth issue's depth-2 case to t = 3: 7 crossings and 5 slides on the way; the
    forward-mode derivative of the final stable rank in the init scale equals finite
    differences (the reverse-mode one is tested in test_kinks.py)."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    data = gfsim.Dataset(jax.random.normal(k1, (6, 5)), jax.random.normal(k2, (6, 2)))
    base = gfsim.MLP((5, 8, 2), init="gaussian", key=k3)

    def f(s):
        tr = gfsim.simulate(gfsim.scaled(base, s), data, 3.0, reduction="sum", rtol=1e-10,
                            num_saves=2, adjoint="forward")
        return A.stable_rank(tr.final_weights[0]), (tr.num_crossings, tr.num_slides)

    d, (crossings, slides) = jax.jacfwd(f, has_aux=True)(1.0)
    assert int(crossings) >= 1 and int(slides) >= 1
    _close(d, _central(lambda s: f(s)[0], 1.0, 1e-4))


def test_bad_adjoint_names_the_field():
    base, data = _linear_problem()
    with pytest.raises(ValueError, match="adjoint='backwards' is not allowed"):
        gfsim.simulate(base, data, 1.0, adjoint="backwards")
    import diffrax

    with pytest.raises(ValueError, match="adjoint=BacksolveAdjoint cannot be used with "
                                         "method='events'"):
        gfsim.methods.Events(adjoint=diffrax.BacksolveAdjoint())
