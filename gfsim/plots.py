"""Common views of a store (:func:`gfsim.load`), as PNG files: the final stable rank against a
swept field, singular-value spectra over time, loss curves. Matplotlib's Agg canvas is used
directly (no pyplot state), so plotting works without a display and inside other programs."""

from __future__ import annotations

import os

import numpy as np

from .store import flat as _flat

KINDS = ("final-rank", "spectra", "loss")


def stable_ranks(sv: np.ndarray) -> np.ndarray:
    """Stable rank ||W||_F^2 / ||W||_2^2 from singular values on the last axis (NaN padding is
    ignored; a layer that is all NaN gives NaN)."""
    sq = np.asarray(sv, dtype=float) ** 2
    top = np.max(np.where(np.isnan(sq), -np.inf, sq), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.nansum(sq, -1) / top
    return np.where(np.all(np.isnan(sq), -1), np.nan, out)


def select(ds, where: dict):
    """The runs of ``ds`` whose coordinates equal the values of ``where``
    (``{"depth": 4}``); an unknown field or no matching run is a ValueError."""
    ds = _flat(ds)
    mask = np.ones(ds.sizes["run"], bool)
    for k, v in where.items():
        if k not in ds.coords:
            allowed = sorted(c for c in ds.coords if ds[c].dims == ("run",))
            raise ValueError(f"--where {k}=... names no run coordinate; allowed: "
                             f"{', '.join(allowed)}.")
        vals = ds[k].values
        mask &= np.isclose(vals, v) if np.issubdtype(vals.dtype, np.number) and not isinstance(
            v, str) else vals.astype(str) == str(v)
    if not mask.any():
        raise ValueError(f"no run matches {where}.")
    return ds.isel(run=np.flatnonzero(mask))


def _check_field(ds, name, what):
    if name not in ds.coords or ds[name].dims != ("run",):
        allowed = sorted(c for c in ds.coords if ds[c].dims == ("run",))
        raise ValueError(f"{what}={name!r} is not a run coordinate; allowed: {', '.join(allowed)}.")


def _figure(ncols=1, width=5.0, height=3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def final_rank(ds, x: str, *, hue: str | None = None, layer: int | None = None):
    """Figure: each run's final stable rank (of ``layer``, default the mean over its layers)
    against the run coordinate ``x``, one colour per value of ``hue``; medians joined."""
    ds = _flat(ds)
    _check_field(ds, x, "x")
    if hue is not None:
        _check_field(ds, hue, "hue")
    sr = stable_ranks(ds["final_singular_values"].values)  # (run, layer)
    if layer is None:
        y = np.nanmean(sr, -1)
        ylabel = "final stable rank (mean over layers)"
    else:
        if not 0 <= layer < sr.shape[1]:
            raise ValueError(f"layer={layer} is not allowed; allowed: 0..{sr.shape[1] - 1}.")
        y = sr[:, layer]
        ylabel = f"final stable rank of layer {layer}"
    xs = ds[x].values
    fig, (ax,) = _figure()
    groups = [None] if hue is None else list(np.unique(ds[hue].values))
    numeric = np.issubdtype(xs.dtype, np.number)
    for g in groups:
        m = np.ones(len(y), bool) if g is None else ds[hue].values == g
        label = None if g is None else f"{hue}={g}"
        pts = ax.scatter(xs[m] if numeric else xs[m].astype(str), y[m], s=14, alpha=0.6,
                         label=label)
        ux = np.unique(xs[m])
        med = [np.nanmedian(y[m][xs[m] == u]) for u in ux]
        ax.plot(ux if numeric else ux.astype(str), med, color=pts.get_facecolor()[0], lw=1.5)
    if numeric and np.all(xs > 0) and xs.max() / xs.min() >= 100:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    if hue is not None:
        ax.legend(fontsize=8)
    return fig


def spectra(ds, run_id: int | None = None):
    """Figure: the singular values of every layer of one run (default the first) over time."""
    ds = _flat(ds)
    ids = ds["run_id"].values
    run_id = int(ids[0]) if run_id is None else run_id
    if run_id not in ids:
        raise ValueError(f"run={run_id} is not in the store; allowed: run ids {ids.min()}.."
                         f"{ids.max()} (of the committed runs).")
    r = ds.isel(run=int(np.flatnonzero(ids == run_id)[0]))
    depth = int(np.sum(r["layer_out"].values > 0))
    fig, axes = _figure(ncols=depth, width=3.6)
    t = r["t"].values
    for j, ax in enumerate(axes):
        s = r["singular_values"].values[:, j, :]
        ok = t > 0
        for k in range(s.shape[1]):
            if np.any(np.isfinite(s[ok, k])):
                ax.plot(t[ok], s[ok, k], lw=1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_title(f"layer {j}", fontsize=9)
    axes[0].set_ylabel(f"singular values (run {run_id})")
    return fig


def loss_curves(ds, *, hue: str | None = None):
    """Figure: every run's loss over time (log-log), one colour per value of ``hue``."""
    ds = _flat(ds)
    if hue is not None:
        _check_field(ds, hue, "hue")
    fig, (ax,) = _figure()
    t, loss = ds["t"].values, ds["loss_curve"].values
    values = [None] if hue is None else list(np.unique(ds[hue].values))
    colors = {v: f"C{i % 10}" for i, v in enumerate(values)}
    seen = set()
    for i in range(loss.shape[0]):
        v = None if hue is None else ds[hue].values[i]
        ok = (t[i] > 0) & np.isfinite(loss[i]) & (loss[i] > 0)
        label = f"{hue}={v}" if hue is not None and v not in seen else None
        seen.add(v)
        ax.plot(t[i][ok], loss[i][ok], color=colors[v], lw=0.8, alpha=0.7, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"t ({ds.attrs.get('reduction', '?')} reduction)")
    ax.set_ylabel("loss")
    if hue is not None:
        ax.legend(fontsize=8)
    return fig


def plot(ds, kind: str, out: str | os.PathLike, *, x: str | None = None, hue: str | None = None,
         layer: int | None = None, run_id: int | None = None, where: dict | None = None) -> str:
    """Draw one of :data:`KINDS` from a store's Dataset and write it to ``out`` (PNG).

    **Arguments:**

    - ``ds``: what :func:`gfsim.load` returns.
    - ``kind``: ``"final-rank"`` (needs ``x``), ``"spectra"`` (of ``run_id``) or ``"loss"``.
    - ``out``: the PNG path.
    - ``x``, ``hue``: run coordinates (config fields) for the x axis and the colours.
    - ``layer``: for ``final-rank``, one layer instead of the mean over layers.
    - ``where``: keep only the runs with these coordinate values (``{"depth": 4}``).

    **Returns:** the path written.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not allowed; allowed: {', '.join(KINDS)}.")
    if ds.sizes.get("run", 0) == 0:
        raise ValueError("the store holds no committed runs yet.")
    if where:
        ds = select(ds, where)
    if kind == "final-rank":
        if x is None:
            raise ValueError("final-rank needs --x FIELD (a swept config field).")
        fig = final_rank(ds, x, hue=hue, layer=layer)
    elif kind == "spectra":
        fig = spectra(ds, run_id)
    else:
        fig = loss_curves(ds, hue=hue)
    out = os.fspath(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
