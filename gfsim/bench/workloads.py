"""The workloads of the benchmark protocol (../shared/benchmarks.md) as
:class:`~gfsim.bench.problem.Problem` lists, at three sizes: ``full`` (the protocol's), ``quick``
(about 30 minutes on a 2-core CPU, 26 of them W-E's: fewer seeds and depths, shorter GD runs in
PyTorch) and ``tiny`` (the tests).

- W-A: the paper's size-2 dataset, depth 2, width 2, disk init r = 1e-4, t1 = 300, mean loss.
- W-B: depth-2 ReLU, d = 10, width 50, 2 random unit inputs, target 1, init scale 0.1, t1 = 50,
  sum loss; split into the runs whose (reference) flow slides along a kink and those whose does
  not, benchmarked separately.
- W-C: deep ReLU teacher-student, n = 256, d = 16, student width 32, depths 2..8: targets are a
  width-32 depth-2 ReLU teacher's outputs (gfsim.data.teacher_student, labels="regression"),
  rescaled to unit RMS; Gaussian (LeCun) init; mean loss; t1 = 0.5 (the loss falls from about 3
  to about 1.5; at n = 256 already about 300 kink crossings per run at depth 2 and 1000 at depth
  3, each one a step of the event-driven solver). The quick profile uses n = 32 and depths 2, 3.
- W-D: deep linear matrix completion (Arora et al. 2019 style): per seed a 30x30 rank-2 target
  (gfsim.data.matrix_completion, 30 % of the entries observed, target scaled to unit Frobenius
  norm), depth 3, widths 30, N(0, 1e-3^2) init, sum loss over the observed entries, t1 = 3000
  (past the plateau; the second singular value is not yet fitted in every run).
- W-E: the authors' scale (the paper's depth experiment): teacher-student sign labels
  (gfsim.data.teacher_student, teacher widths (10, 1)), n = 1000, d = 10, student width 64,
  depths 2, 4, 8, Gaussian init of scale 0.1, mean loss, square and exponential loss, 32 seeds,
  t1 = 30 (past the escape from the init: the square loss falls from about 1 to about 0.08 and
  each run crosses thousands of kinks). The quick profile cuts seeds (4) and depths (2) and n
  to 256, never below: at n = 256 a run still crosses about 2400 kinks by t1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import data as gdata
from ..data import Dataset
from ..nets import MLP
from .problem import Problem

PROFILES = ("quick", "full", "tiny")

_SIZES = {
    "W-A": dict(full=dict(seeds=288, scipy_subset=8, torch_max_steps=20_000),
                quick=dict(seeds=32, scipy_subset=2, torch_max_steps=3_000),
                tiny=dict(seeds=4, scipy_subset=1, torch_max_steps=30, t1=30.0)),
    "W-B": dict(full=dict(seeds=64, max_steps=20_000, scipy_subset=4, torch_max_steps=6_000),
                quick=dict(seeds=16, max_steps=4_000, scipy_subset=2, torch_max_steps=1_500,
                           scipy_max_evals=4_000),
                tiny=dict(seeds=4, max_steps=2_000, scipy_subset=1, torch_max_steps=30,
                          t1=5.0)),
    "W-C": dict(full=dict(seeds=32, depths=(2, 3, 4, 5, 6, 7, 8), n=256, scipy_subset=2),
                quick=dict(seeds=4, depths=(2, 3), n=32, scipy_subset=1),
                tiny=dict(seeds=2, depths=(2,), n=16, scipy_subset=1, t1=0.3)),
    "W-E": dict(full=dict(seeds=32, depths=(2, 4, 8), n=1000, scipy_subset=1),
                quick=dict(seeds=4, depths=(2,), n=256, scipy_subset=1),
                tiny=dict(seeds=2, depths=(2,), n=16, scipy_subset=1, t1=3.0)),
    "W-D": dict(full=dict(seeds=16, scipy_subset=2, torch_max_steps=6_000),
                quick=dict(seeds=4, scipy_subset=1, torch_max_steps=2_000),
                tiny=dict(seeds=2, scipy_subset=1, torch_max_steps=30, t1=300.0, size=8)),
}


def problem_a(seeds: int = 288, t1: float = 300.0, *, scipy_subset: int = 8,
              torch_max_steps: int = 20_000) -> Problem:
    """W-A with ``seeds`` runs up to ``t1``."""
    net = MLP((2, 2, 2), key=jax.random.key(0), init="disk", scale=1e-4, runs=seeds)
    # lr 1e-2, 5e-3, 2.5e-3 at t1 = 300 (GD is stable and first order there).
    gd_steps = tuple(int(round(t1 / lr)) for lr in (1e-2, 5e-3, 2.5e-3))
    return Problem(
        name="W-A", workload="W-A",
        description=f"paper_pair, MLP(2, 2, 2) ReLU, disk r=1e-4, {seeds} seeds, t1={t1:g}, "
        "mean loss, float64",
        net=net, data=gdata.paper_pair(), t1=t1, reduction="mean",
        rtols=(1e-4, 1e-6, 1e-8, 1e-10), gd_steps=gd_steps, torch_steps=gd_steps[:1],
        torch_max_steps=torch_max_steps, scipy_subset=scipy_subset, max_steps=100_000)


def workload_a(profile: str) -> list[Problem]:
    s = _SIZES["W-A"][profile]
    return [problem_a(s["seeds"], s.get("t1", 300.0), scipy_subset=s["scipy_subset"],
                      torch_max_steps=s["torch_max_steps"])]


def workload_b(profile: str) -> list[Problem]:
    """One problem for all runs; the suite splits it by sliding (see :func:`split_sliding`)."""
    s = _SIZES["W-B"][profile]
    t1 = s.get("t1", 50.0)
    kd, kn = jax.random.split(jax.random.key(0))
    data = gdata.sphere(kd, 2, 10, runs=s["seeds"])
    net = MLP((10, 50, 1), key=kn, scale=0.1, runs=s["seeds"])
    return [Problem(
        name="W-B", workload="W-B",
        description=f"depth-2 ReLU, d=10, width 50, 2 unit inputs, target 1, Gaussian init "
        f"scale 0.1, {s['seeds']} seeds, t1={t1:g}, sum loss, max_steps {s['max_steps']}",
        net=net, data=data, t1=t1, reduction="sum", rtols=(1e-4, 1e-6, 1e-8),
        gd_steps=(1500, 3000, 6000),
        torch_steps=(1500,), torch_max_steps=s["torch_max_steps"],
        scipy_subset=s["scipy_subset"], scipy_max_evals=s.get("scipy_max_evals", 20_000),
        max_steps=s["max_steps"])]


def split_sliding(p: Problem, slides_per_run) -> list[tuple[Problem, np.ndarray]]:
    """W-B's runs whose flow slides along a kink surface (per the reference) and the others, as
    two (problem, run indices) pairs (each left out when empty)."""
    slides = np.asarray(slides_per_run)
    out = []
    for name, idx in (("sliding", np.where(slides > 0)[0]),
                      ("non-sliding", np.where(slides == 0)[0])):
        if idx.size:
            out.append((p.subset(idx, f"{p.name} {name}",
                                 f"{p.description}; the {idx.size} runs that are {name}"), idx))
    return out


def _teacher_data(key, n, dim):
    d = gdata.teacher_student(key, n, dim, teacher_widths=(32, 1), labels="regression")
    return Dataset(d.X, d.Y / jnp.sqrt(jnp.mean(d.Y ** 2)))


def workload_c(profile: str) -> list[Problem]:
    s = _SIZES["W-C"][profile]
    t1 = s.get("t1", 0.5)
    kd, kn = jax.random.split(jax.random.key(1))
    data = _teacher_data(kd, s["n"], 16)
    out = []
    for k in s["depths"]:
        kn, sub = jax.random.split(kn)
        widths = (16,) + (32,) * (k - 1) + (1,)
        net = MLP(widths, "relu", key=sub, init="gaussian", scale=1.0, runs=s["seeds"])
        out.append(Problem(
            name=f"W-C depth {k}", workload="W-C",
            description=f"ReLU teacher-student, n={s['n']}, d=16, width 32, depth {k}, "
            f"Gaussian (LeCun) init, {s['seeds']} seeds, t1={t1:g}, mean loss",
            net=net, data=data, t1=t1, reduction="mean", rtols=(1e-4, 1e-6, 1e-8),
            gd_steps=(300, 600, 1200), torch_steps=(300,), torch_max_steps=10_000,
            scipy_rtols=(1e-6,), scipy_subset=s["scipy_subset"], max_steps=20_000))
    return out


def workload_d(profile: str) -> list[Problem]:
    s = _SIZES["W-D"][profile]
    t1 = s.get("t1", 3000.0)
    size = s.get("size", 30)
    kd, kn = jax.random.split(jax.random.key(2))
    d = gdata.matrix_completion(kd, size, size, 2, observed=0.3, runs=s["seeds"])
    fro = jnp.sqrt(jnp.sum(d.Y ** 2, axis=(-2, -1), keepdims=True))
    data = Dataset(d.X, d.Y / fro, d.mask)
    net = MLP((size,) * 4, "linear", key=kn, init="normal", scale=1e-3, runs=s["seeds"])
    # lr 0.25, 0.125, 0.0625 at t1 = 3000 (0.5 is at the edge of stability once fitted).
    gd_steps = tuple(int(round(t1 / lr)) for lr in (0.25, 0.125, 0.0625))
    return [Problem(
        name="W-D", workload="W-D",
        description=f"deep linear matrix completion, {size}x{size} rank-2 targets of unit "
        f"Frobenius norm, 30% observed, depth 3, N(0, 1e-3^2) init, {s['seeds']} seeds, "
        f"t1={t1:g}, sum loss on the observed entries",
        net=net, data=data, t1=t1, reduction="sum", rtols=(1e-4, 1e-6, 1e-8),
        gd_steps=gd_steps, torch_steps=gd_steps[:1], torch_max_steps=s["torch_max_steps"],
        scipy_subset=s["scipy_subset"], max_steps=100_000, reference_method="plain",
        balance_kind="matrix")]


# W-E's problem: the student's input dimension and width, its init scale, the horizon
E_DIM, E_WIDTH, E_SCALE, E_T1 = 10, 64, 0.1, 30.0
E_LOSSES = ("square", "exponential")


def workload_e(profile: str) -> list[Problem]:
    """W-E: one problem per (loss, depth); every run has its own teacher-student dataset."""
    s = _SIZES["W-E"][profile]
    t1 = s.get("t1", E_T1)
    kd, kn = jax.random.split(jax.random.key(2026))
    data = gdata.teacher_student(kd, n=s["n"], dim=E_DIM, runs=s["seeds"])
    out = []
    for k in s["depths"]:
        kn, sub = jax.random.split(kn)
        net = MLP((E_DIM,) + (E_WIDTH,) * (k - 1) + (1,), "relu", key=sub, init="gaussian",
                  scale=E_SCALE, runs=s["seeds"])
        for loss in E_LOSSES:
            out.append(Problem(
                name=f"W-E depth {k} {loss}", workload="W-E",
                description=f"teacher-student sign labels, n={s['n']}, d={E_DIM}, width "
                f"{E_WIDTH}, depth {k}, Gaussian init scale {E_SCALE}, {s['seeds']} seeds "
                f"(a dataset each), t1={t1:g}, {loss} loss, mean reduction",
                net=net, data=data, t1=t1, loss=loss, reduction="mean",
                # (from rtol 1e-5 up, steps go through crossings: methods.STEP_RTOL)
                rtols=(1e-4, 1e-5, 1e-6, 1e-8),
                # lr 2e-2, 1e-2, 5e-3 at t1 = 30
                gd_steps=tuple(int(round(t1 / lr)) for lr in (2e-2, 1e-2, 5e-3)),
                torch_steps=(int(round(t1 / 2e-2)),), torch_max_steps=3_000,
                scipy_rtols=(1e-6,), scipy_subset=s["scipy_subset"], scipy_max_evals=20_000,
                max_steps=100_000))
    return out


WORKLOADS = {"W-A": workload_a, "W-B": workload_b, "W-C": workload_c, "W-D": workload_d,
             "W-E": workload_e}


def workload_names() -> tuple[str, ...]:
    return tuple(WORKLOADS)
