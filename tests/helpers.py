"""Helpers shared by several test modules (imported as ``import helpers``; tests/ is on sys.path).

Nothing here imports ``train`` or TensorFlow at import time: the oldest-versions run
(tests/oldest_versions.sh) imports this module without the ``train`` extra.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
import zlib

import jax
import numpy as np
import pytest

import stn_jax

# The smallest useful training run: an evaluation and a checkpoint every 2 steps, a log line every step.
TINY_RUN = ["steps=4", "batch_size=8", "eval_batch_size=8", "eval_every=2", "checkpoint_every=2", "log_every=1",
            "warmup_steps=1", "num_show=2"]  # fmt: skip


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(module: str):
    """``module``, imported; in CI its absence is a failure, elsewhere the calling test module is skipped."""
    return importlib.import_module(module) if in_ci() else pytest.importorskip(module)


@functools.partial(jax.jit, static_argnums=1, static_argnames=("method", "padding", "align_corners"))
def identity_resample(x, out_shape, **sampler):
    """The reference of an untrained transformer: every image of the batch ``x`` resampled on the
    identity grid of ``out_shape`` (jitted: one compile, not one per op)."""
    grid = stn_jax.identity_grid(out_shape, align_corners=sampler.get("align_corners", False))
    return jax.vmap(lambda image: stn_jax.sample(image, grid, **sampler))(x)


def images(shape, seed=0):
    """Standard-normal test images of ``shape``."""
    return jax.random.normal(jax.random.key(seed), shape)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a coordinator or a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_of(*parts) -> int:
    """A seed fixed by a test's parameters, the same in every process (unlike ``hash()``); print it on failure."""
    return zlib.crc32(repr(parts).encode())


# Every transform with its sampler options varied, for the modules-against-the-functions tests:
# (transform, input_shape, out_shape, options).
MODULE_CASES = [
    ("affine", (6, 7, 2), (5, 8), {}),
    ("attention", (6, 7, 2), (6, 7), {"method": "nearest", "padding": "border"}),
    ("translation", (6, 7, 2), (4, 4), {"padding": "reflection", "align_corners": True}),
    ("similarity", (6, 7, 2), (6, 7), {"method": "bicubic"}),
    ("projective", (6, 7, 2), (5, 6), {"align_corners": True}),
    ("tps", (6, 7, 2), (6, 7), {"num_control_points": 9, "padding": "border"}),
    ("affine", (9, 2), (7,), {}),
    ("affine", (4, 5, 3, 2), (3, 4, 4), {"padding": "border"}),
]


def randomize_head(params: dict, seed: int) -> dict:
    """``params`` (a module's pure dict) with a random regression layer: θ far from the identity and
    different for every example."""
    rng = np.random.default_rng(seed)
    head = params["localisation_head"]
    kernel = rng.normal(0.0, 0.05, np.shape(head["kernel"])).astype(np.float32)
    bias = (np.asarray(head["bias"]) + rng.normal(0.0, 0.2, np.shape(head["bias"]))).astype(np.float32)
    return {**params, "localisation_head": {"kernel": kernel, "bias": bias}}


def transformer_reference(
    params: dict,
    x,
    *,
    transform: str,
    out_shape,
    num_control_points: int = 16,
    method="bilinear",
    padding="zeros",
    align_corners=False,
):
    """What a one-transformer ``SpatialTransformer`` with the default MLP localisation computes, from its
    parameter dict (NNX and Linen name them alike), written out: the MLP in NumPy, θ = the identity's
    shape filled with the regression output (a homography's first 8 entries; h_22 stays 1), then
    ``stn_jax.grid`` and ``stn_jax.sample`` example by example. Returns (outputs, θ)."""
    x = np.asarray(x, np.float32)
    h = x.reshape(len(x), -1)
    for i in range(len(params["localisation"])):
        dense = params["localisation"][f"dense_{i}"]
        h = np.maximum(h @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]), 0.0)
    raw = h @ np.asarray(params["localisation_head"]["kernel"]) + np.asarray(params["localisation_head"]["bias"])
    identity = np.asarray(
        stn_jax.identity_params(transform, ndim=len(out_shape), num_control_points=num_control_points)
    )
    theta = np.tile(identity.ravel(), (len(x), 1))
    theta[:, : raw.shape[1]] = raw
    theta = theta.reshape(len(x), *identity.shape)
    return np.asarray(_warp_each(x, theta, transform, tuple(out_shape), method, padding, align_corners)), theta


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _warp_each(x, theta, transform, out_shape, method, padding, align_corners):
    def warp(image, t):
        grid = stn_jax.grid(t, out_shape, transform=transform, align_corners=align_corners)
        return stn_jax.sample(image, grid, method=method, padding=padding, align_corners=align_corners)

    return jax.vmap(warp)(x, theta)
