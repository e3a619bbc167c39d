"""The discrete gradient-descent baseline (what researchers use today in place of GF)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._result import RawResult, final_status
from .flow import _as_dtype, _check_start, check_problem, check_scalar, objective
from .losses import LOSSES, check_reduction
from .trajectory import Status, Trajectory


def log_steps(steps: int, num: int = 64) -> np.ndarray:
    """Step 0 followed by up to ``num - 1`` distinct log-spaced step counts ending at ``steps``."""
    if steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer.")
    count = max(num - 1, 1)
    s = np.unique(np.round(np.geomspace(1, steps, count)).astype(np.int64))
    s = s if count > 1 else np.array([steps])
    return np.concatenate([[0], s])


@dataclasses.dataclass(frozen=True)
class _GDStatic:
    loss: str
    reduction: str
    optimizer: object
    save_steps: tuple[int, ...]
    net_batched: bool
    data_batched: bool


def _gd_one(net, data, lr, cfg: _GDStatic):
    params, skeleton = eqx.partition(net, eqx.is_array)
    opt = cfg.optimizer(lr) if cfg.optimizer is not None else optax.sgd(lr)

    def loss_of(p):
        return objective(eqx.combine(p, skeleton), data, cfg.loss, cfg.reduction)

    grad_fn = jax.grad(loss_of)

    def one_step(_, carry):
        p, s = carry
        updates, s = opt.update(grad_fn(p), s, p)
        return optax.apply_updates(p, updates), s

    gaps = jnp.asarray(np.diff(np.asarray(cfg.save_steps)), jnp.int32)

    def interval(carry, gap):
        carry = jax.lax.fori_loop(0, gap, one_step, carry)
        return carry, carry[0]

    carry0 = (params, opt.init(params))
    (final, _), later = jax.lax.scan(interval, carry0, gaps)
    saved = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), params, later)
    losses = jax.vmap(loss_of)(saved)
    finite = jnp.isfinite(losses[-1])
    saved_net = eqx.combine(saved, skeleton)
    steps = jnp.asarray(cfg.save_steps[-1], jnp.int32)
    return RawResult(
        loss=losses,
        weights=saved_net.weights,
        biases=saved_net.biases,
        final_weights=eqx.combine(final, skeleton).weights,
        final_loss=losses[-1],
        t_final=lr * steps,
        status=final_status(jnp.asarray(Status.REACHED_T1, jnp.int32), finite),
        num_steps=steps,
        num_accepted=steps,
        num_rejected=jnp.zeros((), jnp.int32),
    )


@eqx.filter_jit
def _run_gd(net, data, lr, cfg: _GDStatic):
    fn = lambda n, d: _gd_one(n, d, lr, cfg)  # noqa: E731
    if cfg.net_batched or cfg.data_batched:
        fn = jax.vmap(fn, in_axes=(0 if cfg.net_batched else None, 0 if cfg.data_batched else None))
    return fn(net, data)


def gd(
    net,
    data,
    lr,
    steps: int,
    *,
    save_steps=None,
    num_saves: int = 64,
    loss: str = "square",
    reduction: str = "mean",
    optimizer=None,
) -> Trajectory:
    """Full-batch gradient descent theta <- theta - lr * grad L(theta) for ``steps`` steps, with
    optax. Returns a :class:`gfsim.Trajectory` whose times are ``lr * step``, so it compares with
    :func:`gfsim.simulate` at matched time.

    **Arguments:**

    - ``net``, ``data``, ``loss``, ``reduction``: as for :func:`gfsim.simulate`.
    - ``lr``: the step size (traced: a new value does not recompile).
    - ``steps``: number of steps (static).
    - ``save_steps``: increasing step counts at which to save, starting at 0; default 0 then
      ``num_saves - 1`` log-spaced counts up to ``steps`` (:func:`gfsim.descent.log_steps`).
    - ``optimizer``: a function ``lr -> optax.GradientTransformation``; default ``optax.sgd``.
    """
    check_problem(net, data)
    _check_start(net)
    data = _as_dtype(data, net.weights[0].dtype)
    LOSSES.check(loss, "loss")
    check_reduction(reduction)
    check_scalar(lr, "lr", positive=True)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer.")
    if optimizer is not None and not callable(optimizer):
        raise ValueError(
            f"optimizer={optimizer!r} is not allowed; allowed: None or a function "
            "lr -> optax.GradientTransformation.")
    if save_steps is None:
        if isinstance(num_saves, bool) or not isinstance(num_saves, (int, np.integer)) \
                or num_saves < 2:
            raise ValueError(f"num_saves={num_saves!r} is not allowed; allowed: an integer >= 2.")
        save_steps = log_steps(int(steps), num_saves)
    raw = save_steps
    try:
        save_steps = np.asarray([] if isinstance(raw, (str, bytes)) else raw)
    except (ValueError, TypeError):  # ragged lists
        save_steps = np.asarray([])
    if (save_steps.dtype.kind not in "iu" or save_steps.ndim != 1 or save_steps.size < 1
            or save_steps[0] != 0 or np.any(np.diff(save_steps) <= 0)):
        raise ValueError(
            f"save_steps={raw!r} is not allowed; allowed: increasing integer step counts "
            "starting at 0.")
    save_steps = save_steps.astype(np.int64)
    if save_steps[-1] != steps:
        raise ValueError(f"save_steps must end at steps={steps}.")
    dtype = net.weights[0].dtype
    lr = jnp.asarray(lr, dtype)
    cfg = _GDStatic(
        loss=loss,
        reduction=reduction,
        optimizer=optimizer,
        save_steps=tuple(int(s) for s in save_steps),
        net_batched=net.is_batched,
        data_batched=data.is_batched,
    )
    raw = _run_gd(net, data, lr, cfg)
    return raw.trajectory(
        lr * jnp.asarray(save_steps, dtype),
        loss_name=loss,
        reduction=reduction,
        activation=net.activation,
        method="gd",
    )
