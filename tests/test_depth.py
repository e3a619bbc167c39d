"""Experiment B (depth): the outputs satisfy exact inequalities and are self-consistent."""

import os

import numpy as np
import pytest
from helpers import endpoint_truth, run_tiny, runs, stored_final_net

from gfsim.experiments import depth

PER_RUN = {f: f for f in depth._PER_RUN + depth._PER_LAYER}
PER_RUN.update(loss="final_loss", status="status_code", steps="num_steps")


def _old_keys(ds) -> dict:
    """The store's arrays under the keys of the former .npz, padding trimmed to each depth."""
    cfg, pc = depth.SETTINGS["tiny"], depth.PAIR["tiny"]
    d = {k: ds[k].values for k in ("X", "Y", "pair_X", "pair_Y")}
    d["stop_loss"] = cfg["stop_loss"]
    batches = [(f"exponential/k{k}/", dict(dataset="teacher_student", depth=k, control=False))
               for k in cfg["depths"]]
    batches += [(f"exponential/control/k{k}/", dict(dataset="teacher_student", depth=k,
                                                    control=True))
                for k in (min(cfg["depths"]), max(cfg["depths"]))]
    batches += [(f"pair/k{k}/", dict(dataset="paper_pair", depth=k, control=False))
                for k in pc["depths"]]
    batches += [(f"pair/control/k{k}/", dict(dataset="paper_pair", depth=k, control=True))
                for k in (min(pc["depths"]), max(pc["depths"]))]
    for prefix, where in batches:
        g = runs(ds, **where)
        k = where["depth"]
        for old, new in PER_RUN.items():
            v = g[new].values
            d[prefix + old] = v[:, :k] if g[new].dims == ("run", "layer") else v
        assert np.all(np.isnan(g["ratio"].values[:, k:]))  # padding past the depth
        W = g["final_weights"].values
        for j, (o, i) in enumerate(zip(g["layer_out"].values[0], g["layer_in"].values[0])):
            if j < k:
                d[prefix + f"W{j + 1}"] = W[:, j, :o, :i]
    for lname in cfg["losses"]:
        d[f"{lname}/summary/spearman"] = ds[f"{lname}_spearman"].values
        d[f"{lname}/summary/depths"] = ds[f"{lname}_depth"].values
        d[f"{lname}/summary/medians"] = ds[f"{lname}_median_ratio"].values
        d[f"{lname}/summary/control_medians"] = ds[f"{lname}_control_median_ratio"].values
    d["pair/summary/depths"] = ds["pair_depth"].values
    d["pair/summary/means"] = ds["pair_mean_ratio"].values
    d["pair/summary/spearman"] = ds["pair_spearman"].values
    d["pair/summary/rise"] = ds["pair_rise"].values
    d["pair/summary/control_rise"] = ds["pair_control_rise"].values
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    result, ds, out = run_tiny("depth", tmp_path_factory)
    cfg, pc = depth.SETTINGS["tiny"], depth.PAIR["tiny"]  # every batch, its 2 controls too
    assert ds.sizes["run"] == (cfg["seeds"] * (len(cfg["depths"]) + 2)
                               + pc["seeds"] * (len(pc["depths"]) + 2))
    return result, _old_keys(ds), out


def test_group_summaries_match_the_runs(tiny):
    result, d, out = tiny
    import gfsim

    ds = gfsim.load(out / "depth.zarr")
    for k in depth.PAIR["tiny"]["depths"]:
        g = ds.sel(group=f"pair/k{k}")
        conv = d[f"pair/k{k}/converged"]
        far = np.mean(d[f"pair/k{k}/stable_rank"][conv, 0] >= depth.PAIR_SR_FAR)
        assert float(g["W1_far"]) == pytest.approx(far, nan_ok=True)


def _forward(weights, X):
    h = X.T
    for w in weights[:-1]:
        h = np.maximum(w @ h, 0.0)
    return (weights[-1] @ h).T[:, 0]


def test_rank_measures_and_bound(tiny):
    result, d, _ = tiny
    X = d["X"]
    cfg = depth.SETTINGS["tiny"]
    for k in cfg["depths"]:
        p = f"exponential/k{k}/"
        W = [d[p + f"W{j + 1}"] for j in range(k)]
        # Independent SVDs: ratio = ||W||_2/||W||_F = 1/sqrt(stable rank), in (0, 1].
        s = [np.linalg.svd(w, compute_uv=False) for w in W]
        ratio = np.stack([si[:, 0] / np.sqrt((si**2).sum(1)) for si in s], 1)
        np.testing.assert_allclose(d[p + "ratio"], ratio, rtol=1e-10)
        np.testing.assert_allclose(d[p + "stable_rank"], ratio**-2, rtol=1e-10)
        assert np.all((ratio > 0) & (ratio <= 1 + 1e-12))
        np.testing.assert_allclose(ratio[:, -1], 1.0, rtol=1e-12)  # last layer is a vector
        np.testing.assert_allclose(d[p + "ratio_avg"], ratio[:, :-1].mean(1), rtol=1e-12)
        # c recomputed from a numpy forward pass; Lipschitz: prod ||W_j||_2 >= c.
        runs = W[0].shape[0]
        out = np.stack([_forward([w[r] for w in W], X) for r in range(runs)])
        c = np.max(np.abs(out) / np.linalg.norm(X, axis=1), 1)
        np.testing.assert_allclose(d[p + "c"], c, rtol=1e-10)
        assert np.all(np.prod(d[p + "spec"], 1) >= c * (1 - 1e-10))
        # The rank-one bound is exact for every run: measured average >= (c/F^k)^(1/(k-1)).
        F2 = np.mean(d[p + "frob"] ** 2, 1)
        bound = (c / F2 ** (k / 2)) ** (1 / (k - 1))
        np.testing.assert_allclose(d[p + "bound"], bound, rtol=1e-10)
        assert np.all(d[p + "ratio_avg"] >= bound - 1e-12)
        assert np.all(d[p + "bound_margin"] <= d[p + "bound"] + 1e-12)
        # Balancedness: the layer invariants are conserved by GF (to the loose tolerance).
        assert np.all(d[p + "balance_drift"] < 1e-4)


def test_run_classes_and_claims(tiny):
    result, d, out = tiny
    cfg = depth.SETTINGS["tiny"]
    stop = float(d["stop_loss"])
    total_conv = 0
    for k in cfg["depths"]:
        p = f"exponential/k{k}/"
        conv, st, nc = d[p + "converged"], d[p + "stalled"], d[p + "not_converged"]
        # Every run is in exactly one class; none is dropped.
        np.testing.assert_array_equal(conv.astype(int) + st + nc, 1)
        assert np.all(d[p + "loss"][conv] < stop)
        total_conv += conv.sum()
        assert f"k={k}:" in result.claims[0].measured
        assert f"stalled {int(st.sum())}, not converged {int(nc.sum())}" in \
            result.claims[0].measured
    assert total_conv > 0
    # Converged exponential-loss runs classify every point correctly (positive margin).
    for k in cfg["depths"]:
        p = f"exponential/k{k}/"
        assert np.all(d[p + "margin"][d[p + "converged"]] > 0)
    # The Spearman statistic in the claim matches the saved medians.
    s = d["exponential/summary/spearman"]
    if np.isfinite(s):
        assert abs(s - depth.spearman(d["exponential/summary/depths"],
                                      d["exponential/summary/medians"])) < 1e-12
    # The small-init control: a 10x smaller init at the shallowest and deepest depth; it
    # starts closer to balanced, so its initial share of the final norms is smaller.
    c_scale, _ = cfg["control"]
    k0, k1 = min(cfg["depths"]), max(cfg["depths"])
    for k in (k0, k1):
        pc, p = f"exponential/control/k{k}/", f"exponential/k{k}/"
        W1 = d[pc + "W1"]
        assert W1.shape == d[p + "W1"].shape
        conv = d[pc + "converged"]
        assert np.all(d[pc + "ratio_avg"] >= d[pc + "bound"] - 1e-12)
        if conv.any() and d[p + "converged"].any():
            assert np.median((d[pc + "F2_init"] / d[pc + "F2"])[conv]) < np.median(
                (d[p + "F2_init"] / d[p + "F2"])[d[p + "converged"]])
    # The verdict follows the documented rule from the saved medians.
    meds, rho = d["exponential/summary/medians"], float(s)
    cm = d["exponential/summary/control_medians"]
    verdict = result.claims[0].verdict
    if len(meds) >= 3 and rho >= 0.5 and meds[-1] >= 0.9:
        assert verdict == "agrees"
    elif len(meds) >= 3 and rho <= -0.5:
        fall = meds[0] - meds[-1]
        residue = len(cm) == 2 and fall > 0 and (cm[0] - cm[1]) < 0.25 * fall
        assert verdict == ("inconclusive" if residue else "disagrees")
    else:
        assert verdict == "inconclusive"
    assert "Small-init control" in result.claims[0].measured or len(cm) < 2
    bound_claim = result.claims[2]
    assert bound_claim.verdict == "agrees" and "size-2 dataset" in bound_claim.measured
    assert {c.verdict for c in result.claims} <= {"agrees", "disagrees", "inconclusive"}
    for f in result.figures:
        assert os.path.getsize(os.path.join(out, f)) > 10_000


def test_size2_part_per_run(tiny):
    # Claim 2's pair with one output and labels +1, +1: rank measures from independent SVDs,
    # the exact bound, positive margins on both points for converged runs, conserved balance.
    result, d, _ = tiny
    pc = depth.PAIR["tiny"]
    X = d["pair_X"]
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-12)
    assert abs(X[0] @ X[1] - (-0.0100495)) < 1e-6  # cos of the paper's 90.58 degrees
    np.testing.assert_array_equal(d["pair_Y"], np.ones((2, 1)))
    for pre in [f"pair/k{k}/" for k in pc["depths"]] + [
            f"pair/control/k{k}/" for k in (min(pc["depths"]), max(pc["depths"]))]:
        k = int(pre.rstrip("/").split("k")[-1])
        W = [d[pre + f"W{j + 1}"] for j in range(k)]
        assert W[0].shape == (pc["seeds"], pc["width"], 2)
        s = [np.linalg.svd(w, compute_uv=False) for w in W]
        ratio = np.stack([si[:, 0] / np.sqrt((si**2).sum(1)) for si in s], 1)
        np.testing.assert_allclose(d[pre + "ratio"], ratio, rtol=1e-10)
        np.testing.assert_allclose(d[pre + "ratio_avg"], ratio[:, :-1].mean(1), rtol=1e-12)
        assert np.all(d[pre + "ratio_avg"] >= d[pre + "bound"] - 1e-12)
        conv = d[pre + "converged"]
        np.testing.assert_array_equal(conv.astype(int) + d[pre + "stalled"]
                                      + d[pre + "not_converged"], 1)
        out = np.stack([_forward([w[r] for w in W], X) for r in range(W[0].shape[0])])
        assert np.all(out[conv] > 0)  # both points classified +1
        # exponential loss, mean reduction: recomputed from the saved weights
        np.testing.assert_allclose(d[pre + "loss"], np.exp(-out).mean(1), rtol=1e-6)
        assert np.all(d[pre + "balance_drift"] < 1e-4)
    assert sum(d[f"pair/k{k}/converged"].sum() for k in pc["depths"]) > 0


def test_size2_part_summary_and_verdict(tiny):
    result, d, _ = tiny
    pc = depth.PAIR["tiny"]
    claim = result.claims[1]
    assert "size-2 dataset" in claim.setting
    ks = list(d["pair/summary/depths"])
    for k in pc["depths"]:
        v = d[f"pair/k{k}/ratio_avg"][d[f"pair/k{k}/converged"]]
        assert f"k={k}: " in claim.measured
        if k in ks:
            assert d["pair/summary/means"][ks.index(k)] == pytest.approx(v.mean(), rel=1e-12)
            assert f"mean {v.mean():.3f}" in claim.measured
    k0, k1 = min(pc["depths"]), max(pc["depths"])
    c = lambda p: d[p + "ratio_avg"][d[p + "converged"]]  # noqa: E731
    rise, lo, hi = d["pair/summary/rise"]
    if np.isfinite(rise):
        assert rise == pytest.approx(c(f"pair/k{k1}/").mean() - c(f"pair/k{k0}/").mean())
        assert lo <= rise <= hi
    # the documented rule, from the saved numbers
    rho, means = float(d["pair/summary/spearman"]), d["pair/summary/means"]
    crise = d["pair/summary/control_rise"][0]
    if len(means) >= 3 and rho >= 0.5 and lo > 0 and means[-1] >= 0.9 and not crise <= 0:
        assert claim.verdict == "agrees"
    elif len(means) >= 3 and rho <= -0.5 and hi < 0:
        assert claim.verdict == "disagrees"
    else:
        assert claim.verdict == "inconclusive"


def test_mean_rise_bootstrap():
    rng = np.random.default_rng(3)
    a = rng.normal(0.9, 0.05, 200)
    rise, lo, hi = depth.mean_rise(a, a + 0.02)
    assert rise == pytest.approx(0.02, abs=1e-12)
    assert lo < 0.02 < hi and lo > 0  # 200 runs: the shift is 4 standard errors
    rise, lo, hi = depth.mean_rise(a[:10], a[10:20])  # no shift: the interval holds 0
    assert lo < 0 < hi
    assert np.isnan(depth.mean_rise([0.9], a)[0])


def test_pair_verdict_rule():
    assert depth.pair_verdict(1.0, 0.01, 0.05, 0.95, 0.02) == "agrees"
    assert depth.pair_verdict(1.0, 0.01, 0.05, 0.95, float("nan")) == "agrees"  # no control
    assert depth.pair_verdict(1.0, -0.01, 0.05, 0.95, 0.02) == "inconclusive"  # noise
    assert depth.pair_verdict(1.0, 0.01, 0.05, 0.85, 0.02) == "inconclusive"  # not near 1
    assert depth.pair_verdict(1.0, 0.01, 0.05, 0.95, -0.01) == "inconclusive"  # control falls
    assert depth.pair_verdict(-1.0, -0.05, -0.01, 0.95, 0.0) == "disagrees"


def test_spearman():
    assert depth.spearman([1, 2, 3, 4], [0.1, 0.2, 0.5, 0.9]) == pytest.approx(1.0)
    assert depth.spearman([1, 2, 3], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def test_runs_that_missed_stop_loss_are_classified_against_an_independent_hessian(tiny):
    # every run that missed stop_loss has an endpoint kind; its gradient norm and lambda_min
    # are those of the stored final weights (recomputed), and the kind follows from them
    import gfsim

    result, d, out = tiny
    ds = gfsim.store.flat(gfsim.load(out / "depth.zarr"))
    kind = ds["endpoint_kind"].values
    missed = ~ds["converged"].values
    assert missed.any()  # the tiny profile has plateaus (a fixed key)
    assert (kind[missed] != "").all()
    datasets = {"paper_pair": gfsim.Dataset(d["pair_X"], d["pair_Y"]),
                "teacher_student": gfsim.Dataset(d["X"], d["Y"])}
    for r in np.flatnonzero(missed):
        net = stored_final_net(ds, r)
        grad, ev = endpoint_truth(net, datasets[str(ds["dataset"].values[r])], "exponential")
        assert ds["endpoint_grad_norm"].values[r] == pytest.approx(grad, rel=1e-6, abs=1e-15)
        assert (kind[r] == "not_stationary") == (grad > 1e-6)
        assert ds["endpoint_lambda_min"].values[r] == pytest.approx(ev[0], abs=1e-7 * max(
            1.0, ev[-1]))
        if kind[r] != "not_stationary":
            tol = 1e-6 * max(1.0, abs(ev[-1]))
            want = ("strict_saddle" if ev[0] < -tol else "minimum" if ev[0] > tol
                    else "degenerate")
            assert kind[r] == want
    note = next(n for n in result.notes if n.startswith("Where the runs"))
    k0 = min(depth.PAIR["tiny"]["depths"])
    g = runs(ds, dataset="paper_pair", depth=k0, control=False)
    n = int((~g["converged"].values).sum())
    if n:
        assert f"size-2 k={k0} ({n} runs): " in note
