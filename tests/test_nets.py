"""Tests for gfsim.nets: initialisations, construction, validation and the forward pass.

Every check compares against something independent of the code under test: the distribution an
init promises (empirical moments, orthogonality, balancedness identities), or a forward pass
computed by hand / with numpy.
"""

import math

import jax
import numpy as np
import pytest
import scipy.stats

import gfsim
from gfsim.nets import INITS, MLP

KEY = jax.random.key(0)


def numpy_forward(weights, x, activation="relu", biases=None, slope=0.01):
    """Reference forward pass N(x) = W_k s(... s(W_1 x + b_1) ...) + b_k in numpy."""
    acts = {
        "relu": lambda z: np.maximum(z, 0.0),
        "linear": lambda z: z,
        "leaky_relu": lambda z: np.where(z >= 0, z, slope * z),
    }
    h = np.asarray(x, dtype=np.float64)
    k = len(weights)
    for j, w in enumerate(weights):
        z = h @ np.asarray(w).T
        if biases is not None:
            z = z + np.asarray(biases[j])
        h = z if j == k - 1 else acts[activation](z)
    return h


# ----------------------------------------------------------------------------------------------
# Initialisations: the promised distributions


def test_default_dtype_is_float64():
    net = MLP((3, 4, 2), key=KEY)
    assert all(w.dtype == np.float64 for w in net.weights)


def test_gaussian_init_std_is_scale_over_sqrt_fan_in():
    scale = 2.0
    net = MLP((400, 100, 50), key=KEY, init="gaussian", scale=scale)
    w1, w2 = (np.asarray(w) for w in net.weights)
    assert w1.shape == (100, 400) and w2.shape == (50, 100)
    # Layer 1: 40k entries, expected std 2/20 = 0.1; layer 2: 5k entries, expected 2/10 = 0.2.
    assert np.std(w1) == pytest.approx(scale / math.sqrt(400), rel=0.03)
    assert np.std(w2) == pytest.approx(scale / math.sqrt(100), rel=0.05)
    assert abs(np.mean(w1)) < 0.05 * scale / math.sqrt(400)


def test_gaussian_init_default_scale_is_lecun():
    w = np.asarray(MLP((400, 100, 50), key=KEY, init="gaussian").weights[0])
    assert np.std(w) == pytest.approx(1 / 20, rel=0.03)


def test_normal_init_std_is_scale_independent_of_fan_in():
    net = MLP((400, 100, 50), key=KEY, init="normal", scale=0.5)
    for w in net.weights:
        assert np.std(np.asarray(w)) == pytest.approx(0.5, rel=0.05)


def test_xavier_init_std():
    net = MLP((400, 100, 50), key=KEY, init="xavier", scale=1.5)
    w1, w2 = (np.asarray(w) for w in net.weights)
    assert np.std(w1) == pytest.approx(1.5 * math.sqrt(2 / 500), rel=0.03)
    assert np.std(w2) == pytest.approx(1.5 * math.sqrt(2 / 150), rel=0.05)


def test_orthogonal_init_is_scaled_semi_orthogonal():
    scale = 0.5
    net = MLP((3, 4, 4, 2), key=KEY, init="orthogonal", scale=scale)
    w1, w2, w3 = (np.asarray(w) for w in net.weights)
    assert [w.shape for w in (w1, w2, w3)] == [(4, 3), (4, 4), (2, 4)]
    # Tall W1 (4, 3): orthonormal columns. Square W2: orthogonal. Wide W3 (2, 4): orthonormal rows.
    np.testing.assert_allclose(w1.T @ w1, scale**2 * np.eye(3), atol=1e-13)
    np.testing.assert_allclose(w2.T @ w2, scale**2 * np.eye(4), atol=1e-13)
    np.testing.assert_allclose(w2 @ w2.T, scale**2 * np.eye(4), atol=1e-13)
    np.testing.assert_allclose(w3 @ w3.T, scale**2 * np.eye(2), atol=1e-13)


@pytest.mark.parametrize("widths", [(4, 6, 5, 3), (4, 2, 5, 3)])
def test_balanced_init_is_exactly_balanced(widths):
    net = MLP(widths, "linear", key=KEY, init="balanced", scale=1.3)
    ws = [np.asarray(w) for w in net.weights]
    assert [w.shape for w in ws] == [(o, i) for i, o in zip(widths[:-1], widths[1:])]
    for j in range(len(ws) - 1):
        np.testing.assert_allclose(ws[j + 1].T @ ws[j + 1], ws[j] @ ws[j].T, rtol=0, atol=1e-12)
    r = min(widths)
    prod = ws[2] @ ws[1] @ ws[0]
    assert np.linalg.matrix_rank(prod) == r
    # Every layer carries the k-th root of the end-to-end spectrum: sv(W_j)[:r] = sv(prod)^(1/3).
    s_prod = np.linalg.svd(prod, compute_uv=False)[:r]
    for w in ws:
        s = np.linalg.svd(w, compute_uv=False)
        np.testing.assert_allclose(s[:r], s_prod ** (1 / 3), rtol=1e-10)
        assert np.all(s[r:] < 1e-12)


def test_disk_init_rows_in_ball_and_last_layer_zero():
    scale = 0.3
    net = MLP((2, 1000, 3, 1), key=KEY, init="disk", scale=scale)
    w1, w2, w3 = (np.asarray(w) for w in net.weights)
    radius = np.linalg.norm(w1, axis=1)
    assert np.all(radius <= scale * (1 + 1e-12))
    assert np.all(w3 == 0.0) and w3.shape == (1, 3)
    # Uniform in a disk: (radius/scale)^2 ~ U[0, 1]; the directions are uniform on the circle.
    assert scipy.stats.kstest((radius / scale) ** 2, "uniform").pvalue > 1e-3
    angles = np.arctan2(w1[:, 1], w1[:, 0])
    uniform_angle = scipy.stats.uniform(loc=-np.pi, scale=2 * np.pi)
    assert scipy.stats.kstest(angles, uniform_angle.cdf).pvalue > 1e-3
    # Middle layer: rows uniform in the 1000-dimensional ball of the same radius, so
    # (r/scale)^1000 ~ U[0, 1]: the radii crowd just under the boundary.
    r2 = np.linalg.norm(w2, axis=1)
    assert np.all(r2 <= scale * (1 + 1e-12)) and np.all(r2 > 0.98 * scale)


# (balanced is left out: its vmapped SVD/QR costs seconds of compile for little extra coverage.)
@pytest.mark.parametrize("init", ["gaussian", "normal", "xavier", "disk"])
def test_runs_give_leading_axis_and_independent_nets(init):
    widths = (3, 4, 2)
    net = MLP(widths, "linear", key=KEY, init=init, runs=3)
    assert net.runs == 3 and net.is_batched
    assert [w.shape for w in net.weights] == [(3, 4, 3), (3, 2, 4)]
    w1 = np.asarray(net.weights[0])
    assert not np.allclose(w1[0], w1[1]) and not np.allclose(w1[1], w1[2])
    # Run i is the net one would build alone from the i-th key split off ``key``.
    keys = jax.random.split(KEY, 3)
    single = MLP(widths, "linear", key=keys[1], init=init)
    for wb, ws in zip(net.weights, single.weights):
        np.testing.assert_allclose(np.asarray(wb[1]), np.asarray(ws), atol=1e-12)
    if init == "disk":  # default radius 1e-4, last layer zero in every run
        assert np.all(np.linalg.norm(w1, axis=-1) <= 1e-4 * (1 + 1e-12))
        assert np.all(np.asarray(net.weights[1]) == 0.0)


def test_different_keys_give_different_nets():
    a = MLP((3, 4, 2), key=jax.random.key(1))
    b = MLP((3, 4, 2), key=jax.random.key(2))
    assert not np.allclose(np.asarray(a.weights[0]), np.asarray(b.weights[0]))


def test_bias_option_gives_zero_biases_and_same_outputs():
    net = MLP((3, 4, 2), key=KEY, bias=True)
    assert [b.shape for b in net.biases] == [(4,), (2,)]
    assert all(np.all(np.asarray(b) == 0) for b in net.biases)
    batch = MLP((3, 4, 2), "linear", key=KEY, bias=True, runs=3)
    assert [b.shape for b in batch.biases] == [(3, 4), (3, 2)]
    x = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(np.asarray(net(x)), numpy_forward(net.weights, x), atol=1e-13)


# ----------------------------------------------------------------------------------------------
# Forward pass


W1 = np.array([[1.0, -1.0], [2.0, 0.0]])
W2 = np.array([[3.0, 1.0]])
X1 = np.array([[1.0, 2.0]])  # pre-activations (-1, 2)


@pytest.mark.parametrize(
    "activation, slope, expected",
    [
        ("relu", 0.01, 2.0),  # 3*0 + 1*2
        ("linear", 0.01, -1.0),  # 3*(-1) + 2
        ("leaky_relu", 0.1, 1.7),  # 3*(-0.1) + 2
        ("leaky_relu", 0.01, 1.97),  # default slope
    ],
)
def test_forward_hand_computed(activation, slope, expected):
    net = MLP.from_weights([W1, W2], activation, negative_slope=slope)
    assert float(net(X1)[0, 0]) == pytest.approx(expected, abs=1e-14)
    # A single 1-D input gives a 1-D output.
    out = net(X1[0])
    assert out.shape == (1,) and float(out[0]) == pytest.approx(expected, abs=1e-14)


def test_forward_default_leaky_slope_is_001():
    net = MLP.from_weights([W1, W2], "leaky_relu")
    assert net.negative_slope == 0.01
    assert float(net(X1)[0, 0]) == pytest.approx(1.97, abs=1e-14)


@pytest.mark.parametrize("activation", ["relu", "linear", "leaky_relu"])
def test_forward_matches_numpy_with_biases(activation):
    rng = np.random.default_rng(1)
    widths = (3, 5, 4, 2)
    ws = [rng.normal(size=(o, i)) for i, o in zip(widths[:-1], widths[1:])]
    bs = [rng.normal(size=(o,)) for o in widths[1:]]
    x = rng.normal(size=(7, 3))
    net = MLP.from_weights(ws, activation, biases=bs, negative_slope=0.2)
    expected = numpy_forward(ws, x, activation, biases=bs, slope=0.2)
    np.testing.assert_allclose(np.asarray(net(x)), expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.asarray(net(x[2])), expected[2], rtol=1e-13, atol=1e-13)
    # Without biases the outputs differ (the biases are really used).
    nobias = MLP.from_weights(ws, activation, negative_slope=0.2)
    np.testing.assert_allclose(np.asarray(nobias(x)), numpy_forward(ws, x, activation, slope=0.2),
                               rtol=1e-13, atol=1e-13)


def test_preactivations_match_numpy():
    rng = np.random.default_rng(2)
    ws = [rng.normal(size=(4, 3)), rng.normal(size=(2, 4))]
    x = rng.normal(size=(5, 3))
    z = MLP.from_weights(ws).preactivations(x)
    z1 = x @ ws[0].T
    np.testing.assert_allclose(np.asarray(z[0]), z1, atol=1e-13)
    np.testing.assert_allclose(np.asarray(z[1]), np.maximum(z1, 0) @ ws[1].T, atol=1e-13)


def test_relu_net_is_positively_homogeneous():
    # Bias-free ReLU net of depth k: scaling every layer by c scales the output by c^k.
    rng = np.random.default_rng(3)
    ws = [rng.normal(size=(4, 3)), rng.normal(size=(5, 4)), rng.normal(size=(2, 5))]
    x = rng.normal(size=(6, 3))
    out = np.asarray(MLP.from_weights(ws)(x))
    out_scaled = np.asarray(MLP.from_weights([2.0 * w for w in ws])(x))
    np.testing.assert_allclose(out_scaled, 8.0 * out, rtol=1e-13)


# ----------------------------------------------------------------------------------------------
# from_weights, batches and indexing


def test_from_weights_2d():
    rng = np.random.default_rng(4)
    ws = [rng.normal(size=(4, 3)), rng.normal(size=(2, 4))]
    net = MLP.from_weights(ws, "linear")
    assert net.widths == (3, 4, 2) and net.depth == 2 and net.runs is None
    assert not net.is_batched
    for a, b in zip(net.weights, ws):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_from_weights_3d_batch_and_indexing():
    rng = np.random.default_rng(5)
    ws = [rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 1, 4))]
    x = rng.normal(size=(5, 2))
    net = MLP.from_weights(ws, "relu")
    assert net.runs == 3 and net.widths == (2, 4, 1) and net.depth == 2
    for i in range(3):
        single = net[i]
        assert single.runs is None
        np.testing.assert_allclose(
            np.asarray(single(x)), numpy_forward([w[i] for w in ws], x), atol=1e-13
        )
    sub = net[1:]
    assert sub.runs == 2
    np.testing.assert_array_equal(np.asarray(sub.weights[0][0]), ws[0][1])
    # vmap over the run axis gives the same as the loop.
    out = jax.vmap(lambda n: n(x))(net)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(out[i]), numpy_forward([w[i] for w in ws], x),
                                   atol=1e-13)


def test_batched_net_cannot_be_called_and_single_net_cannot_be_indexed():
    batch = MLP.from_weights([np.ones((2, 3, 2)), np.ones((2, 1, 3))])
    with pytest.raises(TypeError, match="single net"):
        batch(np.ones((1, 2)))
    with pytest.raises(TypeError, match="batch"):
        batch[0][0]


@pytest.mark.parametrize(
    "weights, match",
    [
        (
            [np.ones((4, 3)), np.ones((2, 5))],
            r"weights\[1\] takes 5 inputs but weights\[0\] gives 4 outputs",
        ),
        ([np.ones((4, 3)), np.ones((2, 2, 4))], r"ndims \[2, 3\]"),
        ([np.ones(3)], r"ndims \[1\]"),
        ([np.ones((2, 4, 3)), np.ones((3, 2, 4))], r"run axes differ: \[2, 3\]"),
        ([], "at least one matrix"),
    ],
)
def test_from_weights_shape_errors(weights, match):
    with pytest.raises(ValueError, match=match):
        MLP.from_weights(weights)


def test_from_weights_bias_errors():
    ws = [np.ones((4, 3)), np.ones((2, 4))]
    with pytest.raises(ValueError, match="one vector per layer"):
        MLP.from_weights(ws, biases=[np.zeros(4)])
    with pytest.raises(ValueError, match=r"biases\[1\] has shape \(3,\); expected \(2,\)"):
        MLP.from_weights(ws, biases=[np.zeros(4), np.zeros(3)])


def test_unknown_activation_lists_allowed_names():
    with pytest.raises(ValueError, match="activation='tanhh'.*allowed: leaky_relu, linear, relu"):
        MLP((2, 3, 1), "tanhh", key=KEY)
    with pytest.raises(ValueError, match="allowed: leaky_relu, linear, relu"):
        MLP.from_weights([np.ones((1, 2))], "sigmoid")


def test_unknown_init_lists_allowed_names():
    with pytest.raises(ValueError, match="init='he'") as info:
        MLP((2, 3, 1), key=KEY, init="he")
    for name in ("balanced", "disk", "gaussian", "normal", "orthogonal", "xavier"):
        assert name in str(info.value)
    assert set(INITS.names()) == {"balanced", "disk", "gaussian", "normal", "orthogonal", "xavier"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(widths=(3,)), r"widths=\(3,\).*at least two positive integers"),
        (dict(widths=(3, 0, 1)), "at least two positive integers"),
        (dict(widths=5), "widths=5 is not allowed.*sequence of at least two positive integers"),
        (dict(widths=(3, 2), key=None), "key must be a JAX PRNG key"),
        (dict(widths=(3, 2), scale=-1.0), "scale=-1.0 is not allowed; allowed: a finite real "
                                          "number >= 0"),
        (dict(widths=(3, 2), runs=0), "runs=0 is not allowed; allowed: an integer >= 1"),
    ],
)
def test_constructor_argument_errors(kwargs, match):
    kwargs = {"key": KEY, **kwargs}
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_register_activation_is_usable_by_name():
    if "test_square_act" not in gfsim.nets.ACTIVATIONS:
        gfsim.nets.register_activation("test_square_act", lambda z: z**2)
    net = MLP.from_weights([W1, W2], "test_square_act")
    # pre-activations (-1, 2) -> (1, 4) -> 3*1 + 1*4
    assert float(net(X1)[0, 0]) == pytest.approx(7.0, abs=1e-14)
    with pytest.raises(ValueError, match="already registered"):
        gfsim.nets.register_activation("relu", lambda z: z)
