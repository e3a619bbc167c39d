"""gfsim reproduce: the experiments' outputs have the properties the paper predicts."""

import math
import os

import numpy as np
import pytest
from click.testing import CliRunner

from gfsim.cli import main
from gfsim.experiments import EXPERIMENTS


@pytest.fixture(scope="module")
def negative(tmp_path_factory):
    out = tmp_path_factory.mktemp("negative")
    return EXPERIMENTS.get("negative")("tiny", str(out)), out


def test_negative_experiment_output(negative):
    result, out = negative
    data = np.load(os.path.join(out, result.data_file))
    X = data["X"]
    cos = float(X[0] @ X[1])
    for key in ("disk-w2", "xavier-w2"):
        loss = data[f"{key}/loss"]
        conv = data[f"{key}/converged"]
        np.testing.assert_array_equal(conv, loss < 1e-4)
        assert int(data[f"{key}/below_1e4"]) <= int(data[f"{key}/below_0499"]) <= int(
            data[f"{key}/below_1"]) <= len(loss)
        sr = data[f"{key}/stable_rank"]
        # Stable rank of a 2x2 layer lies in [1, 2].
        assert np.all((sr[conv] >= 1 - 1e-9) & (sr[conv] <= 2 + 1e-9))
    # Converged runs whose neurons started in the two one-sided regions sit at 2/(1+|cos|).
    split = data["disk-w2/split_start"] & data["disk-w2/converged"]
    assert split.any()  # a fixed key; each seed has probability ~0.13
    np.testing.assert_allclose(data["disk-w2/stable_rank"][split, 0], 2 / (1 + abs(cos)),
                               atol=1e-3)
    # Plateau losses of non-converged runs are the predicted 0.25 / 0.5 (mean convention).
    loss = data["disk-w2/loss"]
    stuck = loss[(loss > 1e-2) & np.isfinite(loss)]
    assert np.all(np.min(np.abs(stuck[:, None] - np.array([0.25, 0.5])[None]), 1) < 5e-2)
    verdicts = {c.verdict for c in result.claims}
    assert verdicts <= {"agrees", "disagrees", "inconclusive"}
    assert os.path.getsize(os.path.join(out, result.figures[0])) > 10_000
    assert not math.isnan(result.seconds)


def test_cli_rejects_unknown_experiment(tmp_path):
    r = CliRunner().invoke(main, ["reproduce", "--only", "nope", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert "experiment='nope' is not a known experiment; allowed: " in r.output
    assert "negative" in r.output.split("allowed:")[1]


def test_cli_rejects_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(main, ["reproduce", "--out", str(blocker / "sub")])
    assert r.exit_code == 2
    assert "--out=" in r.output and "not a writable directory" in r.output
