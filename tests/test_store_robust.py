"""Broken stores and clashing writers: a truncated or corrupted manifest, a damaged batch, a
store of another format, an unwritable --out and a store another sweep is writing each give
one clear error (one line and exit code 2 from the CLI), with nothing lost."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

import gfsim
from gfsim.cli import main
from gfsim.sweep import load_spec, sweep
from gfsim.sweep._execute import lock_store

# the tiny batch of the other store tests: 6 linear runs of widths (2, 3, 1), one compile
SPEC = """
name = "robust"
dataset = "sphere"
n = 4
dim = 2
depth = 2
width = 3
activation = "linear"
num_saves = 8
t1 = 1.0
seeds = 6
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_usage_error(result, command, pattern):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gfsim {command}: error: "), result.output
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    (root / "s.toml").write_text(SPEC)
    store = root / "store"
    sweep(load_spec(root / "s.toml"), store, progress=False)
    return root, store


@pytest.fixture
def copy(made, tmp_path):
    root, store = made
    dst = tmp_path / "store"
    shutil.copytree(store, dst)
    return root / "s.toml", dst


def test_truncated_manifest(copy):
    spec, store = copy
    f = store / "gfsim-store.json"
    f.write_text(f.read_text()[:40])
    with pytest.raises(ValueError, match="gfsim-store.json' is unreadable .*JSONDecodeError"):
        gfsim.load(store)
    one_line_usage_error(invoke("status", store), "status", "is unreadable")
    one_line_usage_error(invoke("sweep", spec, "--out", store, "--resume"), "sweep",
                         "is unreadable")
    assert len(os.listdir(store / "batches")) == 1   # nothing removed


def test_store_of_another_format(copy):
    _, store = copy
    f = store / "gfsim-store.json"
    m = json.loads(f.read_text())
    m["format"] = "gfsim-sweep/0"
    f.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"format 'gfsim-sweep/0'; allowed: 'gfsim-sweep/1'"):
        gfsim.load(store)
    one_line_usage_error(invoke("status", store), "status", "another gfsim version")


def test_damaged_batch(copy):
    _, store = copy
    (batch,) = (store / "batches").iterdir()
    for meta in batch.rglob(".zmetadata"):
        meta.write_text("{not json")
    for meta in batch.rglob(".zarray"):
        meta.write_text("{not json")
    with pytest.raises(ValueError, match=r"b00000.zarr' is unreadable .*delete this batch"):
        gfsim.load(store)
    one_line_usage_error(invoke("status", store), "status", "is unreadable")


def test_second_writer_is_refused_while_the_first_holds_the_lock(copy):
    spec, store = copy
    held = lock_store(str(store))
    try:
        one_line_usage_error(invoke("sweep", spec, "--out", store, "--resume"), "sweep",
                             f"is being written by another gfsim sweep (pid {os.getpid()})")
        with pytest.raises(ValueError, match="being written by another gfsim sweep"):
            sweep(load_spec(spec), store, resume=True, progress=False)
    finally:
        held.close()
    # released: the resume runs (nothing left to do)
    assert sweep(load_spec(spec), store, resume=True, progress=False)["runs_done"] == 6


def test_unwritable_out(made, tmp_path):
    root, _ = made
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        one_line_usage_error(invoke("sweep", root / "s.toml", "--out", locked / "s"), "sweep",
                             "cannot be created")
    finally:
        locked.chmod(0o700)
    one_line_usage_error(invoke("sweep", root / "s.toml", "--out", "/proc/no/such"), "sweep",
                         "cannot be created")


@pytest.mark.parametrize("args, command, pattern", [
    (("status", "/nonexistent"), "status", "not a gfsim sweep store"),
    (("plot", "/nonexistent", "--kind", "final-rank", "--out", "x.png"), "plot",
     "not a gfsim store"),
    (("sweep", "/nonexistent.toml", "--out", "x"), "sweep", "cannot read"),
    (("run", "/nonexistent.toml", "--out", "x"), "run", "cannot read"),
    (("bench", "--only", "bogus"), "bench", "not a workload"),
    (("bench", "--repeats", "0"), "bench", "--repeats 0"),
])
def test_cli_bad_options_are_one_line_and_exit_2(args, command, pattern):
    one_line_usage_error(invoke(*args), command, pattern)
