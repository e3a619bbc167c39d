"""From configs to a solved batch: the datasets and nets of the runs of one batch, their solve
(sharded over the run axis when there are several devices), and the result as an xarray
Dataset with every config field as a run coordinate."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import data as gdata
from ..nets import MLP


def _paper_pair(key, cfg):
    return gdata.paper_pair(cfg["angle"], dim=cfg["dim"])


def _random_pairs(key, cfg):
    return gdata.random_pairs(key, 1, dim=cfg["dim"])[0]


def _sphere(key, cfg):
    return gdata.sphere(key, cfg["n"], cfg["dim"], d_out=cfg["d_out"], targets=cfg["targets"])


def _teacher_student(key, cfg):
    return gdata.teacher_student(key, cfg["n"], cfg["dim"],
                                 teacher_widths=(cfg["teacher_width"], 1), labels=cfg["labels"])


# name -> (builder(key, cfg) -> Dataset, the fields it reads, (d_in, d_out) of a config)
DATASETS: dict[str, tuple[Callable, tuple[str, ...], Callable]] = {
    "paper_pair": (_paper_pair, ("angle", "dim"), lambda c: (c["dim"], 2)),
    "random_pairs": (_random_pairs, ("dim",), lambda c: (c["dim"], 2)),
    "sphere": (_sphere, ("n", "dim", "d_out", "targets"), lambda c: (c["dim"], c["d_out"])),
    "teacher_student": (_teacher_student, ("n", "dim", "teacher_width", "labels"),
                        lambda c: (c["dim"], 1)),
}


def dataset_dims(cfg: dict) -> tuple[int, int]:
    """(d_in, d_out) of a config's dataset; raises ValueError for a combination that cannot
    be built."""
    name = cfg["dataset"]
    if name in ("paper_pair", "random_pairs") and cfg["dim"] < 2:
        raise ValueError(f"dim={cfg['dim']!r} is not allowed for dataset={name!r}; allowed: an "
                         "integer >= 2.")
    return DATASETS[name][2](cfg)


def widths(cfg: dict) -> tuple[int, ...]:
    d_in, d_out = dataset_dims(cfg)
    return (d_in,) + (cfg["width"],) * (cfg["depth"] - 1) + (d_out,)


def build_dataset(cfg: dict):
    """The dataset of one run: ``DATASETS[dataset]`` from ``jax.random.key(data_seed)``."""
    fn = DATASETS[cfg["dataset"]][0]
    return fn(jax.random.key(cfg["data_seed"]), cfg)


def build_net(cfg: dict) -> MLP:
    """The initial net of one run: ``gfsim.MLP(widths, activation, key=jax.random.key(seed),
    init=init, scale=init_scale)``."""
    return MLP(widths(cfg), cfg["activation"], key=jax.random.key(cfg["seed"]), init=cfg["init"],
               scale=cfg["init_scale"], negative_slope=cfg["negative_slope"])


def simulate_kwargs(cfg: dict) -> dict:
    """The keyword arguments of :func:`gfsim.simulate` a config stands for."""
    kw = {k: cfg[k] for k in ("num_saves", "decades", "loss", "reduction", "solver", "rtol",
                              "atol", "stop_loss", "stop_plateau", "clock", "max_steps", "method",
                              "max_sliding")}
    kw["max_sliding"] = kw["max_sliding"] or None  # 0 in a spec (TOML has no None)
    return kw


def _data_key(cfg):
    name = cfg["dataset"]
    return (name,) + tuple(cfg[f] for f in DATASETS[name][1])


def batch_inputs(cfgs: list[dict]):
    """A batch of nets (leading run axis) and the data: one unbatched Dataset when every run uses
    the same data, else a batch. Runs that differ only in their seeds are built under one vmap;
    values equal building each run alone."""
    w0 = widths(cfgs[0])
    act, slope = cfgs[0]["activation"], cfgs[0]["negative_slope"]
    groups: dict = {}
    for i, c in enumerate(cfgs):
        groups.setdefault((c["init"], c["init_scale"]), []).append(i)
    parts, order = [], []
    for (init, scale), idx in groups.items():
        keys = jax.vmap(jax.random.key)(jnp.asarray([cfgs[i]["seed"] for i in idx]))
        parts.append(jax.vmap(lambda k, init=init, scale=scale:
                              MLP(w0, act, key=k, init=init, scale=scale).weights)(keys))
        order += idx
    back = np.argsort(order)  # from group order back to batch order
    weights = [jnp.concatenate([p[j] for p in parts])[back] for j in range(len(w0) - 1)]
    net = MLP.from_weights(weights, act, negative_slope=slope)

    dgroups: dict = {}
    for i, c in enumerate(cfgs):
        dgroups.setdefault(_data_key(c), {}).setdefault(c["data_seed"], []).append(i)
    if len(dgroups) == 1 and len(next(iter(dgroups.values()))) == 1:
        return net, build_dataset(cfgs[0])
    batches, source, offset = [], np.zeros(len(cfgs), np.int64), 0
    for seeds in dgroups.values():
        first = cfgs[next(iter(seeds.values()))[0]]
        fn = DATASETS[first["dataset"]][0]
        keys = jax.vmap(jax.random.key)(jnp.asarray(list(seeds)))
        batches.append(jax.vmap(lambda k, first=first, fn=fn: fn(k, first))(keys))
        for j, idx in enumerate(seeds.values()):
            source[idx] = offset + j
        offset += len(seeds)
    data = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a)[source], *batches)
    return net, data


def shard_runs(net: MLP, data, devices=None, size: int | None = None):
    """Pad the run axis to ``size`` runs (default: as it is) rounded up to a multiple of the
    device count, repeating the last run, and place it sharded over a 1-D mesh of ``devices``
    (default: all). Returns (net, data, padded run count)."""
    devices = jax.devices() if devices is None else devices
    runs = net.runs
    nd = len(devices)
    padded = -(-max(runs, size or 0) // nd) * nd

    def pad(a):
        if padded == runs:
            return a
        extra = jnp.broadcast_to(a[-1:], (padded - runs,) + a.shape[1:])
        return jnp.concatenate([a, extra])

    if nd == 1:
        net = jax.tree_util.tree_map(pad, net)
        data = jax.tree_util.tree_map(pad, data) if data.is_batched else data
        return net, data, padded
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(devices), ("run",))
    by_run = NamedSharding(mesh, PartitionSpec("run"))
    replicated = NamedSharding(mesh, PartitionSpec())
    net = jax.tree_util.tree_map(lambda a: jax.device_put(pad(a), by_run), net)
    if data.is_batched:
        data = jax.tree_util.tree_map(lambda a: jax.device_put(pad(a), by_run), data)
    else:
        data = jax.tree_util.tree_map(lambda a: jax.device_put(a, replicated), data)
    return net, data, padded


def solve_batch(cfgs: list[dict], *, run_ids, batch_id: str = "", save_weights: bool = False,
                size: int | None = None, devices=None):
    """Solve the runs of one batch (they share every field but those of ``in_batch`` kind, see
    :data:`gfsim.sweep.FIELDS`) in one batched :func:`gfsim.simulate` call, padded to
    ``size`` runs and sharded over ``devices`` (:func:`shard_runs`). Returns the
    xarray Dataset of the batch (flat run coordinates: every config field, ``run_id``)."""
    from ..flow import simulate
    from ..store import flat, to_xarray

    start = time.perf_counter()
    net, data = batch_inputs(cfgs)
    net, data, _ = shard_runs(net, data, devices, size)
    c = cfgs[0]
    solve_start = time.perf_counter()
    traj = simulate(net, data, c["t1"], **simulate_kwargs(c))
    traj = jax.block_until_ready(traj)
    solve = time.perf_counter() - solve_start
    if net.runs != len(cfgs):
        traj = traj[: len(cfgs)]
    traj = jax.device_get(traj)
    wall = time.perf_counter() - start
    coords = {k: [cfg[k] for cfg in cfgs] for k in c}
    ds = flat(to_xarray(traj, save_weights=save_weights, run_id=list(run_ids), **coords))
    ds["batch"] = ("run", np.array([batch_id] * len(cfgs)))
    ds["batch_wall_time"] = ("run", np.full(len(cfgs), wall))
    ds["batch_solve_time"] = ("run", np.full(len(cfgs), solve))
    ds["lockstep_waste"] = ("run", np.full(len(cfgs), traj.lockstep_waste()))
    return ds
