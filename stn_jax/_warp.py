"""The batched warp of the NNX and Linen modules: regression output → θ → grid → sample.

:func:`stn_jax.grid` and :func:`stn_jax.sample` vmapped over the batch and over the
parallel transformers, their outputs combined as the config's ``combine`` says.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from stn_jax import grids, sampling
from stn_jax._config import TransformerConfig


def warp(config: TransformerConfig, inputs: jax.Array, theta: jax.Array, out_shape: tuple[int, ...]):
    """Warps ``inputs`` ``(B, *spatial, C)`` by θ ``(B, N, ...)``; combined per ``combine``."""

    def one(image, th):
        g = grids.grid(th, out_shape, transform=config.transform, align_corners=config.align_corners)
        return sampling.sample(
            image,
            g,
            method=config.method,
            padding=config.padding,
            align_corners=config.align_corners,
            antialias=config.antialias,
        )

    out = jax.vmap(jax.vmap(one, in_axes=(None, 0)))(inputs, theta)  # (B, N, *out, C)
    return combine(config, out)


def combine(config: TransformerConfig, out: jax.Array):
    """Outputs ``(B, N, *out, C)`` of the parallel transformers as ``config.combine`` says."""
    if config.num_transformers == 1:
        return out[:, 0]
    if config.combine == "stack":
        return out
    if config.combine == "list":
        return [out[:, i] for i in range(config.num_transformers)]
    moved = jnp.moveaxis(out, 1, -2)  # (B, *out, N, C)
    return moved.reshape(*moved.shape[:-2], -1)


@functools.partial(jax.jit, static_argnums=(0, 3))
def apply(config: TransformerConfig, inputs: jax.Array, raw: jax.Array, out_shape: tuple[int, ...]):
    """Regression output → (warped output, θ ``(B, N, ...)``), as one jitted computation.

    Jitting here (config and ``out_shape`` static) makes an eager call one compiled
    computation rather than dozens of op-by-op dispatches; under an outer ``jit``
    it is simply inlined.
    """
    theta = config.theta(raw, inputs.ndim - 2)
    return warp(config, inputs, theta, out_shape), theta
