"""Planning: the runs of a spec grouped into batches.

Runs share a batch when they differ only in fields that enter the initial weights or the data
(``seed``, ``data_seed``, ``init``, ``init_scale`` and the data's values: see
``Field.in_batch``); a batch is one batched :func:`gfsim.simulate` call. Every other field is
one value per call: the shape fields (widths, number of points, save count) and the static
settings (activation, loss, reduction, solver, method, step budget, whether ``stop_loss`` is
set) each make a new compiled program; ``t1``, ``rtol``, ``atol`` and the ``stop_loss`` value
are traced by simulate (no recompile) but are scalars of the call, so they split batches without
adding compiles. The plan counts both.

Within a group, runs are ordered by init and init scale before the group is chunked, so runs of
similar length (the plateau of a small init grows like log(1/scale)) share a batch: the
batched solve runs in lockstep until its slowest run ends. Chunks are at most ``batch_runs``
runs and at most ``batch_memory_mb`` of estimated memory; the run count is part of the
compiled shape, so the last chunk of a group is padded (its last run repeated, the copies
dropped) to the size of the others.
"""

from __future__ import annotations

import dataclasses
import math

from ._runs import widths
from ._spec import FIELDS, Spec

TRACED = ("t1", "rtol", "atol", "stop_loss", "stop_plateau")


@dataclasses.dataclass(frozen=True)
class Batch:
    id: str
    runs: tuple[int, ...]  # run ids, in the order they are solved
    shape: int  # index of its compiled shape
    label: str  # what the runs share (shown by --dry-run)
    size: int  # the run count it is solved at (the last chunk of a group is padded to it)


@dataclasses.dataclass(frozen=True)
class Plan:
    batches: tuple[Batch, ...]
    shapes: tuple[str, ...]
    runs_total: int

    def to_json(self) -> list[dict]:
        return [{"id": b.id, "runs": list(b.runs), "shape": b.shape, "label": b.label,
                 "size": b.size} for b in self.batches]

    @classmethod
    def from_json(cls, batches: list[dict], shapes: list[str], runs_total: int) -> Plan:
        return cls(tuple(Batch(b["id"], tuple(b["runs"]), b["shape"], b["label"], b["size"])
                         for b in batches), tuple(shapes), runs_total)


def _points(cfg: dict) -> int:
    return 2 if cfg["dataset"] in ("paper_pair", "random_pairs") else cfg["n"]


def _shape_key(cfg: dict):
    static = tuple(cfg[k] for k in FIELDS if not FIELDS[k].in_batch and k not in TRACED
                   and k not in ("dim", "d_out", "width", "depth", "n", "dataset"))
    return (widths(cfg), _points(cfg), cfg["stop_loss"] is None,
            cfg["stop_plateau"] is None) + static


def _group_key(cfg: dict):
    return (_shape_key(cfg), cfg["dataset"]) + tuple(cfg[k] for k in TRACED)


def run_bytes(cfg: dict) -> float:
    """A rough per-run memory estimate of a batched solve: the saved weights, the solver's
    stages and the data with its activations (float64)."""
    w = widths(cfg)
    params = sum(a * b for a, b in zip(w[:-1], w[1:]))
    acts = _points(cfg) * sum(w)
    return 8.0 * (2 * cfg["num_saves"] * params + 16 * params + 4 * acts)


def _order(cfg: dict, run_id: int):
    scale = cfg["init_scale"]
    return (cfg["init"], -1.0 if scale is None else scale, run_id)


def _describe(cfg: dict) -> str:
    w = "x".join(str(x) for x in widths(cfg))
    parts = [f"widths={w}", cfg["activation"], f"{cfg['loss']}/{cfg['reduction']}",
             cfg["solver"], f"method={cfg['method']}", f"t1={cfg['t1']:g}",
             f"rtol={cfg['rtol']:g}"]
    if cfg["stop_loss"] is not None:
        parts.append(f"stop_loss={cfg['stop_loss']:g}")
    return " ".join(parts)


def plan(spec: Spec, runs: list[dict] | None = None) -> Plan:
    """Group the runs of ``spec`` into batches (see the module docstring)."""
    runs = spec.runs() if runs is None else runs
    groups: dict = {}
    for i, cfg in enumerate(runs):
        groups.setdefault(_group_key(cfg), []).append(i)
    shapes: dict = {}
    batches = []
    limit_runs = spec.options["batch_runs"]
    limit_bytes = spec.options["batch_memory_mb"] * 2**20
    for key, ids in groups.items():
        shape = shapes.setdefault(key[0], len(shapes))
        ids = sorted(ids, key=lambda i: _order(runs[i], i))
        size = max(1, min(limit_runs, math.floor(limit_bytes / run_bytes(runs[ids[0]]))))
        # as few runs per batch as the chunk count allows, and every chunk solved at the same
        # run count (the last one padded): one compiled program for the whole group
        chunks = math.ceil(len(ids) / size)
        size = math.ceil(len(ids) / chunks)
        for c in range(chunks):
            part = tuple(ids[c * size:(c + 1) * size])
            batches.append(Batch(f"b{len(batches):05d}", part, shape, _describe(runs[part[0]]),
                                 size))
    labels = [""] * len(shapes)
    for key, s in shapes.items():
        labels[s] = str(key)
    return Plan(tuple(batches), tuple(labels), len(runs))


def format_plan(spec: Spec, p: Plan, *, devices: int = 1) -> str:
    """The plan as text (``gfsim sweep --dry-run``)."""
    head = spec.name or "sweep"
    axes = " x ".join(f"{'+'.join(a.names)}({len(a)})" for a in spec.axes) or "no axes"
    lines = [
        f"{head}: {p.runs_total} runs ({axes}), {len(p.batches)} batches, "
        f"{len(p.shapes)} compiled shape(s), {devices} device(s)",
    ]
    for b in p.batches:
        pad = f" (+{b.size - len(b.runs)} pad)" if b.size > len(b.runs) else ""
        lines.append(f"  {b.id}  {len(b.runs):5d} runs{pad}  shape {b.shape}  {b.label}")
    return "\n".join(lines)
