"""Tests for gfsim.losses and gfsim.objective against numpy computations of the same formulas."""

import numpy as np
import pytest

import gfsim
from gfsim.data import Dataset
from gfsim.losses import LOSSES, check_reduction, loss_value, register_loss
from gfsim.nets import MLP

RNG = np.random.default_rng(0)
N, D_OUT = 5, 3
PRED = RNG.normal(size=(N, D_OUT))
TARGET = RNG.normal(size=(N, D_OUT))
LABELS = np.where(RNG.normal(size=(N, D_OUT)) >= 0, 1.0, -1.0)
MASK = np.zeros((N, D_OUT))
MASK[[0, 0, 1, 3, 4, 4], [0, 2, 1, 1, 0, 2]] = 1.0  # 6 observed entries


def value(name, reduction, pred, y, mask=None):
    return float(loss_value(name, reduction, pred, y, mask))


def test_square_sum_is_half_sum_of_squares():
    expected = 0.5 * np.sum((PRED - TARGET) ** 2)
    assert value("square", "sum", PRED, TARGET) == pytest.approx(expected, rel=1e-14)


def test_square_mean_is_mean_over_all_entries():
    expected = np.mean((PRED - TARGET) ** 2)  # over n * d_out = 15 entries, no 1/2
    assert value("square", "mean", PRED, TARGET) == pytest.approx(expected, rel=1e-14)


def test_square_hand_computed():
    pred = np.array([[1.0, 2.0], [0.0, -1.0]])
    y = np.array([[0.0, 2.0], [2.0, 1.0]])  # squared errors 1, 0, 4, 4
    assert value("square", "sum", pred, y) == pytest.approx(4.5, abs=1e-15)
    assert value("square", "mean", pred, y) == pytest.approx(2.25, abs=1e-15)


def test_square_mean_and_sum_time_scaling():
    # The documented relation: mean-convention loss = 2 / (n d_out) * sum-convention loss.
    s = value("square", "sum", PRED, TARGET)
    m = value("square", "mean", PRED, TARGET)
    assert m == pytest.approx(2.0 / (N * D_OUT) * s, rel=1e-14)


@pytest.mark.parametrize("reduction, reduce", [("sum", np.sum), ("mean", np.mean)])
def test_exponential(reduction, reduce):
    expected = reduce(np.exp(-LABELS * PRED))
    assert value("exponential", reduction, PRED, LABELS) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("reduction, reduce", [("sum", np.sum), ("mean", np.mean)])
def test_logistic(reduction, reduce):
    expected = reduce(np.log1p(np.exp(-LABELS * PRED)))
    assert value("logistic", reduction, PRED, LABELS) == pytest.approx(expected, rel=1e-14)


def test_margin_losses_hand_computed():
    pred = np.array([[0.0], [np.log(3.0)]])
    y = np.array([[1.0], [-1.0]])  # margins 0 and -log 3
    # exp: 1 + 3; logistic: log 2 + log(1 + 3)
    assert value("exponential", "sum", pred, y) == pytest.approx(4.0, rel=1e-14)
    assert value("logistic", "sum", pred, y) == pytest.approx(np.log(2.0) + np.log(4.0), rel=1e-14)
    assert value("logistic", "mean", pred, y) == pytest.approx(np.log(8.0) / 2, rel=1e-14)


def test_logistic_is_stable_for_large_margins():
    # log(1 + exp(800)) overflows naively; its value is 800 to double precision.
    pred = np.array([[-800.0], [800.0]])
    y = np.ones((2, 1))
    assert value("logistic", "sum", pred, y) == pytest.approx(800.0, rel=1e-15)
    assert value("logistic", "sum", pred[1:], y[1:]) == pytest.approx(0.0, abs=1e-300)


@pytest.mark.parametrize("name", ["square", "exponential", "logistic"])
def test_mask_sums_observed_entries_and_means_over_their_count(name):
    y = TARGET if name == "square" else LABELS
    per = {
        "square": (PRED - y) ** 2,
        "exponential": np.exp(-y * PRED),
        "logistic": np.log1p(np.exp(-y * PRED)),
    }[name]
    factor = 0.5 if name == "square" else 1.0
    observed = per[MASK == 1]
    assert observed.size == 6
    assert value(name, "sum", PRED, y, MASK) == pytest.approx(factor * observed.sum(), rel=1e-14)
    assert value(name, "mean", PRED, y, MASK) == pytest.approx(observed.mean(), rel=1e-14)
    # Unobserved entries do not matter at all, even when they are wild.
    wild = np.where(MASK == 1, PRED, -50.0 * y)
    assert value(name, "sum", wild, y, MASK) == pytest.approx(factor * observed.sum(), rel=1e-14)


def test_mask_ignores_overflowing_unobserved_entries():
    pred = np.array([[1.0, -1000.0]])
    y = np.array([[1.0, 1.0]])
    mask = np.array([[1.0, 0.0]])
    assert value("exponential", "sum", pred, y, mask) == pytest.approx(np.exp(-1.0), rel=1e-14)


def test_all_ones_mask_equals_no_mask():
    ones = np.ones_like(PRED)
    for name in ("square", "exponential"):
        for reduction in ("sum", "mean"):
            assert value(name, reduction, PRED, LABELS, ones) == pytest.approx(
                value(name, reduction, PRED, LABELS), rel=1e-14
            )


def test_unknown_loss_lists_allowed_names():
    with pytest.raises(ValueError, match="loss='hinge'.*allowed: exponential, logistic, square"):
        loss_value("hinge", "sum", PRED, TARGET)


def test_check_reduction():
    assert check_reduction("mean") == "mean" and check_reduction("sum") == "sum"
    with pytest.raises(ValueError, match="reduction='avg' is not allowed; allowed: mean, sum"):
        check_reduction("avg")


def test_loss_value_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        loss_value("square", "avg", PRED, TARGET)


def test_register_loss_by_name():
    if "test_abs" not in LOSSES:
        register_loss("test_abs", lambda f, y: abs(f - y), sum_factor=2.0)
    assert "test_abs" in LOSSES
    expected = np.abs(PRED - TARGET)
    assert value("test_abs", "sum", PRED, TARGET) == pytest.approx(2 * expected.sum(), rel=1e-14)
    assert value("test_abs", "mean", PRED, TARGET) == pytest.approx(expected.mean(), rel=1e-14)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("square", lambda f, y: f)


# ----------------------------------------------------------------------------------------------
# gfsim.objective: the loss of a net on a dataset


W1 = RNG.normal(size=(4, 2))
W2 = RNG.normal(size=(3, 4))
X = RNG.normal(size=(N, 2))


def numpy_net(x):
    return np.maximum(x @ W1.T, 0.0) @ W2.T


@pytest.mark.parametrize(
    "loss, reduction, y, expected",
    [
        ("square", "sum", TARGET, lambda f: 0.5 * np.sum((f - TARGET) ** 2)),
        ("square", "mean", TARGET, lambda f: np.mean((f - TARGET) ** 2)),
        ("exponential", "sum", LABELS, lambda f: np.sum(np.exp(-LABELS * f))),
        ("logistic", "mean", LABELS, lambda f: np.mean(np.log1p(np.exp(-LABELS * f)))),
    ],
)
def test_objective_equals_manual_computation(loss, reduction, y, expected):
    net = MLP.from_weights([W1, W2], "relu")
    data = Dataset(X, y)
    got = float(gfsim.objective(net, data, loss, reduction))
    assert got == pytest.approx(expected(numpy_net(X)), rel=1e-13)


def test_objective_defaults_to_mean_square_and_uses_mask():
    net = MLP.from_weights([W1, W2], "relu")
    f = numpy_net(X)
    assert float(gfsim.objective(net, Dataset(X, TARGET))) == pytest.approx(
        np.mean((f - TARGET) ** 2), rel=1e-13
    )
    masked = Dataset(X, TARGET, mask=MASK)
    assert float(gfsim.objective(net, masked, "square", "sum")) == pytest.approx(
        0.5 * np.sum(((f - TARGET) ** 2)[MASK == 1]), rel=1e-13
    )


def test_objective_zero_at_exact_fit():
    # A linear net whose product is the identity fits Y = X exactly.
    net = MLP.from_weights([2.0 * np.eye(2), 0.5 * np.eye(2)], "linear")
    assert float(gfsim.objective(net, Dataset(X, X), "square", "sum")) == 0.0


def test_objective_rejects_unknown_reduction():
    net = MLP.from_weights([W1, W2], "relu")
    with pytest.raises(ValueError, match="reduction"):
        gfsim.objective(net, Dataset(X, TARGET), "square", "total")
