"""gfsim.simulate against independent truths: closed forms, conserved quantities, scipy, the
paper's analytic facts, and itself run one by one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import flat, saxe_modes, scipy_flow

import gfsim
from gfsim import analysis as A
from gfsim.trajectory import Status

# -- closed form ------------------------------------------------------------------------------


def test_saxe_sigmoidal_modes_closed_form():
    """Depth-2 linear net, whitened inputs, balanced spectral init: each singular value of the
    end-to-end map follows a(t) = s / (1 + (s/a0 - 1) exp(-2 s t)) (Saxe et al. 2014)."""
    s_target = np.array([3.0, 2.0, 1.0])
    data = gfsim.data.whitened_regression(jax.random.key(0), 8, 4, 3, s_target)
    U, s, Vt = np.linalg.svd(np.asarray(data.Y.T @ data.X))
    np.testing.assert_allclose(s, s_target, rtol=1e-12)
    a0 = np.array([1e-3, 2e-3, 5e-4])
    R = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 3)))[0]
    W1 = R @ np.diag(np.sqrt(a0)) @ Vt[:3]
    W2 = U[:, :3] @ np.diag(np.sqrt(a0)) @ R.T
    net = gfsim.MLP.from_weights([W1, W2], "linear")
    ts = np.linspace(0.0, 12.0, 49)
    tr = gfsim.simulate(net, data, 12.0, ts=ts, reduction="sum", rtol=1e-10, atol=1e-14)
    assert int(tr.status) == Status.REACHED_T1
    product = np.asarray(A.end_to_end(tr.weights))  # (T, 3, 4)
    # Project on the target's singular vectors: the modes stay decoupled, so this is diagonal.
    modes = np.einsum("ia,tij,aj->ta", U[:, :3], product, Vt[:3])
    expected = saxe_modes(s[None, :], a0[None, :], ts[:, None])
    np.testing.assert_allclose(modes, expected, rtol=1e-8)
    sv = np.asarray(A.singular_values(product))
    np.testing.assert_allclose(sv, -np.sort(-expected, axis=1), rtol=1e-8)
    # The sigmoid really happened: from 1e-3 to within 1e-6 of the target.
    np.testing.assert_allclose(sv[-1], s, rtol=1e-6)


# -- conserved quantities ---------------------------------------------------------------------


def test_linear_depth3_matrix_invariant_conserved_gd_breaks_it():
    data = gfsim.data.sphere(jax.random.key(2), 6, 4, d_out=3, targets="gaussian")
    net = gfsim.MLP((4, 5, 5, 3), "linear", key=jax.random.key(3), scale=1.0)
    tr = gfsim.simulate(net, data, 20.0, reduction="sum", rtol=1e-10, atol=1e-14)
    gdt = gfsim.gd(net, data, 1e-2, 2000, reduction="sum")
    gf_drift = float(A.balance_drift(tr.weights, kind="matrix"))
    gd_drift = float(A.balance_drift(gdt.weights, kind="matrix"))
    assert int(tr.status) == Status.REACHED_T1
    # The flow moved far from the start: the invariant is not trivially constant.
    moved = float(jnp.linalg.norm(flat(tr.final_weights) - flat(net.weights)))
    assert moved > 0.5
    assert gf_drift <= 1e-10
    assert gd_drift >= 1e3 * max(gf_drift, 1e-15)
    assert gd_drift > 1e-5


def test_relu_paper_setting_neuron_invariants_conserved():
    data = gfsim.data.paper_pair()
    net = gfsim.MLP((2, 2, 2), key=jax.random.key(0), init="disk", scale=1e-4, runs=16)
    tr = gfsim.simulate(net, data, 300.0, rtol=1e-10, atol=1e-14)
    gdt = gfsim.gd(net, data, 1e-2, 30000)
    gf = np.asarray(A.balance_drift(tr.weights, kind="neuron"))
    gd = np.asarray(A.balance_drift(gdt.weights, kind="neuron"))
    assert np.all(np.asarray(tr.status) == Status.REACHED_T1)
    assert np.max(gf) <= 1e-10
    assert np.max(gd) >= 1e4 * np.max(gf)
    # Weights grew from 1e-4 to O(1): the invariants were tested across a real change of scale.
    assert float(jnp.max(jnp.abs(tr.final_weights[1]))) > 0.5


# -- an independent solver --------------------------------------------------------------------


def test_relu_endpoint_matches_scipy_dop853():
    runs = 8
    kd, kn = jax.random.split(jax.random.key(0))
    data = gfsim.data.sphere(kd, 2, 10, runs=runs)
    net = gfsim.MLP((10, 20, 1), key=kn, scale=0.1, runs=runs)
    ts = np.array([0.0, 1.0, 10.0])
    kw = dict(ts=ts, reduction="sum", rtol=1e-12, atol=1e-15, max_steps=20000)
    tr = gfsim.simulate(net, data, 10.0, **kw)
    # The event-driven default gets through every run, sliding ones included.
    assert np.all(np.asarray(tr.status) == Status.REACHED_T1)
    # The plain solver stalls where a run stays on a kink and says so (max_steps), never
    # ending silently; it gets through brief slides. Compare both with scipy where it ends.
    plain = gfsim.simulate(net, data, 10.0, method="plain", **kw)
    pstat = np.asarray(plain.status)
    assert set(pstat.tolist()) <= {Status.REACHED_T1, Status.MAX_STEPS}
    smooth = np.where(pstat == Status.REACHED_T1)[0]
    assert 2 <= len(smooth) < runs
    errors = []
    for i in smooth[:3]:
        i = int(i)
        ref, _ = scipy_flow(net[i], data[i], ts)
        for got in (tr[i], plain[i]):
            got = np.asarray(flat(got.weights))
            errors.append(np.max(np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)))
    assert np.median(errors) <= 5e-8
    # The reference is not trivially close: the flow moved the weights by O(1) relative.
    assert float(tr[int(smooth[0])].final_loss) < 1e-6


# -- the paper's analytic fact ----------------------------------------------------------------


def test_paper_pair_x1_only_x2_only_start_ends_at_stable_rank_1980():
    data = gfsim.data.paper_pair()
    net = gfsim.MLP((2, 2, 2), key=jax.random.key(1), init="disk", scale=1e-4, runs=64)
    pre = np.einsum("rhd,nd->rhn", np.asarray(net.weights[0]), np.asarray(data.X))
    only_x1 = (pre[..., 0] > 0) & (pre[..., 1] <= 0)
    only_x2 = (pre[..., 1] > 0) & (pre[..., 0] <= 0)
    split = (only_x1[:, 0] & only_x2[:, 1]) | (only_x2[:, 0] & only_x1[:, 1])
    assert split.sum() >= 1  # probability 2 (theta/2pi)^2 ~ 0.13 per seed
    tr = gfsim.simulate(net, data, 3000.0, rtol=1e-10, stop_loss=1e-14)
    x1, x2 = np.asarray(data.X)
    cos = x1 @ x2
    np.testing.assert_allclose(cos, -0.01005, atol=1e-5)
    expected = 2.0 / (1.0 + abs(cos))
    sr = np.asarray(A.stable_rank(tr.final_weights[0]))
    loss = np.asarray(tr.final_loss)
    assert np.all(loss[split] < 1e-4)
    np.testing.assert_allclose(sr[split], expected, atol=1e-3)
    assert abs(expected - 1.980) < 1e-3
    # Contrast: a zero-loss rank-1 W_1 exists, so 1.98 is a choice of GF, not a necessity.
    w = np.array([1.0, 0.0])
    assert (w @ x1 > 0) and (w @ x2 < 0)


# -- batching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["plain", "events"])
def test_batched_equals_one_by_one(method):
    runs = 3
    kd, kn = jax.random.split(jax.random.key(7))
    data = gfsim.data.sphere(kd, 3, 4, d_out=2, targets="gaussian", runs=runs)
    net = gfsim.MLP((4, 6, 2), key=kn, runs=runs)
    kw = dict(reduction="sum", rtol=1e-9, num_saves=8, max_steps=2000, method=method)
    batch = gfsim.simulate(net, data, 5.0, **kw)
    # A mixed batch: lanes that finish early and one that slides (the plain solver exhausts its
    # budget there; the event-driven one does not) must not disturb each other.
    expected = ["reached_t1"] * 3
    if method == "plain":
        expected = ["max_steps", "reached_t1", "reached_t1"]
    assert sorted(batch.status_labels().tolist()) == expected
    for i in range(runs):
        one = gfsim.simulate(net[i], data[i], 5.0, **kw)
        assert int(batch.status[i]) == int(one.status)
        np.testing.assert_allclose(batch.t_final[i], one.t_final, rtol=1e-12)
        for wb, wo in zip(batch[i].weights, one.weights):
            np.testing.assert_allclose(wb, wo, rtol=1e-12, atol=1e-14)
        assert int(batch.num_steps[i]) == int(one.num_steps)


def test_one_net_many_datasets_and_grid():
    kd, kn = jax.random.split(jax.random.key(6))
    data = gfsim.data.sphere(kd, 3, 4, d_out=2, targets="gaussian", runs=2)
    nets = gfsim.MLP((4, 6, 2), "linear", key=kn, runs=3)
    shared = gfsim.simulate(nets[0], data, 2.0, num_saves=4)
    assert shared.loss.shape == (2, 4)
    gn, gdata = gfsim.grid(nets, data)
    both = gfsim.simulate(gn, gdata, 2.0, num_saves=4)
    assert both.loss.shape == (6, 4)
    assert np.all(np.asarray(both.status) == Status.REACHED_T1)
    # run = dataset * n_nets + net
    np.testing.assert_allclose(both.loss[1 * 3 + 0], shared.loss[1], rtol=1e-12)


def test_no_recompile_for_new_values_of_the_same_shapes():
    kd, kn = jax.random.split(jax.random.key(7))
    data = gfsim.data.sphere(kd, 3, 4, runs=4)
    net = gfsim.MLP((4, 5, 1), key=kn, runs=4, scale=0.5)
    kw = dict(num_saves=5, stop_loss=1e-9)
    gfsim.simulate(net, data, 2.0, rtol=1e-6, **kw)
    before = gfsim.flow.trace_count()
    net2 = gfsim.MLP((4, 5, 1), key=jax.random.key(8), runs=4, scale=0.1)  # new init scale
    data2 = gfsim.Dataset(data.X * 0.5, -data.Y)  # new data values
    out = gfsim.simulate(net2, data2, 3.5, rtol=1e-7, atol=1e-12, stop_loss=1e-8, num_saves=5)
    gfsim.simulate(net, data, jnp.asarray(1.0), rtol=jnp.asarray(1e-5), **kw)
    assert gfsim.flow.trace_count() == before
    np.testing.assert_allclose(out.ts[-1], 3.5)


# -- differentiability ------------------------------------------------------------------------


def test_gradient_through_the_flow_matches_finite_differences():
    kd, kn = jax.random.split(jax.random.key(9))
    data = gfsim.data.sphere(kd, 3, 4, d_out=2, targets="gaussian")
    net = gfsim.MLP((4, 3, 2), "linear", key=kn)

    def final_loss(w0, Y):
        n = gfsim.MLP.from_weights([w0, net.weights[1]], "linear")
        tr = gfsim.simulate(n, gfsim.Dataset(data.X, Y), 1.5, reduction="sum", rtol=1e-11,
                            num_saves=3)
        return tr.final_loss

    g_w, g_y = jax.grad(final_loss, argnums=(0, 1))(net.weights[0], data.Y)
    vw = jax.random.normal(jax.random.key(10), net.weights[0].shape)
    vy = jax.random.normal(jax.random.key(11), data.Y.shape)
    eps = 1e-5
    for g, v, arg in ((g_w, vw, 0), (g_y, vy, 1)):
        args = [net.weights[0], data.Y]
        plus, minus = list(args), list(args)
        plus[arg] = plus[arg] + eps * v
        minus[arg] = minus[arg] - eps * v
        fd = (final_loss(*plus) - final_loss(*minus)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.sum(g * v)), float(fd), rtol=1e-5)


# -- gradient descent converges to the flow at first order ------------------------------------


def test_gd_converges_to_gf_at_first_order_in_lr():
    kd, kn = jax.random.split(jax.random.key(12))
    data = gfsim.data.sphere(kd, 3, 4, d_out=2, targets="gaussian")
    net = gfsim.MLP((4, 3, 2), "linear", key=kn)
    T = 1.0
    ref = gfsim.simulate(net, data, T, ts=jnp.array([0.0, T]), reduction="sum", rtol=1e-11)
    errs = []
    for lr, steps in ((1e-2, 100), (5e-3, 200)):
        g = gfsim.gd(net, data, lr, steps, save_steps=[0, steps], reduction="sum")
        np.testing.assert_allclose(g.ts, [0.0, T], rtol=1e-12)
        errs.append(float(jnp.linalg.norm(flat(g.final_weights) - flat(ref.final_weights))))
    assert errs[0] > 1e-5  # GD really differs from GF ...
    assert errs[0] / errs[1] == pytest.approx(2.0, rel=0.05)  # ... by O(lr)


# -- status: never a silent truncation --------------------------------------------------------


def test_status_max_steps_and_stop_loss_fill_nan():
    kd, kn = jax.random.split(jax.random.key(13))
    data = gfsim.data.sphere(kd, 3, 4, d_out=2, targets="gaussian")
    net = gfsim.MLP((4, 3, 2), "linear", key=kn)
    ts = jnp.linspace(0.0, 50.0, 11)
    few = gfsim.simulate(net, data, 50.0, ts=ts, max_steps=5, reduction="sum")
    assert int(few.status) == Status.MAX_STEPS
    assert 0 < float(few.t_final) < 50.0
    assert np.all(np.isnan(np.asarray(few.loss)[np.asarray(ts) > float(few.t_final)]))
    assert np.isfinite(float(few.final_loss))
    full = gfsim.simulate(net, data, 50.0, ts=ts, reduction="sum")
    target = float(full.loss[3]) * 0.9
    stop = gfsim.simulate(net, data, 50.0, ts=ts, stop_loss=target, reduction="sum")
    assert int(stop.status) == Status.STOP_LOSS
    assert float(stop.final_loss) < target
    assert float(stop.t_final) < 50.0
    assert np.isnan(float(stop.loss[-1]))
    np.testing.assert_allclose(stop.loss[:3], full.loss[:3], rtol=1e-6)
    # Already below stop_loss at t = 0: stops at once, and the t = 0 slot still holds the start.
    now = gfsim.simulate(net, data, 50.0, ts=ts, stop_loss=2 * float(full.loss[0]),
                         reduction="sum")
    assert int(now.status) == Status.STOP_LOSS and float(now.t_final) == 0.0
    np.testing.assert_allclose(now.loss[0], full.loss[0], rtol=1e-12)
    np.testing.assert_array_equal(now.weights[0][0], net.weights[0])


def test_status_nonfinite_on_overflow():
    X = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    data = gfsim.Dataset(X, jnp.array([[1.0], [-1.0]]))
    net = gfsim.MLP.from_weights([jnp.array([[-30.0, 30.0], [-30.0, 30.0]]),
                                  jnp.full((1, 2), 30.0)], "linear")
    tr = gfsim.simulate(net, data, 1.0, loss="exponential", max_steps=100)
    assert int(tr.status) == Status.NONFINITE
    assert tr.status_labels().item() == "nonfinite"


# -- every registered solver ------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_problem():
    data = gfsim.data.sphere(jax.random.key(2), 6, 4, d_out=3, targets="gaussian")
    net = gfsim.MLP((4, 5, 3), "linear", key=jax.random.key(3))
    ref = gfsim.simulate(net, data, 5.0, solver="dopri8", rtol=1e-12, atol=1e-14, num_saves=4,
                         reduction="sum")
    return net, data, ref


@pytest.mark.parametrize("solver", ["tsit5", "dopri5", "bosh3", "kvaerno5", "heun"])
def test_each_solver_agrees_with_dopri8_reference(linear_problem, solver):
    net, data, ref = linear_problem
    tr = gfsim.simulate(net, data, 5.0, solver=solver, rtol=1e-8, num_saves=4, reduction="sum")
    assert int(tr.status) == Status.REACHED_T1
    assert tr.method == f"gf:{solver}"
    err = float(jnp.linalg.norm(flat(tr.final_weights) - flat(ref.final_weights)))
    assert err <= 1e-7 * float(jnp.linalg.norm(flat(ref.final_weights)))
    moved = float(jnp.linalg.norm(flat(ref.final_weights) - flat(net.weights)))
    assert moved > 0.1
