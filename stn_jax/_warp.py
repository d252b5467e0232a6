"""The batched warp of the NNX and Linen modules: regression output → θ → grid → sample.

:func:`stn_jax.grid` and :func:`stn_jax.sample` vmapped over the batch and over the
parallel transformers, their outputs combined as the config's ``combine`` says; and the check of
the inputs against the options.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from stn_jax import _theta, grids, sampling
from stn_jax._config import TransformerConfig


def check_inputs(config: TransformerConfig, inputs: jax.Array) -> tuple[int, ...]:
    """Checks ``(B, *spatial, C)`` against the options; returns the output spatial shape."""
    if inputs.ndim not in (3, 4, 5):
        raise ValueError(f"inputs must be batched (B, W, C), (B, H, W, C) or (B, D, H, W, C), got shape {inputs.shape}")
    ndim = inputs.ndim - 2
    if config.out_shape is not None and len(config.out_shape) != ndim:
        raise ValueError(
            f"inputs with {ndim} spatial axes (shape {inputs.shape}) do not match out_shape={config.out_shape}"
        )
    if config.transform in grids._PLANAR_ONLY and ndim != 2:
        raise ValueError(f"transform={config.transform!r} needs 2-D inputs (B, H, W, C), got {inputs.shape}")
    return config.out_shape if config.out_shape is not None else tuple(inputs.shape[1:-1])


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
    theta = _theta.from_regression(config, raw, inputs.ndim - 2)
    return warp(config, inputs, theta, out_shape), theta
