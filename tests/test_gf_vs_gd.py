"""GF versus the GD stand-in: the outputs have the properties first-order theory predicts."""

import os
import re

import numpy as np
import pytest
from helpers import run_tiny

import gfsim
from gfsim import analysis
from gfsim.experiments import gf_vs_gd


@pytest.fixture(scope="module")
def compare(tmp_path_factory):
    return run_tiny("gf_vs_gd", tmp_path_factory)


def test_matched_times(compare):
    _, d, _ = compare
    lr = float(d["lr"])
    ts_gd = d["ts_gd"]
    np.testing.assert_allclose(ts_gd, lr * d["save_steps"], rtol=1e-12)
    # GF saved at every GD save time (first slots), then later times up to t1.
    np.testing.assert_array_equal(d["ts_gf"][: len(ts_gd)], ts_gd)
    assert np.all(np.diff(d["ts_gf"]) > 0)
    # Same start: zero distance at t = 0; losses agree at the start.
    np.testing.assert_array_equal(d["dist"][:, 0], 0.0)
    np.testing.assert_allclose(d["gd_loss"][:, 0], d["gf_loss"][:, 0], rtol=1e-14)


def test_gd_error_is_first_order(compare):
    result, d, _ = compare
    lr = float(d["lr"])
    ok = d["gf_status"] == 0
    moving = d["moving"]
    assert ok.all()  # disk init 1e-4 on the paper pair: no run slides along a kink
    # Distance O(lr), and halving the step halves it (first-order method).
    assert np.max(d["dist"][ok]) < 20 * lr
    ratio = np.max(d["dist2"], 1)[ok & moving] / np.max(d["dist"], 1)[ok & moving]
    np.testing.assert_allclose(ratio, 2.0, rtol=0.02)
    # Runs with no active neuron never move: GF and GD are both exactly the init.
    assert np.all(d["dist"][~moving] == 0)
    np.testing.assert_allclose(d["gf_loss"][~moving], 0.5, rtol=1e-12)
    # The claim quotes the saved numbers and its verdict follows from them.
    claim = result.claims[0]
    quoted = float(re.search(r"by (\d\.\d{3}) \(median", claim.measured).group(1))
    assert abs(quoted - np.median(ratio)) < 1e-3
    assert claim.verdict == "agrees"


def test_balancedness(compare):
    result, d, _ = compare
    ok = d["gf_status"] == 0
    # The drift curves' maxima over time are analysis.balance_drift.
    np.testing.assert_allclose(np.nanmax(d["drift_gf"], 1), d["bd_gf"], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(np.max(d["drift_gd"], 1), d["bd_gd"], rtol=1e-12, atol=1e-300)
    assert np.all(d["drift_gf"][:, 0] == 0) and np.all(d["drift_gd"][:, 0] == 0)
    # GF holds the invariants to the solver tolerance; GD on fitted runs drifts far more, and
    # linearly in lr.
    assert np.max(d["bd_gf"][ok]) < 1e-10
    fitted = ok & (d["gd_final_loss"] < 1e-4)
    assert fitted.any()
    gf_max = np.max(d["bd_gf"][ok])
    assert np.median(d["bd_gd"][fitted]) > 1e3 * gf_max
    # Where GD's drift is well above rounding, it is first order in lr.
    clear = ok & (d["bd_gd"] > 1e-9)
    assert clear.any()
    np.testing.assert_allclose(d["bd_gd2"][clear] / d["bd_gd"][clear], 2.0, rtol=0.01)
    # Runs that never move keep their invariants exactly, under GF and GD alike.
    assert np.all(d["bd_gd"][~d["moving"]] == 0) and np.all(d["bd_gf"][~d["moving"]] == 0)
    assert result.claims[1].verdict == "agrees"


def test_balance_drift_independent_check():
    """balance_drift of a GD run, recomputed by hand from the per-neuron invariants."""
    import jax

    data = gfsim.data.paper_pair()
    net = gfsim.MLP((2, 2, 2), key=jax.random.key(3), init="xavier")
    tr = gfsim.gd(net, data, 1e-2, 200, save_steps=[0, 100, 200])
    w1, w2 = (np.asarray(w) for w in tr.weights)
    inv = np.sum(w2**2, axis=1) - np.sum(w1**2, axis=2)  # (T, h)
    size = np.sum(w1**2, axis=(1, 2)) + np.sum(w2**2, axis=(1, 2))
    expected = np.max(np.abs(inv - inv[0])) / np.max(size)
    np.testing.assert_allclose(gf_vs_gd.drift_curve([w[None] for w in tr.weights]).max(),
                               expected, rtol=1e-12)
    np.testing.assert_allclose(float(analysis.balance_drift(tr.weights)), expected, rtol=1e-12)


def test_timing_and_figure(compare):
    result, d, out = compare
    assert float(d["seconds_gd"]) > 0 and float(d["seconds_gf_tgd"]) > 0
    speed = re.search(r"GF (\d+)x faster", result.claims[2].measured)
    assert speed and abs(int(speed.group(1)) - float(d["seconds_gd"]) / float(
        d["seconds_gf_tgd"])) <= 1
    assert result.claims[2].verdict == ("agrees" if d["seconds_gd"] > d["seconds_gf_tgd"]
                                        else "disagrees")
    assert os.path.getsize(os.path.join(out, result.figures[0])) > 10_000
