"""Sweeps end to end through the CLI: the 3-axis example into a store, checked against direct
gfsim.simulate calls of the same configurations; status counts; plots; gfsim run."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from click.testing import CliRunner

import gfsim
from gfsim.cli import main
from gfsim.sweep import FIELDS, load_spec

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "linear_depth_scale_loss.toml")


def invoke(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r


def direct(cfg):
    """The run a config stands for, built from the public API only."""
    widths = (cfg["dim"],) + (cfg["width"],) * (cfg["depth"] - 1) + (1,)
    net = gfsim.MLP(widths, cfg["activation"], key=jax.random.key(cfg["seed"]), init=cfg["init"],
                    scale=cfg["init_scale"])
    data = gfsim.data.sphere(jax.random.key(cfg["data_seed"]), cfg["n"], cfg["dim"],
                             targets=cfg["targets"])
    return gfsim.simulate(net, data, cfg["t1"], num_saves=cfg["num_saves"], loss=cfg["loss"],
                          reduction=cfg["reduction"], rtol=cfg["rtol"])


@pytest.fixture(scope="module")
def example_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "store"
    r = invoke("sweep", EXAMPLE, "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    return out


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    r = invoke("sweep", EXAMPLE, "--dry-run", "--out", tmp_path / "s")
    assert r.exit_code == 0
    assert "16 runs (depth(2) x init_scale(2) x loss(2) x seed(2)), 4 batches, 4 compiled" \
        in r.output
    assert not (tmp_path / "s").exists()


def test_example_store_has_every_run_labelled(example_store):
    spec = load_spec(EXAMPLE)
    ds = gfsim.load(example_store)
    assert ds.sizes["run"] == spec.num_runs == 16
    assert list(ds["run_id"].values) == list(range(16))
    assert set(FIELDS) <= set(ds.coords)
    sub = ds.sel(depth=3, init_scale=0.3, loss="logistic")
    assert sorted(sub["seed"].values) == [0, 1]
    # coordinates agree with the spec's own expansion, run by run
    runs = spec.runs()
    for k in ("depth", "init_scale", "loss", "seed"):
        assert list(ds[k].values) == [r[k] for r in runs]
    assert ds.attrs["reduction"] == "mean" and ds.attrs["loss"] == "per run (see the coordinate)"
    assert ds.attrs["runs_total"] == 16 and ds.attrs["spec_hash"] == spec.digest()
    # depth 2 runs are padded with NaN on the third layer
    assert np.all(np.isnan(ds.sel(depth=2)["singular_values"].values[..., 2, :]))


def test_store_equals_direct_simulate(example_store):
    spec = load_spec(EXAMPLE)
    ds = gfsim.store.flat(gfsim.load(example_store))
    for run_id in (5, 14):  # one depth-2 square-loss run, one depth-3 logistic run
        cfg = spec.runs()[run_id]
        traj = direct(cfg)
        r = ds.isel(run=run_id)
        np.testing.assert_allclose(r["final_loss"].item(), float(traj.final_loss), rtol=1e-9)
        np.testing.assert_allclose(r["loss_curve"].values, np.asarray(traj.loss), rtol=1e-9)
        assert r["num_steps"].item() == int(traj.num_steps)
        for j, w in enumerate(traj.final_weights):
            s = np.linalg.svd(np.asarray(w), compute_uv=False)
            np.testing.assert_allclose(r["final_singular_values"].values[j, :len(s)], s,
                                       rtol=1e-8)


def test_status_counts_match_the_store(example_store):
    ds = gfsim.load(example_store)
    r = invoke("status", example_store)
    assert r.exit_code == 0
    assert "16 / 16 runs done (4 / 4 batches)" in r.output
    labels, counts = np.unique(ds["status"].values, return_counts=True)
    for label, n in zip(labels, counts):
        assert f"  {label}: {n}" in r.output


@pytest.mark.parametrize("args", [
    ("--kind", "final-rank", "--x", "init_scale", "--hue", "depth"),
    ("--kind", "spectra", "--run", "13"),
    ("--kind", "loss", "--hue", "loss", "--where", "depth=3"),
])
def test_plot_writes_a_png(example_store, tmp_path, args):
    png = tmp_path / "p.png"
    r = invoke("plot", example_store, *args, "--out", png)
    assert r.exit_code == 0, r.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_bad_field_is_a_usage_error(example_store, tmp_path):
    r = invoke("plot", example_store, "--x", "detph", "--out", tmp_path / "p.png")
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("gfsim plot: error: x='detph' is not a run coordinate")
    assert not (tmp_path / "p.png").exists()


def test_run_one_config_and_no_overwrite(tmp_path):
    spec = load_spec(EXAMPLE)
    cfg = spec.runs()[5]
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in cfg.items()
             if v is not None and k in ("dataset", "targets", "n", "dim", "width", "activation",
                                        "init", "init_scale", "t1", "num_saves", "rtol", "loss",
                                        "depth", "seed", "reduction")]
    (tmp_path / "c.toml").write_text("\n".join(lines) + "\n")
    out = tmp_path / "one"
    r = invoke("run", tmp_path / "c.toml", "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    ds = gfsim.load(out)
    assert ds.sizes["run"] == 1
    np.testing.assert_allclose(ds["final_loss"].item(), float(direct(cfg).final_loss),
                               rtol=1e-9)
    r = invoke("run", tmp_path / "c.toml", "--out", out, "--no-progress")
    assert r.exit_code == 2 and "already exists" in r.stderr


def test_status_lists_failed_runs_and_batches(tmp_path, monkeypatch):
    # the example's first batch again (same compiled program), with an init scale that overflows
    text = open(EXAMPLE).read().split("[grid]")[0] + (
        "depth = 2\nloss = \"square\"\n[grid]\nt1 = [50.0, 20.0]\ninit_scale = [0.01, 1e200]\n")
    text = text.replace("t1 = 50.0\n", "")
    f = tmp_path / "s.toml"
    f.write_text(text)
    out = tmp_path / "store"
    import gfsim.sweep._runs as runs_module

    real = runs_module.solve_batch

    def boom(cfgs, *, batch_id, **kw):
        if batch_id == "b00001":
            raise RuntimeError("boom")
        return real(cfgs, batch_id=batch_id, **kw)

    monkeypatch.setattr(runs_module, "solve_batch", boom)
    r = invoke("sweep", f, "--out", out, "--no-progress")
    assert r.exit_code == 1 and "batch b00001 failed: RuntimeError: boom" in r.stderr
    r = invoke("status", out)
    assert r.exit_code == 0
    assert "4 / 8 runs done (1 / 2 batches)" in r.output
    assert "  nonfinite: 2" in r.output and "  reached_t1: 2" in r.output
    assert "failed runs: 2" in r.output
    assert "nonfinite (the loss or its gradient became NaN or infinite)" in r.output
    assert "init_scale=1e+200" in r.output
    assert "batch b00001 failed: RuntimeError: boom" in r.output

    monkeypatch.setattr(runs_module, "solve_batch", real)
    r = invoke("sweep", f, "--out", out, "--resume", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("status", out)
    assert "8 / 8 runs done" in r.output and "batch b00001" not in r.output


def test_batch_inputs_equal_runs_built_alone():
    from gfsim.sweep import parse_spec
    from gfsim.sweep._runs import batch_inputs

    spec = parse_spec({"dataset": "sphere", "n": 4, "dim": 2, "width": 3, "activation": "linear",
                       "targets": "gaussian",
                       "zip": {"seed": [3, 1, 2, 0], "data_seed": [0, 1, 0, 2]},
                       "grid": {"init": ["gaussian", "xavier"], "init_scale": [0.5, 2.0]}})
    cfgs = spec.runs()
    net, data = batch_inputs(cfgs)
    for i, c in enumerate(cfgs):
        alone = gfsim.MLP((2, 3, 1), "linear", key=jax.random.key(c["seed"]), init=c["init"],
                          scale=c["init_scale"])
        d = gfsim.data.sphere(jax.random.key(c["data_seed"]), 4, 2, targets="gaussian")
        for a, b in zip(net.weights, alone.weights):
            np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(data.X[i]), np.asarray(d.X))
        np.testing.assert_array_equal(np.asarray(data.Y[i]), np.asarray(d.Y))
