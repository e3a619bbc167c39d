"""The linear-contrast experiment (Claim 1): its outputs have the properties Saxe's closed form and
the whitened-regression setting predict."""

import math
import os
import re

import numpy as np
import pytest
from helpers import run_tiny, runs


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    result, ds, out = run_tiny("linear", tmp_path_factory)
    lin = runs(ds, activation="linear")
    # the arrays of the linear runs under their old names, and the arrays of no run
    d = {k: lin[v].values for k, v in dict(
        final_e2e="final_e2e", final_loss="final_loss", sv="e2e_singular_values",
        eff_rank="effective_rank", run_scale="init_scale", run_seed="seed", num_rank=
        "numerical_rank", t_half="t_half", t_pred="t_pred", a0="a0", next_share="next_share",
        eff_mid="effective_rank_mid", ts="t").items()}
    d["ts"] = d["ts"][0]
    for k, v in dict(target="target", A="A", slopes="slopes", scales="scales",
                     eff_analytic="effective_rank_analytic").items():
        d[k] = ds[v].values
    rel = runs(ds, activation="relu")
    for k, v in dict(status="status_code", loss="final_loss", sr_w1="stable_rank_W1").items():
        d[f"relu/{k}"] = rel[v].values
    assert np.all(np.isnan(lin["stable_rank_W1"].values))  # only the ReLU runs have it
    assert np.all(np.isnan(rel["t_half"].values)) and np.all(rel["numerical_rank"] == -1)
    return result, d, out


def test_converges_to_the_target_map(linear):
    _, d, _ = linear
    s = d["target"]
    A = d["A"]
    # Whitened inputs: the input-output correlation is the target, with singular values s.
    np.testing.assert_allclose(np.linalg.svd(A, compute_uv=False)[: len(s)], s, rtol=1e-10)
    # With sum_i x_i x_i^T = I the sum-convention loss is 0.5 ||W2 W1 - A||_F^2.
    resid = 0.5 * np.sum((d["final_e2e"] - A) ** 2, axis=(-2, -1))
    np.testing.assert_allclose(d["final_loss"], resid, rtol=1e-6, atol=1e-14)
    assert np.all(d["final_loss"] < 1e-4)
    np.testing.assert_allclose(d["sv"][:, -1, : len(s)], np.broadcast_to(s, (len(d["sv"]), 3)),
                               rtol=1e-3)
    # Effective rank at convergence: exp of the entropy of s / sum s (not 3).
    p = s / s.sum()
    analytic = math.exp(-np.sum(p * np.log(p)))
    assert abs(float(d["eff_analytic"]) - analytic) < 1e-12
    # The init's null-space components (singular values ~ scale^2) shift it slightly.
    np.testing.assert_allclose(d["eff_rank"][:, -1], analytic, atol=1e-2)
    small = d["run_scale"] == d["scales"].min()
    np.testing.assert_allclose(d["eff_rank"][small, -1], analytic, atol=1e-3)
    assert np.all(d["num_rank"] == 3)


def test_modes_are_learned_one_at_a_time(linear):
    _, d, _ = linear
    th = d["t_half"]
    assert np.all(np.isfinite(th))
    assert np.all(np.diff(th, axis=1) > 0)  # larger singular value first
    # The half time really is where the k-th singular value crosses s_k / 2.
    ts = d["ts"]
    for k, sk in enumerate(d["target"]):
        for run in range(len(th)):
            i = np.searchsorted(ts, th[run, k])
            assert d["sv"][run, i - 1, k] < sk / 2 <= d["sv"][run, i, k]
    # Smaller init: the next mode is further behind when a mode is half learned.
    small = d["run_scale"] == d["scales"].min()
    large = d["run_scale"] == d["scales"].max()
    assert np.all(np.median(d["next_share"][small], 0) < np.median(d["next_share"][large], 0))
    assert np.all(d["next_share"][small] < 0.1)
    # Effective rank: high from a random init, near 1 on the first plateau.
    assert np.all(d["eff_rank"][:, 0] > 3)
    assert np.all(d["eff_mid"] < 2)


def test_half_times_follow_saxe_closed_form(linear):
    result, d, _ = linear
    s = d["target"]
    # Same key at every scale: the initial mode strength a0 is exactly proportional to scale^2.
    a0 = d["a0"]
    seeds = int(d["run_seed"].max()) + 1
    a0 = a0.reshape(len(d["scales"]), seeds, -1)
    ratio = a0 / (d["scales"][:, None, None] ** 2)
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:1], ratio.shape), rtol=1e-10)
    predicted = np.log(s / d["a0"] - 1) / (2 * s)
    np.testing.assert_allclose(d["t_pred"], predicted, rtol=1e-12)
    np.testing.assert_allclose(d["t_half"][:, 0], predicted[:, 0], rtol=5e-3)
    np.testing.assert_allclose(d["t_half"], predicted, rtol=0.1)
    # Plateau length grows like ln(1/scale) with slope 1/s_k (a0 ~ scale^2).
    np.testing.assert_allclose(d["slopes"], 1 / s, rtol=0.03)
    # The claim quotes the saved slopes, and its verdict follows from them.
    plateau = result.claims[1]
    quoted = [float(x) for x in re.findall(r"mode \d: (\d\.\d{4}) \(1/s", plateau.measured)]
    np.testing.assert_allclose(quoted, d["slopes"], atol=1e-4)
    assert plateau.verdict == "agrees"
    assert result.claims[0].verdict == "agrees"


def test_relu_beside_and_figure(linear):
    result, d, out = linear
    status = d["relu/status"]
    loss = d["relu/loss"]
    sr = d["relu/sr_w1"]
    ok = status == 0
    assert len(status) == len(d["final_loss"])  # the same inits, ReLU beside linear
    assert np.all(np.isfinite(loss[ok]))
    assert np.all((sr[ok] >= 1 - 1e-9) & (sr[ok] <= 8 + 1e-9))
    # Stalled runs are reported, never hidden.
    assert "stalled (status max_steps" in result.notes[-1]
    assert f": {int(np.sum(status == 2))}; " in result.notes[-1]
    assert os.path.getsize(os.path.join(out, result.figures[0])) > 10_000
    assert {c.verdict for c in result.claims} <= {"agrees", "disagrees", "inconclusive"}
