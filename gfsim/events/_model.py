"""The frozen-pattern model: a net's forward pass with every (unit, point) slope fixed.

Inside an activation pattern the field of a piecewise-linear net is smooth: the solver freezes
``h = D * z`` with ``D`` the slope of each pair's side (the activation's ``right`` slope where
the pair is on, ``left`` where it is off or held on its kink), so no step sees the kink.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ..losses import loss_value


def flatten(net):
    """A net's parameters as one flat vector, with the map back and the static skeleton."""
    params, skeleton = eqx.partition(net, eqx.is_array)
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    return theta, unravel, skeleton


class FrozenPattern:
    """Forward pass and derivatives of one (unbatched) net structure under a frozen pattern.

    Pairs are numbered point-major: pair ``k = point * hsum + unit``, with the hidden units of
    all hidden layers side by side (``hsum`` of them)."""

    def __init__(self, net, loss: str, reduction: str):
        _, self.unravel, self.skeleton = flatten(net)
        self.loss_name = loss
        self.reduction = reduction
        self.hidden: tuple[int, ...] = tuple(w.shape[-2] for w in net.weights[:-1])
        self.hsum = sum(self.hidden)
        self.has_bias = net.biases is not None
        # the most linearly independent rows a first-layer unit's held pairs can have
        self.first_block = net.weights[0].shape[-1] + int(self.has_bias)
        act = net.activation_fn
        if not act.has_kink:
            raise ValueError(
                f"activation={net.activation!r} has no kink; the event-driven solver is for "
                "piecewise-linear activations (use method='plain').")
        self.left = float(act.left)  # slope off the kink's positive side (and while held)
        self.right = float(act.right)

    def layers(self, theta):
        net = eqx.combine(self.unravel(theta), self.skeleton)
        return net.weights, net.biases

    def slopes(self, on: Bool[Array, " P"], held: Bool[Array, " P"]) -> Float[Array, "n hsum"]:
        """The frozen slopes D (n, hsum): ``right`` for pairs on (and not held), else ``left``."""
        return jnp.where(on & ~held, self.right, self.left).reshape(-1, self.hsum)

    def forward(self, theta, X, D, E=None, scales=False, pick=None):
        """Outputs and hidden pre-activations (n, hsum) with the pattern frozen: h = D * z
        (D: (n, hsum) slopes). ``E`` (n, hsum) is added to h (to read off dL/dh). With
        ``scales``, also |w_u| |h_i| (+ |b_u|) per pair: the natural size of each z.
        ``pick(columns, z, scale)``: each hidden layer's slopes from its pre-activations and
        their scales (``columns``: the layer's slice of the hsum units), in place of ``D``."""
        ws, bs = self.layers(theta)
        h, zs, ss, start = X, [], [], 0
        for j, w in enumerate(ws):
            z = h @ w.T
            if bs is not None:
                z = z + bs[j]
            if j == len(ws) - 1:
                out = z
                break
            sc = None
            if scales or pick is not None:
                sc = jnp.linalg.norm(h, axis=-1)[..., None] * jnp.linalg.norm(w, axis=-1)
                sc = sc if bs is None else sc + jnp.abs(bs[j])
                ss.append(sc)
            width = self.hidden[j]
            zs.append(z)
            cols = slice(start, start + width)
            h = (D[..., cols] if pick is None else pick(cols, z, sc)) * z
            if E is not None:
                h = h + E[..., start:start + width]
            start += width
        if scales:
            return out, jnp.concatenate(zs, axis=-1), jnp.concatenate(ss, axis=-1)
        return out, jnp.concatenate(zs, axis=-1)

    def loss(self, theta, data, D, E=None):
        out, _ = self.forward(theta, data.X, D, E)
        return loss_value(self.loss_name, self.reduction, out, data.Y, data.mask)

    def true_loss(self, theta, data):
        """The loss of the net itself (its activation, not a frozen pattern)."""
        net = eqx.combine(self.unravel(theta), self.skeleton)
        return loss_value(self.loss_name, self.reduction, net(data.X), data.Y, data.mask)

    def zflat(self, theta, data, D) -> Float[Array, " P"]:
        return self.forward(theta, data.X, D)[1].reshape(-1)

    def grad_and_c(self, theta, data, D):
        """grad_theta L and c = dL/dh per pair (flat), pattern frozen at D."""
        E = jnp.zeros(D.shape, theta.dtype)
        g, c = jax.grad(self.loss, argnums=(0, 3))(theta, data, D, E)
        return g, c.reshape(-1)

    def grad_and_c_aux(self, theta, data, D):
        """:meth:`grad_and_c`, plus the pre-activations z and their scales |w_u| |h_i| (flat)
        from the same forward pass (an unrolled step uses its last stage's for the events)."""

        def loss(th, E):
            out, z, sc = self.forward(th, data.X, D, E, scales=True)
            return loss_value(self.loss_name, self.reduction, out, data.Y, data.mask), (z, sc)

        E = jnp.zeros(D.shape, theta.dtype)
        (g, c), (z, sc) = jax.grad(loss, argnums=(0, 1), has_aux=True)(theta, E)
        return g, c.reshape(-1), z.reshape(-1), sc.reshape(-1)

    def jac_rows(self, theta, data, D, idx: Int[Array, " K"], valid: Bool[Array, " K"]):
        """Rows d z_k / d theta (K, p) for the pairs ``idx``; zero where not ``valid``."""
        point, unit = idx // self.hsum, idx % self.hsum

        def row(i, u):
            f = lambda th: self.forward(th, data.X[i][None], D[i][None])[1][0, u]  # noqa: E731
            return jax.grad(f)(theta)

        rows = jax.vmap(row)(point, unit)
        return jnp.where(valid[:, None], rows, 0.0)

    def split_pairs(self, flags, n: int):
        """(..., n * hsum) pair flags -> one (..., n, width) array per hidden layer."""
        f = flags.reshape(flags.shape[:-1] + (n, self.hsum))
        out, start = [], 0
        for w in self.hidden:
            out.append(f[..., start:start + w])
            start += w
        return tuple(out)
