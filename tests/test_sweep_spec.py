"""Sweep specs: validation (one clear error per bad spec, nothing created) and planning.
Pure Python: nothing here compiles."""

from __future__ import annotations

import math
import os

import pytest
from click.testing import CliRunner

from gfsim.cli import main
from gfsim.sweep import FIELDS, load_spec, parse_spec, plan

BASE = {"dataset": "sphere", "n": 4, "dim": 2, "width": 3, "activation": "linear",
        "num_saves": 8}


def spec(**extra):
    return parse_spec({**BASE, **extra})


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"dpeth": 3}, r"unknown key 'dpeth'; did you mean 'depth'\?"),
        ({"grid": {"init_scal": [1.0]}}, r"unknown key 'init_scal' in \[grid\]; did you mean "
                                         r"'init_scale'\?"),
        ({"zip": {"rtoll": [1e-6]}}, r"unknown key 'rtoll' in \[zip\]; did you mean 'rtol'\?"),
        ({"options": {"save_weight": True}}, r"did you mean 'save_weights'\?"),
        ({"seeds": {"start": 0, "stpo": 3}}, r"unknown key 'stpo' in \[seeds\]; did you mean "
                                             r"'stop'\?"),
        ({"depth": "3"}, r"depth='3' is not allowed; allowed: an integer >= 1\."),
        ({"depth": True}, r"depth=True is not allowed; allowed: an integer >= 1\."),
        ({"rtol": -1.0}, r"rtol=-1\.0 is not allowed; allowed: a number > 0\.0\."),
        ({"activation": "rleu"}, r"activation='rleu' is not allowed; allowed: .*relu"),
        # (other tests may register more losses in the same process: the list starts with these)
        ({"loss": "hinge"}, r"loss='hinge' is not allowed; allowed: exponential, logistic, "
                            r"square"),
        ({"grid": {"depth": [2, 0]}}, r"grid\.depth\[1\]=0 is not allowed"),
        ({"grid": {"depth": []}}, r"grid\.depth is an empty axis"),
        ({"grid": {"depth": 3}}, r"grid\.depth=3 is not allowed; allowed: a list"),
        ({"seeds": 0}, r"seeds=0 is not allowed"),
        ({"seeds": {"start": 3, "stop": 3}}, r"empty range"),
        ({"zip": {"t1": [1.0, 2.0], "rtol": [1e-6]}},
         r"\[zip\] lists have different lengths \(t1 has 2, rtol has 1\)"),
        ({"grid": {"n": [4, 5]}}, r"n is given twice \(fixed and \[grid\]\)"),
        ({"grid": {"depth": [2]}, "zip": {"depth": [3]}}, r"depth is given twice"),
        ({"seed": 1, "seeds": 3}, r"seed is given twice \(fixed and seeds\)"),
        ({"solver": "kvaerno5", "activation": "relu"}, r"solver='kvaerno5' cannot be used"),
        ({"dataset": "paper_pair", "dim": 1}, r"dim=1 is not allowed for dataset='paper_pair'"),
    ],
)
def test_bad_spec_one_clear_error(raw, match):
    with pytest.raises(ValueError, match=match) as info:
        spec(**raw)
    assert "\n" not in str(info.value)


def test_unknown_key_without_close_match_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown key 'zzz'; allowed: name, description, seeds"):
        spec(zzz=1)


def test_run_config_rejects_axes(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('depth = 2\n[grid]\nwidth = [2, 3]\n')
    with pytest.raises(ValueError, match=r"grid is not allowed in a single configuration"):
        load_spec(f, allow_axes=False)


def test_unreadable_toml(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("depth = [2, \n")
    with pytest.raises(ValueError, match=r"is not valid TOML"):
        load_spec(f)
    with pytest.raises(ValueError, match=r"cannot read"):
        load_spec(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "text, match",
    [
        ("dpeth = 3\n", "did you mean 'depth'?"),
        ("[grid]\ndepth = []\n", "empty axis"),
        ("depth = [2,\n", "not valid TOML"),
    ],
)
def test_cli_bad_spec_exit_2_one_line_no_store(tmp_path, text, match):
    f = tmp_path / "s.toml"
    f.write_text(text)
    out = tmp_path / "store"
    r = CliRunner().invoke(main, ["sweep", str(f), "--out", str(out), "--no-progress"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gfsim sweep: error:") and match in lines[0]
    assert not out.exists()
    r = CliRunner().invoke(main, ["run", str(f), "--out", str(out)])
    assert r.exit_code == 2 and not out.exists()


def test_expansion_order_and_counts():
    s = spec(seeds={"start": 2, "stop": 8, "step": 3}, grid={"depth": [2, 3], "d_out": [1, 2]},
             zip={"t1": [1.0, 2.0, 3.0], "rtol": [1e-6, 1e-7, 1e-8]})
    runs = s.runs()
    assert s.num_runs == len(runs) == 2 * 2 * 3 * 2
    # first axis outermost, seeds innermost; zipped fields move together
    assert [r["seed"] for r in runs[:4]] == [2, 5, 2, 5]
    assert runs[0]["depth"] == 2 and runs[-1]["depth"] == 3
    assert {(r["t1"], r["rtol"]) for r in runs} == {(1.0, 1e-6), (2.0, 1e-7), (3.0, 1e-8)}
    # every field has a value; unset optional fields are None
    assert all(set(r) == set(FIELDS) for r in runs)
    assert runs[0]["atol"] is None and runs[0]["n"] == 4
    assert spec(seeds=[4, 1]).runs()[1]["seed"] == 1
    assert [r["seed"] for r in spec(seeds=3).runs()] == [0, 1, 2]


def test_digest_is_of_the_normalised_spec():
    a = parse_spec({"grid": {"depth": [2, 3]}, "n": 4, "rtol": 1e-8})
    b = parse_spec({"rtol": 1e-8, "n": 4, "grid": {"depth": [2, 3]}, "t1": 100.0})  # a default
    assert a.digest() == b.digest()
    assert a.digest() != parse_spec({"grid": {"depth": [2, 4]}, "n": 4}).digest()
    assert a.digest() != parse_spec({"grid": {"depth": [3, 2]}, "n": 4}).digest()  # run order


def test_plan_groups_by_shape_and_traced_scalars():
    s = spec(seeds=3, grid={"init_scale": [0.1, 1.0], "depth": [2, 3],
                            "init": ["gaussian", "orthogonal"], "t1": [1.0, 2.0]})
    p = plan(s)
    runs = s.runs()
    ids = sorted(i for b in p.batches for i in b.runs)
    assert ids == list(range(s.num_runs))  # every run exactly once
    # seeds, init and init scale vary inside a batch; depth (shape) and t1 (a call scalar) do not
    assert len(p.batches) == 4 and len(p.shapes) == 2
    for b in p.batches:
        assert len({(runs[i]["depth"], runs[i]["t1"]) for i in b.runs}) == 1
        assert len({runs[i]["init_scale"] for i in b.runs}) == 2
        # similar runs are next to each other
        keys = [(runs[i]["init"], runs[i]["init_scale"]) for i in b.runs]
        assert keys == sorted(keys)


def test_plan_chunks_to_the_limits():
    s = spec(seeds=10, options={"batch_runs": 4})
    batches = plan(s).batches
    sizes = [len(b.runs) for b in batches]
    assert sum(sizes) == 10 and max(sizes) <= 4
    assert {b.size for b in batches} == {4}  # one run count: one compiled program
    tiny = spec(seeds=10, options={"batch_memory_mb": 1e-3})  # ~1 KiB: one run per batch
    assert len(plan(tiny).batches) == 10


def test_examples_are_valid():
    root = os.path.join(os.path.dirname(__file__), "..", "examples")
    files = [f for f in os.listdir(root) if f.endswith(".toml")]
    assert len(files) >= 3
    for f in files:
        s = load_spec(os.path.join(root, f), allow_axes=f != "run.toml")
        assert s.num_runs >= 1
    three = load_spec(os.path.join(root, "linear_depth_scale_loss.toml"))
    assert len([a for a in three.axes if a.kind == "grid"]) >= 3 and math.prod(
        len(a) for a in three.axes) == three.num_runs
