"""Experiment "neurons": trajectories of the rows of W1 on the plane for the paper's dataset."""

import os

import numpy as np
import pytest
from helpers import run_tiny, runs
from PIL import Image

from gfsim.experiments import neurons


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    r, ds, out = run_tiny("neurons", tmp_path_factory)
    # the arrays under their old names, padding trimmed to each width
    data = {"ts": ds["t"].values[0], "X": ds["X"].values, "frame_idx": ds["frame_idx"].values}
    for w in neurons.SETTINGS["tiny"]["widths"]:
        g = runs(ds, width=w)
        np.testing.assert_array_equal(g["t"].values, np.broadcast_to(data["ts"], g["t"].shape))
        wts = g["weights"].values  # (runs, T, layer, row, col)
        data.update({
            f"w{w}/W1": wts[:, :, 0, :w, :2], f"w{w}/W2": wts[:, :, 1, :2, :w],
            f"w{w}/final_W1": g["final_weights"].values[:, 0, :w, :2],
            f"w{w}/status": g["status_code"].values, f"w{w}/loss": g["loss_curve"].values,
            **{f"w{w}/{k}": g[k].values[:, :w] for k in (
                "start_only_x1", "start_only_x2", "stay_only_x1", "stay_only_x2")}})
        assert np.all(np.isnan(wts[:, :, 0, w:])) and not g["start_only_x1"].values[:, w:].any()
        assert g["displayed"].values.sum() == 1
    return r, data, out


def test_files_and_gif_frames(result):
    r, data, out = result
    T = len(data["ts"])
    assert T == neurons.SETTINGS["tiny"]["num_saves"]
    for fig in r.figures:
        assert os.path.getsize(os.path.join(out, fig)) > 0
    pngs = [f for f in r.figures if f.endswith(".png")]
    assert len(pngs) == len(data["frame_idx"])
    assert Image.open(os.path.join(out, "neurons.gif")).n_frames == T


def test_trajectories_start_at_init_and_end_at_final(result):
    r, data, out = result
    X = data["X"]
    for w in neurons.SETTINGS["tiny"]["widths"]:
        W1 = data[f"w{w}/W1"]  # (runs, T, h, 2)
        assert W1.shape[2:] == (w, 2)
        # Disk init: every row starts inside the ball of radius 1e-4.
        assert np.all(np.linalg.norm(W1[:, 0], axis=-1) <= neurons.SCALE * (1 + 1e-12))
        reached = data[f"w{w}/status"] == 0
        np.testing.assert_allclose(W1[reached, -1], data[f"w{w}/final_W1"][reached],
                                   rtol=1e-6, atol=1e-9)
        # Start regions in the file are those of the saved initial rows.
        pre = np.einsum("rhd,nd->rhn", W1[:, 0], X)
        np.testing.assert_array_equal(data[f"w{w}/start_only_x1"],
                                      (pre[..., 0] > 0) & (pre[..., 1] <= 0))


def test_one_sided_neurons_stay_and_align(result):
    r, data, out = result
    X = data["X"]
    n = 0
    for w in neurons.SETTINGS["tiny"]["widths"]:
        W1 = data[f"w{w}/W1"]
        for i, (s, _) in enumerate(((data[f"w{w}/start_only_x1"], 1),
                                    (data[f"w{w}/start_only_x2"], 2))):
            runs, hs = np.nonzero(s)
            n += len(runs)
            for rr, h in zip(runs, hs):
                traj = W1[rr, :, h]  # (T, 2)
                traj = traj[np.all(np.isfinite(traj), -1)]
                p = traj @ X.T
                # Independent check of "stays in its region" at every saved time.
                assert np.all(p[:, i] > 0) and np.all(p[:, 1 - i] <= 0)
                wf = data[f"w{w}/final_W1"][rr, h]
                assert wf @ X[i] / np.linalg.norm(wf) > neurons.ALIGN
                # It grew from the init scale (neurons sharing a region share the growth).
                assert np.linalg.norm(wf) > 10 * np.linalg.norm(traj[0])
    assert n > 0  # the fixed keys give one-sided starts
    c = r.claims[0]
    assert c.verdict == "agrees"
    assert f"{n} one-sided starting neurons: {n} stayed, {n} aligned" in c.measured


def test_width2_split_seed_stable_rank(result):
    # A width-2 seed with one neuron in each one-sided region ends at sr = 2/(1+|cos|).
    r, data, out = result
    X = data["X"]
    s1, s2 = data["w2/start_only_x1"], data["w2/start_only_x2"]
    split = (s1[:, 0] & s2[:, 1]) | (s2[:, 0] & s1[:, 1])
    assert split.any()
    W = data["w2/final_W1"][split]
    s = np.linalg.svd(W, compute_uv=False)
    sr = np.sum(s**2, -1) / s[:, 0] ** 2
    np.testing.assert_allclose(sr, 2 / (1 + abs(X[0] @ X[1])), atol=1e-3)
