"""Where runs ended: what kind of point (gfsim.analysis.classify_endpoint) and, optionally, the
stationary point a Newton polish finds nearby (gfsim.analysis.polish), per run.

Experiments use it on the runs that did not reach their loss threshold, to say whether a
plateau is a stationary point (a strict saddle, a minimum, a degenerate point) or a run still
moving. The whole batch of one call is classified at once (one compile per shape), converged
runs included; the report counts the ones that did not converge.
"""

from __future__ import annotations

import numpy as np

import gfsim
from gfsim import analysis

# A polish counts as "the run sits at a stationary point" when Newton converged without
# changing the activation pattern and moved the weights by at most this, relative to
# max(1, ||theta||).
NEAR = 1e-6
POLISH_TOL = 1e-10
GRAD_TOL = 1e-6  # classify_endpoint's: above it a run is "not stationary"
CURVATURE_TOL = 1e-6
# what an experiment records in its settings
SETTINGS = dict(grad_tol=GRAD_TOL, curvature_tol=CURVATURE_TOL, polish_tol=POLISH_TOL,
                near=NEAR)

KINDS = analysis.ENDPOINT_KINDS


def classify_runs(final_weights, activation: str, data, *, loss: str, reduction: str,
                  polish: bool = True) -> dict[str, np.ndarray]:
    """Per run of a batch: ``endpoint_kind`` (a string of :data:`KINDS`, "" for a run whose
    weights are not finite), ``endpoint_grad_norm`` and ``endpoint_lambda_min`` at the final
    weights; with ``polish``, also ``polish_distance``, ``polish_converged``,
    ``polish_pattern_changed``, ``at_stationary`` (converged, pattern unchanged, moved at most
    ``NEAR * max(1, ||theta||)``) and ``polished_kind`` (the kind where the polish ended)."""
    W = [np.asarray(w) for w in final_weights]
    runs = W[0].shape[0]
    finite = np.all([np.isfinite(w.reshape(runs, -1)).all(1) for w in W], 0)
    # non-finite runs get zero weights to keep the batch's shape (one compile); blanked below
    net = gfsim.MLP.from_weights([np.where(finite.reshape((runs,) + (1,) * (w.ndim - 1)), w, 0.0)
                                  for w in W], activation)
    got = analysis.classify_endpoint(net, data, loss=loss, reduction=reduction,
                                     grad_tol=GRAD_TOL, curvature_tol=CURVATURE_TOL)
    out = dict(endpoint_kind=np.where(finite, got["kind"].astype(str), ""),
               endpoint_grad_norm=np.where(finite, got["grad_norm"], np.nan),
               endpoint_lambda_min=np.where(finite, got["lambda_min"], np.nan))
    if not polish:
        return out
    polished, info = analysis.polish(net, data, loss=loss, reduction=reduction, tol=POLISH_TOL)
    after = analysis.classify_endpoint(polished, data, loss=loss, reduction=reduction,
                                       grad_tol=10 * POLISH_TOL, curvature_tol=CURVATURE_TOL)
    norm = np.sqrt(sum(np.sum(w.reshape(runs, -1) ** 2, 1) for w in W))
    at = (info["converged"] & ~info["pattern_changed"]
          & (info["distance"] <= NEAR * np.maximum(1.0, norm)))
    out.update(polish_distance=np.where(finite, info["distance"], np.nan),
               polish_converged=finite & info["converged"],
               polish_pattern_changed=finite & info["pattern_changed"],
               at_stationary=finite & at,
               polished_kind=np.where(finite & info["converged"], after["kind"].astype(str), ""))
    return out


def describe(ends: dict, selected) -> str:
    """The counts of endpoint kinds over the ``selected`` runs (a boolean mask), with the
    median lambda_min of the strict saddles, and the polish's verdict if it was run."""
    sel = np.asarray(selected, bool)
    kind = ends["endpoint_kind"][sel]
    if not sel.any():
        return "none"
    parts = []
    for k in KINDS:
        n = int(np.sum(kind == k))
        if not n:
            continue
        txt = f"{n} {k.replace('_', ' ')}"
        if k == "strict_saddle":
            txt += (f" (median lambda_min "
                    f"{np.median(ends['endpoint_lambda_min'][sel][kind == k]):.3g})")
        parts.append(txt)
    if np.sum(kind == ""):
        parts.append(f"{int(np.sum(kind == ''))} non-finite")
    text = ", ".join(parts)
    if "at_stationary" in ends:
        fin = kind != ""
        at = ends["at_stationary"][sel]
        kink = ends["polish_pattern_changed"][sel]
        conv = ends["polish_converged"][sel]
        farther = fin & conv & ~kink & ~at
        failed = fin & ~conv & ~kink
        pk = ends["polished_kind"][sel]
        kinds = lambda m: ", ".join(  # noqa: E731
            f"{int(np.sum(pk[m] == k))} {k.replace('_', ' ')}" for k in KINDS
            if np.sum(pk[m] == k)) or "none"
        pieces = [(at, f"sit at a stationary point of their activation pattern (moved <= "
                       f"{NEAR:g} relative; {kinds(at)})"),
                  (farther, f"reach one farther away (median distance "
                             f"{np.median(ends['polish_distance'][sel][farther]):.2g}; "
                             f"{kinds(farther)})" if farther.any() else ""),
                  (kink, "cross a kink on the way (the activation pattern changes)"),
                  (failed, "do not converge")]
        text += "; Newton polish: " + ", ".join(f"{int(m.sum())} {w}" for m, w in pieces
                                                 if m.any())
    return text
