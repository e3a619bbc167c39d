"""Results on disk: xarray Datasets in zarr directories.

One layout for everything :func:`gfsim.load` reads:

- a **trajectory store** (:func:`save`): one zarr directory holding ``to_xarray(traj)``;
- a **sweep store** (``gfsim sweep``/``gfsim run``): a directory with ``gfsim-store.json`` (the
  normalised spec, its hash and the plan: which runs make up which batch) and one zarr
  directory per *committed* batch under ``batches/``.

Dims: ``run``, ``time`` (save index), ``layer``, ``sv`` (singular-value index, largest first).
Every config field is a run coordinate and a level of the ``run`` index (with ``run_id``), so
``ds.sel(depth=4, init_scale=1e-3)`` and ``ds.sel(run_id=7)`` work; ragged shapes (layers,
singular values, save counts) are padded with NaN. Variables:

- ``t (run, time)``: the save times; ``loss_curve (run, time)``: the loss at them (the
  config field ``loss`` is the loss's name);
- ``singular_values (run, time, layer, sv)`` of each layer's weights at each save time, and
  ``final_singular_values (run, layer, sv)`` at the end of the run (the save slots after an early
  stop are NaN, the final weights are not);
- ``final_loss``, ``t_final``, ``status`` (its label: ``reached_t1``, ``stop_loss``, ...),
  ``status_code`` (:class:`gfsim.Status`), ``num_steps``, ``num_accepted``, ``num_rejected``,
  ``num_crossings``, ``num_slides`` and ``sliding_room`` (``Trajectory.max_sliding``: the room
  for deeper held pairs the run had; -1: not counted by that method), ``t_stiff`` (when the
  run switched to implicit steps, ``Trajectory.t_stiff``; NaN: never), ``layer_out`` and
  ``layer_in`` (each layer's shape; 0 past a run's depth);
- in a sweep: ``batch``, ``batch_wall_time`` (seconds for the run's whole batch: inputs, solve,
  conversion), ``batch_solve_time`` (of which the simulate call, compile included) and
  ``lockstep_waste`` (:meth:`gfsim.Trajectory.lockstep_waste` of the batch);
- with ``save_weights``: ``weights (run, time, layer, row, col)``, NaN-padded.

The attributes record the time convention (``loss``, ``reduction``, ``time_convention``).

**Atomic batches.** A batch is written to a temporary directory beside its final place and
renamed into place with ``os.replace``; a directory rename is atomic on POSIX filesystems, so a
reader (or a resumed sweep) sees a batch entirely or not at all, and a second writer of the same
batch (a task retried by Ray) finds it committed and throws its copy away. A process killed
mid-write leaves only a ``.tmp-*`` directory, which readers ignore and a resume removes.

**No code from the store.** Every stored array has a plain numeric or fixed-width string dtype;
:func:`load` refuses a store whose metadata names a pickle codec.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import numpy as np

MANIFEST = "gfsim-store.json"
BATCHES = "batches"
ERRORS = "errors"

TIME_CONVENTION = (
    "Gradient-flow time depends on the loss reduction: reduction='sum' is "
    "L = 1/2 sum_i ||f(x_i) - y_i||^2 for the square loss (the theory convention), "
    "reduction='mean' is the mean over all n*d_out entries of (f - y)^2 (torch MSELoss); the "
    "mean-convention flow at time t equals the sum-convention flow at time 2t/(n*d_out). "
    "Other losses: the sum or the mean over entries."
)

_PAD_DIMS = ("time", "layer", "sv", "row", "col")


def _singular_values(w: np.ndarray) -> np.ndarray:
    """Singular values over the last two axes; NaN where the matrix is not finite (the save
    slots after an early stop)."""
    k = min(w.shape[-2:])
    out = np.full(w.shape[:-2] + (k,), np.nan)
    ok = np.all(np.isfinite(w), axis=(-2, -1))
    if np.any(ok):
        out[ok] = np.linalg.svd(w[ok], compute_uv=False)
    return out


def _pad_last(a: np.ndarray, sizes: tuple[int, ...], fill) -> np.ndarray:
    pad = [(0, 0)] * (a.ndim - len(sizes)) + [(0, s - n) for n, s in zip(a.shape[-len(sizes):],
                                                                        sizes)]
    return np.pad(a, pad, constant_values=fill)


def _coord_array(name: str, value, runs: int) -> np.ndarray:
    if isinstance(value, (str, bytes)) or np.ndim(value) == 0:
        value = [value] * runs
    value = list(value)
    if len(value) != runs:
        raise ValueError(f"coordinate {name} has {len(value)} values for {runs} runs.")
    if any(isinstance(v, str) for v in value):
        return np.array([str(v) for v in value])
    if all(v is None or isinstance(v, (float, int, np.number)) and not isinstance(v, bool)
           for v in value):
        if any(v is None for v in value) or any(isinstance(v, (float, np.floating))
                                                for v in value):
            return np.array([np.nan if v is None else float(v) for v in value])
        return np.array(value, dtype=np.int64)
    return np.asarray(value)


def to_xarray(traj, *, save_weights: bool = False, **coords):
    """A :class:`gfsim.Trajectory` (one run or a batch) as an ``xarray.Dataset`` with dims
    ``run``, ``time``, ``layer``, ``sv`` (see :mod:`gfsim.store` for the variables).

    **Arguments:**

    - ``traj``: the trajectory; a single run gets a run axis of length 1.
    - ``save_weights``: also store every layer's weights at every save time (default False).
    - ``coords``: run coordinates, each a scalar (the same for every run) or one value per run;
      None becomes NaN. ``run_id=`` sets the run ids (default 0, 1, ...).

    **Returns:** an ``xarray.Dataset`` whose ``run`` dim is indexed by ``run_id`` and the
    coordinates (a MultiIndex: ``ds.sel(depth=4)``, ``ds.sel(run_id=3)``).
    """
    from .trajectory import Trajectory

    if not isinstance(traj, Trajectory):
        raise ValueError(
            f"traj={type(traj).__name__} is not allowed; allowed: a gfsim.Trajectory (what "
            "gfsim.simulate or gfsim.gd returns).")
    import xarray as xr

    batched = traj.is_batched

    def runs_first(a):
        a = np.asarray(a)
        return a if batched else a[None]

    loss = runs_first(traj.loss)
    runs, num_t = loss.shape
    weights = [runs_first(w) for w in traj.weights]
    final = [runs_first(w) for w in traj.final_weights]
    depth = len(weights)
    k = max(min(w.shape[-2:]) for w in weights)
    sv = np.stack([_pad_last(_singular_values(w), (k,), np.nan) for w in weights], axis=2)
    final_sv = np.stack([_pad_last(_singular_values(w), (k,), np.nan) for w in final], axis=1)
    ts = np.broadcast_to(np.asarray(traj.ts, dtype=float), (runs, num_t))

    def counts(x):
        return np.full(runs, -1, np.int64) if x is None else runs_first(x).astype(np.int64)

    labels = np.atleast_1d(traj.status_labels()).astype(str)
    data = {
        "t": (("run", "time"), ts),
        "loss_curve": (("run", "time"), loss.astype(float)),
        "singular_values": (("run", "time", "layer", "sv"), sv),
        "final_singular_values": (("run", "layer", "sv"), final_sv),
        "final_loss": ("run", runs_first(traj.final_loss).astype(float)),
        "t_final": ("run", runs_first(traj.t_final).astype(float)),
        "status": ("run", labels),
        "status_code": ("run", runs_first(traj.status).astype(np.int64)),
        "num_steps": ("run", counts(traj.num_steps)),
        "num_accepted": ("run", counts(traj.num_accepted)),
        "num_rejected": ("run", counts(traj.num_rejected)),
        "num_crossings": ("run", counts(traj.num_crossings)),
        "num_slides": ("run", counts(traj.num_slides)),
        "sliding_room": ("run", counts(traj.max_sliding)),
        "t_stiff": ("run", np.full(runs, np.nan) if traj.t_stiff is None
                    else runs_first(traj.t_stiff).astype(float)),
        "layer_out": (("run", "layer"), np.tile([w.shape[-2] for w in weights], (runs, 1))),
        "layer_in": (("run", "layer"), np.tile([w.shape[-1] for w in weights], (runs, 1))),
    }
    if save_weights:
        rows = max(w.shape[-2] for w in weights)
        cols = max(w.shape[-1] for w in weights)
        data["weights"] = (("run", "time", "layer", "row", "col"),
                           np.stack([_pad_last(w, (rows, cols), np.nan) for w in weights], 2))
    run_ids = coords.pop("run_id", np.arange(runs))
    coord_vars = {"run_id": ("run", np.asarray(run_ids, dtype=np.int64))}
    for name, value in coords.items():
        coord_vars[name] = ("run", _coord_array(name, value, runs))
    attrs = {
        "loss": traj.loss_name,
        "reduction": traj.reduction,
        "activation": traj.activation,
        "method": traj.method,
        "time_convention": TIME_CONVENTION,
        "depth_max": depth,
    }
    return indexed(xr.Dataset(data, coords=coord_vars, attrs=attrs))


def indexed(ds):
    """``ds`` with the ``run`` dim indexed by all its run coordinates (a pandas MultiIndex
    whose levels are ``run_id`` and the config fields): ``ds.sel(depth=4, init_scale=1e-3)``."""
    if "run" in ds.indexes:
        return ds
    levels = ["run_id"] + [c for c in ds.coords if c != "run_id" and ds[c].dims == ("run",)]
    return ds.set_index(run=levels)


def flat(ds):
    """``ds`` with its run coordinates as plain arrays (what is written to zarr)."""
    return ds.reset_index("run") if "run" in ds.indexes else ds


# ----------------------------------------------------------------------------------------------
# Writing


def _zarr_kwargs() -> dict:
    import zarr

    # zarr v2's format: its fixed-width string dtype is specified (v3 has no spec for it yet)
    return {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}


def write_atomic(ds, path: str | os.PathLike) -> bool:
    """Write ``ds`` as a zarr directory at ``path``, all or nothing: written beside it, then
    renamed into place. Returns False (and writes nothing) if ``path`` already exists."""
    path = os.fspath(path)
    if os.path.exists(path):
        return False
    parent, base = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{base}-{uuid.uuid4().hex}")
    try:
        flat(ds).to_zarr(tmp, mode="w-", consolidated=True, **_zarr_kwargs())
        try:
            os.replace(tmp, path)
        except OSError:
            if os.path.isdir(path):  # another writer committed it first (a retried task)
                return False
            raise
        return True
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(traj, path: str | os.PathLike, *, save_weights: bool = False, **coords) -> None:
    """Write a trajectory (one :func:`gfsim.simulate` call) to ``path`` as a zarr directory;
    read it back with :func:`gfsim.load`. Arguments as :func:`to_xarray`; ``path`` must not
    exist yet. The write is atomic."""
    ds = to_xarray(traj, save_weights=save_weights, **coords)
    if not write_atomic(ds, path):
        raise ValueError(f"path={os.fspath(path)!r} already exists; allowed: a new path.")


# ----------------------------------------------------------------------------------------------
# Reading


MANIFEST_KEYS = ("format", "spec", "spec_hash", "runs_total", "shapes", "batches")


def read_manifest(path) -> dict | None:
    """A sweep store's manifest, None if ``path`` has none; ValueError if it is unreadable
    (truncated, corrupted) or written in another store format (another gfsim version)."""
    from .sweep._spec import FORMAT

    f = os.path.join(os.fspath(path), MANIFEST)
    if not os.path.exists(f):
        return None
    try:
        with open(f) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{f!r} is unreadable ({type(e).__name__}: {e}); allowed: the manifest gfsim sweep "
            "wrote (truncated or edited? the batches under batches/ are intact: rerun the spec "
            "into a new --out, or restore the file).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(
            f"{f!r} has format {found!r}; allowed: {FORMAT!r} (a store written by another "
            "gfsim version: read it with that version, or rerun the spec).")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"{f!r} lacks {', '.join(missing)}; allowed: the manifest gfsim sweep "
                         "wrote (truncated or edited?).")
    return manifest


def batch_path(store, batch_id: str) -> str:
    return os.path.join(os.fspath(store), BATCHES, f"{batch_id}.zarr")


def committed_batches(store, manifest: dict) -> list[str]:
    return [b["id"] for b in manifest["batches"] if os.path.isdir(batch_path(store, b["id"]))]


def _refuse_code(path: str) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            if name in (".zarray", "zarr.json", ".zmetadata"):
                with open(os.path.join(dirpath, name)) as f:
                    if "pickle" in f.read().lower():
                        raise ValueError(
                            f"{path!r} stores objects with a pickle codec; gfsim.load reads "
                            "only plain numeric and string arrays."
                        )


def _open(path: str):
    import xarray as xr

    _refuse_code(path)
    try:
        with xr.open_zarr(path, consolidated=None, decode_times=False) as ds:
            return ds.load()
    except Exception as e:  # noqa: BLE001 - any reader failure is a damaged directory
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(
            f"{path!r} is unreadable ({type(e).__name__}: {first[:200]}); allowed: a complete "
            "zarr directory (in a sweep store, delete this batch and run gfsim sweep --resume "
            "to redo it).") from None


def _pad_to(ds, sizes: dict):
    import xarray as xr

    if all(ds.sizes.get(d, sizes[d]) == sizes[d] for d in sizes):
        return ds
    out = {}
    for name, da in ds.data_vars.items():
        target = tuple(sizes.get(d, n) if d in sizes else n for d, n in zip(da.dims, da.shape))
        if target == da.shape:
            out[name] = da
            continue
        fill = np.nan if np.issubdtype(da.dtype, np.floating) else 0
        pad = [(0, t - n) for n, t in zip(da.shape, target)]
        out[name] = xr.DataArray(np.pad(da.values, pad, constant_values=fill), dims=da.dims)
    return xr.Dataset(out, coords=ds.coords, attrs=ds.attrs)


def concat_runs(parts: list):
    """Concatenate datasets along ``run`` (padding ragged dims with NaN), sorted by run id."""
    import xarray as xr

    sizes = {}
    for p in parts:
        for d in _PAD_DIMS:
            if d in p.sizes:
                sizes[d] = max(sizes.get(d, 0), p.sizes[d])
    parts = [_pad_to(p, sizes) for p in parts]
    ds = xr.concat(parts, dim="run", data_vars="all", coords="different", compat="equals",
                   combine_attrs="drop_conflicts", join="outer")
    return ds.sortby("run_id")


def load(path: str | os.PathLike):
    """Read a store written by ``gfsim sweep``, ``gfsim run`` or :func:`gfsim.save` as an
    ``xarray.Dataset`` (in memory). A sweep store gives its committed batches, runs in canonical
    order (the run coordinate is the run id); ``attrs["runs_total"]`` says how many the spec has.
    Reads data only: no code from the store is run."""
    import xarray as xr

    path = os.fspath(path)
    manifest = read_manifest(path)
    if manifest is None:
        if not os.path.isdir(path):
            raise ValueError(f"path={path!r} is not a gfsim store (no such directory).")
        if not any(os.path.exists(os.path.join(path, f)) for f in (".zgroup", "zarr.json")):
            raise ValueError(f"path={path!r} is not a gfsim store (neither {MANIFEST} nor zarr).")
        return indexed(_open(path))
    parts = [_open(batch_path(path, b)) for b in committed_batches(path, manifest)]
    if parts:
        ds = concat_runs(parts)
    else:
        ds = xr.Dataset(coords={"run_id": ("run", np.zeros(0, np.int64))})
    attrs = dict(ds.attrs)
    attrs.update(
        name=manifest.get("name", ""),
        spec_hash=manifest["spec_hash"],
        spec=json.dumps(manifest["spec"], sort_keys=True),
        runs_total=manifest["runs_total"],
        runs_committed=int(ds.sizes["run"]),
        time_convention=TIME_CONVENTION,
    )
    for key in ("loss", "reduction"):
        if key in ds.coords:
            vals = np.unique(ds[key].values)
            attrs[key] = str(vals[0]) if len(vals) == 1 else "per run (see the coordinate)"
    ds.attrs = attrs
    return indexed(ds)
