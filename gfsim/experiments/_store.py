"""An experiment's data as one store: the runs of every batched call in one labelled Dataset.

An experiment makes a few batched :func:`gfsim.simulate` (or :func:`gfsim.gd`) calls, each over
one setting (a depth, a width, an init, a loss). :class:`Runs` turns each call into the run
rows of :func:`gfsim.store.to_xarray` (dims ``run``, ``time``, ``layer``, ``sv``; the setting's
config fields as run coordinates) with the experiment's own per-run measurements beside them,
stacks the calls along ``run`` (ragged dims padded: NaN, False, -1 or ""), and adds the arrays
that belong to no run (the dataset, summary tables) under their own named dims. The result is
the same format ``gfsim sweep`` writes: ``gfsim.load`` reads it, ``gfsim plot`` draws it, and
``ds.sel(width=16, init="disk")`` picks one call's runs.
"""

from __future__ import annotations

import numpy as np

from .. import store as gstore

_FILL = {"f": np.nan, "c": np.nan, "b": False, "i": -1, "u": 0, "U": "", "S": b""}


def _fill(dtype):
    return _FILL.get(np.dtype(dtype).kind, 0)


def _pad(da, sizes: dict):
    import xarray as xr

    target = [sizes.get(d, n) for d, n in zip(da.dims, da.shape)]
    if list(da.shape) == target:
        return da
    values = da.values
    if values.dtype.kind == "i" or values.dtype.kind == "u":
        values = values.astype(np.int64)
    pad = [(0, t - n) for n, t in zip(values.shape, target)]
    return xr.DataArray(np.pad(values, pad, constant_values=_fill(values.dtype)), dims=da.dims)


def _per_run(name: str, value, runs: int):
    if isinstance(value, tuple):
        dims, value = value
    else:
        dims = None
    value = np.asarray(value)
    if dims is None:
        if value.ndim != 1:
            raise ValueError(f"{name}: an array of shape {value.shape} needs its dims, as "
                             "(dims, array) with 'run' first.")
        dims = ("run",)
    dims = tuple(dims)
    if dims[0] != "run" or value.shape[:1] != (runs,) or value.ndim != len(dims):
        raise ValueError(f"{name}: shape {value.shape} with dims {dims}; allowed: dims starting "
                         f"with 'run', one per axis, and {runs} runs.")
    return dims, value


def _padded_weights(weights) -> np.ndarray:
    """(run, out, in) per layer -> (run, layer, row, col), NaN-padded."""
    weights = [np.asarray(w) for w in weights]
    rows = max(w.shape[-2] for w in weights)
    cols = max(w.shape[-1] for w in weights)
    return np.stack([np.pad(w, [(0, 0), (0, rows - w.shape[-2]), (0, cols - w.shape[-1])],
                            constant_values=np.nan) for w in weights], 1)


class Runs:
    """The store of one experiment, built call by call.

    ``add`` one batched trajectory per setting, ``array`` for what belongs to no run, then
    ``dataset()``.
    """

    def __init__(self):
        self._parts: list = []
        self._groups: dict[str, dict] = {}
        self._arrays: dict = {}
        self._coords: dict = {}

    @property
    def num_runs(self) -> int:
        return sum(p.sizes["run"] for p in self._parts)

    def add(self, traj, *, coords: dict, extra: dict | None = None, group: str | None = None,
            summary: dict | None = None, save_weights: bool = False,
            final_weights: bool = False, initial_weights=None) -> slice:
        """Add the runs of one batched call.

        **Arguments:**

        - ``traj``: its :class:`gfsim.Trajectory` (with a run axis).
        - ``coords``: config fields of these runs, each a scalar or one value per run (run
          coordinates; None is stored as NaN).
        - ``extra``: the experiment's per-run measurements: a 1-D array (one value per run)
          or ``(dims, array)`` with ``"run"`` first.
        - ``group``, ``summary``: a label for the call and its scalar statistics (variables
          along the ``group`` dim).
        - ``save_weights``: every layer's weights at every save time (``weights``).
        - ``final_weights``: the weights where each run ended (``final_weights (run, layer,
          row, col)``); ``initial_weights``: the starting weights, given (``initial_weights``).

        **Returns:** the run ids of these runs, as a slice.
        """
        ds = gstore.flat(gstore.to_xarray(traj, save_weights=save_weights, **coords))
        runs = ds.sizes["run"]
        start = self.num_runs
        ds = ds.assign_coords(run_id=("run", np.arange(start, start + runs)))
        if final_weights:
            ds["final_weights"] = (("run", "layer", "row", "col"),
                                   _padded_weights(traj.final_weights))
        if initial_weights is not None:
            ds["initial_weights"] = (("run", "layer", "row", "col"),
                                     _padded_weights(initial_weights))
        for name, value in (extra or {}).items():
            if name in ds:
                raise ValueError(f"extra {name!r} clashes with a stored variable; allowed: "
                                 "another name.")
            ds[name] = _per_run(name, value, runs)
        self._parts.append(ds)
        if group is not None:
            self._groups.setdefault(group, {}).update(summary or {})
        return slice(start, start + runs)

    def summary(self, group: str, **values) -> None:
        """Add scalar statistics of the call labelled ``group`` (computed after ``add``)."""
        if group not in self._groups:
            raise ValueError(f"group={group!r} was not added; allowed: "
                             f"{', '.join(self._groups)}.")
        self._groups[group].update(values)

    def array(self, name: str, value, dims=(), coords: dict | None = None) -> None:
        """Add an array that belongs to no run (the data points, a summary table), with its
        named dims and optional coordinates for them (``{"depth": [2, 3]}``)."""
        value = np.asarray(value)
        dims = tuple(dims)
        if value.ndim != len(dims) or "run" in dims:
            raise ValueError(f"{name}: shape {value.shape} with dims {dims}; allowed: one named "
                             "dim per axis, not 'run'.")
        self._arrays[name] = (dims, value)
        for d, c in (coords or {}).items():
            self._coords[d] = (d, np.asarray(c))

    def dataset(self, attrs: dict | None = None):
        """All runs (run ids in order of ``add``) and arrays as one ``xarray.Dataset``, its
        ``run`` dim indexed by the run coordinates (``ds.sel(width=2)``)."""
        import xarray as xr

        if not self._parts:
            raise ValueError("no runs were added.")
        names: dict = {}
        for p in self._parts:
            for n, v in p.data_vars.items():
                names.setdefault(n, v)
        sizes: dict = {}
        for p in self._parts:
            for d, n in p.sizes.items():
                if d != "run":
                    sizes[d] = max(sizes.get(d, 0), n)
        run_coords: dict = {}
        for p in self._parts:
            for n, c in p.coords.items():
                run_coords.setdefault(n, c)
        parts = []
        for p in self._parts:
            runs = p.sizes["run"]
            coords = dict(p.coords)
            for n, template in run_coords.items():
                if n not in coords:  # a field only the other calls set: NaN or "" here
                    kind = template.dtype.kind
                    coords[n] = ("run", np.full(runs, "" if kind in "US" else np.nan,
                                                dtype=template.dtype if kind in "US" else float))
            out = {}
            for n, template in names.items():
                if n in p:
                    out[n] = _pad(p[n], sizes)
                else:  # a measurement the other calls have and this one has not
                    shape = [runs if d == "run" else sizes[d] for d in template.dims]
                    kind = template.dtype.kind
                    dtype = np.int64 if kind in "iu" else template.dtype
                    out[n] = xr.DataArray(np.full(shape, _fill(dtype), dtype=dtype),
                                          dims=template.dims)
            parts.append(xr.Dataset(out, coords=coords, attrs=p.attrs))
        ds = gstore.concat_runs(parts)
        if self._groups:
            labels = list(self._groups)
            keys = list(dict.fromkeys(k for s in self._groups.values() for k in s))
            for k in keys:
                vals = [s.get(k, np.nan) for s in self._groups.values()]
                ds[k] = ("group", np.asarray(vals, dtype=float if any(
                    isinstance(v, float) for v in vals) else None))
            ds = ds.assign_coords(group=("group", np.asarray(labels)))
        for n, (dims, v) in self._arrays.items():
            ds[n] = (dims, v)
        if self._coords:
            ds = ds.assign_coords(self._coords)
        ds.attrs.update(attrs or {})
        ds.attrs["time_convention"] = gstore.TIME_CONVENTION
        return gstore.indexed(ds)
