"""Traced solves kept across processes (gfsim._exported): a second process loads the stored
program instead of tracing, gets the same numbers, and bad or missing cache files only cost a
trace."""

import os
import subprocess
import sys

import jax
import numpy as np

import gfsim
from gfsim import _exported

_SCRIPT = """
import sys, jax, numpy as np, gfsim
kd, kn = jax.random.split(jax.random.key(3))
data = gfsim.data.sphere(kd, 3, 4)
net = gfsim.MLP((4, 3, 1), key=kn, runs=2, scale=0.5)
tr = gfsim.simulate(net, data, 2.0, rtol=1e-7, num_saves=4)
np.save(sys.argv[1], np.asarray(tr.loss))
print(gfsim.flow.trace_count())
"""


def test_second_process_loads_the_stored_program_instead_of_tracing(tmp_path):
    env = dict(os.environ, GFSIM_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("GFSIM_TRACE_CACHE", None)
    traces = []
    for i in range(2):
        r = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / f"loss{i}.npy")],
                           env=env, capture_output=True, text=True, check=True)
        traces.append(int(r.stdout.split()[-1]))
    assert traces == [1, 0]  # the first process traced the solve, the second did not
    stored = os.listdir(tmp_path / "cache" / "gfsim-exported")
    assert len(stored) == 1 and stored[0].endswith(".jaxexport")
    a, b = np.load(tmp_path / "loss0.npy"), np.load(tmp_path / "loss1.npy")
    assert np.all(np.isfinite(a)) and a[0, -1] < a[0, 0]  # it really trained
    np.testing.assert_array_equal(a, b)


def _problem(seed):
    kd, kn = jax.random.split(jax.random.key(seed))
    return gfsim.MLP((3, 2, 1), key=kn, runs=2, scale=0.5), gfsim.data.sphere(kd, 3, 3)


def test_corrupt_file_is_replaced_and_results_match_the_ordinary_path(tmp_path, monkeypatch):
    monkeypatch.setattr(_exported, "cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(_exported, "_MEMO", {})
    net, data = _problem(5)
    kw = dict(rtol=1e-7, num_saves=3)
    first = gfsim.simulate(net, data, 1.0, **kw)
    (name,) = os.listdir(tmp_path)
    (tmp_path / name).write_bytes(b"not an export")
    _exported._MEMO.clear()
    again = gfsim.simulate(net, data, 1.0, **kw)
    jax.export.deserialize(bytearray((tmp_path / name).read_bytes()))  # rewritten whole
    monkeypatch.setattr(_exported, "cache_dir", lambda: None)  # the ordinary path
    plain = gfsim.simulate(net, data, 1.0, **kw)
    for tr in (first, again):
        np.testing.assert_allclose(tr.loss, plain.loss, rtol=1e-12)
        np.testing.assert_array_equal(tr.status, plain.status)


def test_tracers_take_the_ordinary_path(tmp_path, monkeypatch):
    monkeypatch.setattr(_exported, "cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(_exported, "_MEMO", {})
    kd, kn = jax.random.split(jax.random.key(6))
    net = gfsim.MLP((3, 2, 1), "linear", key=kn, runs=2, scale=0.5)
    data = gfsim.data.sphere(kd, 3, 3)

    def final_loss(scale):
        n = gfsim.MLP.from_weights([w * scale for w in net.weights], "linear")
        return gfsim.simulate(n, data, 0.5, rtol=1e-8, num_saves=2).final_loss.sum()

    g = jax.grad(final_loss)(1.0)
    assert np.isfinite(g) and g != 0.0
    assert os.listdir(tmp_path) == []  # nothing exported for a traced call


def test_key_follows_gfsim_source(tmp_path, monkeypatch):
    # An edited checkout keeps its version number: the key must still change with the code.
    args = ((1, 2), "treedef", (((3,), "float64", False),))
    base = _exported._key(*args)
    assert base == _exported._key(*args) and len(_exported._source_digest()) == 64
    monkeypatch.setattr(_exported, "_source_digest", lambda: "edited")
    assert _exported._key(*args) != base
