"""Linear sampling as Pallas kernels: Triton on NVIDIA and AMD GPUs, interpret mode elsewhere.

``implementation="pallas"`` of :func:`stn_jax.sample`: linear, bilinear and trilinear
sampling (every padding, both ``align_corners``) in two kernels over blocks of output
points, with a written-out reverse-mode derivative (``jax.custom_vjp``):

* forward: each point loads the ``2**n`` corners of its cell (all channels at once) at
  computed indices and sums them with the linear weights;
* backward: the grid gradient is accumulated per output point (no scatter); the image
  gradient is added at the corners with ``atomic_add``. When the image is not being
  differentiated (the custom VJP's ``symbolic_zeros`` tells the forward rule which inputs
  are perturbed: e.g. a transformer in front of the first layer, whose input is data) the
  atomics are skipped altogether; likewise the grid gradient when only the image is
  differentiated.

The choice between the Triton kernels and interpret mode is made per platform when the
function is lowered (``jax.lax.platform_dependent``). Interpret mode runs the kernels as
plain JAX, slowly and exactly: its ``atomic_add`` on a vector with repeated indices is a
read-modify-write that drops all but one of the repeats, so there the backward kernel adds
the image gradient point by point (a loop over the block, each add over distinct
channels), and it reads with clamped indices and ``where`` instead of masks. On GPUs the
Triton compiler is named explicitly (``compiler_params``): recent JAX lowers Pallas GPU
kernels with Mosaic GPU by default, which has neither gathers nor these atomics.

Coordinates are unnormalised and padded by the reference's own functions outside the
kernels, so JAX differentiates those steps; the kernels see pixel coordinates only,
moved into ``[-2, size + 1]`` (non-finite points to -2, where no corner is inside the
image: they read 0 and pass back a zero gradient).

Limits: forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) is not
available, as for any ``custom_vjp``; the image gradient of float32 inputs is summed by
atomics in whatever order the GPU runs them, so it is not bit-for-bit reproducible across
runs there; indices are 32-bit (images up to 2**31 values); nearest and bicubic sampling
have no kernel here and are the reference's. Nothing here has been timed on a GPU yet, so
no platform uses it by default.

``jax.experimental.pallas`` is an experimental, public API (not one of the internal or
extension modules that only ``_sampling_cpu`` may import); since it may change between
releases, ``stn_jax.sampling`` imports this module inside a ``try`` all the same.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, cast

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as _triton

from stn_jax import _sampling_reference as reference

# The Triton API moved between releases: atomics from pl to pl.triton, TritonCompilerParams to CompilerParams.
atomic_add: Any = getattr(_triton, "atomic_add", None) or getattr(pl, "atomic_add", None)
_TritonParams: Any = getattr(_triton, "CompilerParams", None) or getattr(_triton, "TritonCompilerParams", None)
if atomic_add is None or _TritonParams is None:
    raise ImportError(f"jax {jax.__version__}: no Pallas Triton atomic_add or compiler parameters found")

#: Platforms whose kernels are compiled by Triton; every other platform runs interpret mode.
TRITON_PLATFORMS = ("cuda", "rocm")
# Values loaded per corner and block (points x padded channels): a Triton tensor size.
_BLOCK_VALUES = 8192
_MAX_BLOCK_POINTS = 256


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Static shape information of one call: image sizes in grid order (x, y, z), padded
    channels (a power of two) and points per block (a power of two)."""

    sizes: tuple[int, ...]
    channels: int
    block: int

    @property
    def strides(self) -> tuple[int, ...]:
        """Pixel strides of the axes in grid order (x has stride 1)."""
        return tuple(math.prod(self.sizes[:d]) for d in range(len(self.sizes)))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Needs:
    """Which gradients the backward kernel computes (a static part of the residuals)."""

    image: bool
    grid: bool


def sample(image: jax.Array, grid: jax.Array, *, method: str, padding: str, align_corners: bool, dtype) -> jax.Array:
    """As ``_sampling_reference.sample``; linear sampling through the Pallas kernels below."""
    if method != "bilinear":
        return reference.sample(image, grid, method=method, padding=padding, align_corners=align_corners, dtype=dtype)
    n = grid.shape[-1]
    sizes = tuple(image.shape[:n][::-1])
    coords, finite = reference.pixel_coordinates(grid, sizes, padding=padding, align_corners=align_corners)
    # Into [-2, size + 1]: the same reads (no corner inside beyond it), safe to convert to int32.
    coords = [jnp.where(finite, jnp.clip(c, -2, s + 1), -2).reshape(-1) for c, s in zip(coords, sizes)]
    points = coords[0].shape[0]
    channels = image.shape[-1]
    padded_channels = pl.next_power_of_2(channels)
    block = max(1, min(_MAX_BLOCK_POINTS, _BLOCK_VALUES // padded_channels, pl.next_power_of_2(points)))
    padded_points = pl.cdiv(points, block) * block
    coords = tuple(jnp.pad(c, (0, padded_points - points), constant_values=-2) for c in coords)
    flat = image.astype(dtype).reshape(-1, channels)
    flat = jnp.pad(flat, ((0, 0), (0, padded_channels - channels))).reshape(-1)
    layout = _Layout(sizes=sizes, channels=padded_channels, block=block)
    out = cast(jax.Array, _interpolate(layout, flat, coords))  # custom_vjp's result is typed loosely
    return out[:points, :channels].reshape(*grid.shape[:-1], channels)


# -- the differentiable core: (flat image, pixel coordinates) -> (points, channels) -------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _interpolate(layout: _Layout, image: jax.Array, coords: tuple[jax.Array, ...]) -> jax.Array:
    return _forward(layout, image, coords)


def _interpolate_fwd(layout, image, coords):
    values = tuple(c.value for c in coords)
    out = _forward(layout, image.value, values)
    needs = _Needs(image=bool(image.perturbed), grid=any(bool(c.perturbed) for c in coords))
    return out, (image.value, values, needs)


def _interpolate_bwd(layout, residuals, cotangent):
    image, coords, needs = residuals
    if isinstance(cotangent, SymbolicZero) or not (needs.image or needs.grid):
        return None, (None,) * len(coords)
    grad_image, grad_coords = _backward(layout, image, coords, cotangent, needs)
    return grad_image, grad_coords


_interpolate.defvjp(_interpolate_fwd, _interpolate_bwd, symbolic_zeros=True)


def _per_platform(build, *args):
    """``build(triton)(*args)``: the Triton kernels on GPUs, interpret mode elsewhere (chosen when lowering)."""
    triton = build(True)
    return lax.platform_dependent(*args, **{p: triton for p in TRITON_PLATFORMS}, default=build(False))


def _mode(triton: bool) -> dict:
    if triton:
        return dict(compiler_params=_TritonParams(num_warps=4))
    return dict(interpret=True)


def _point_spec(layout: _Layout):
    return pl.BlockSpec((layout.block,), lambda i: (i,))


def _whole_spec(array_shape):
    return pl.BlockSpec(tuple(array_shape), lambda i: (0,) * len(array_shape))


def _forward(layout: _Layout, image, coords):
    n = len(coords)
    points = coords[0].shape[0]

    def build(triton: bool):
        return pl.pallas_call(
            functools.partial(_forward_kernel, layout=layout),
            out_shape=jax.ShapeDtypeStruct((points, layout.channels), image.dtype),
            grid=(points // layout.block,),
            in_specs=[_point_spec(layout)] * n + [_whole_spec(image.shape)],
            out_specs=pl.BlockSpec((layout.block, layout.channels), lambda i: (i, 0)),
            name="stn_jax_sample_forward",
            **_mode(triton),
        )

    return _per_platform(build, *coords, image)


def _backward(layout: _Layout, image, coords, cotangent, needs: _Needs):
    n = len(coords)
    points = coords[0].shape[0]
    dtype = image.dtype
    out_shape, out_specs = [], []
    if needs.grid:
        out_shape += [jax.ShapeDtypeStruct((points,), dtype)] * n
        out_specs += [_point_spec(layout)] * n
    in_specs = [_point_spec(layout)] * n + [
        _whole_spec(image.shape),
        pl.BlockSpec((layout.block, layout.channels), lambda i: (i, 0)),
    ]
    args = [*coords, image, cotangent]
    aliases = {}
    if needs.image:
        # The image gradient starts as zeros (an input aliased to the output) and the
        # blocks add into it.
        aliases = {len(args): len(out_shape)}
        args.append(jnp.zeros_like(image))
        in_specs.append(_whole_spec(image.shape))
        out_shape.append(jax.ShapeDtypeStruct(image.shape, dtype))
        out_specs.append(_whole_spec(image.shape))

    def build(triton: bool):
        return pl.pallas_call(
            functools.partial(_backward_kernel, layout=layout, needs=needs, triton=triton),
            out_shape=out_shape,
            grid=(points // layout.block,),
            in_specs=in_specs,
            out_specs=out_specs,
            input_output_aliases=aliases,
            name="stn_jax_sample_backward",
            **_mode(triton),
        )

    outs = _per_platform(build, *args)
    grad_coords = tuple(outs[:n]) if needs.grid else (None,) * n
    grad_image = outs[-1] if needs.image else None
    return grad_image, grad_coords


# -- kernels ----------------------------------------------------------------------------------


def _corners(layout: _Layout, coord_refs):
    """For each of the 2**n corners of the points' cells: (corner, first flat index of the
    pixel (clamped into the image), inside-the-image mask, per-axis weights), all (block,)."""
    coords = [ref[...] for ref in coord_refs]
    lows = [jnp.floor(c) for c in coords]
    fracs = [c - low for c, low in zip(coords, lows)]
    lows = [low.astype(jnp.int32) for low in lows]
    for corner in itertools.product((0, 1), repeat=len(coords)):
        index = [low + k for low, k in zip(lows, corner)]
        inside = functools.reduce(jnp.logical_and, [(i >= 0) & (i < s) for i, s in zip(index, layout.sizes)])
        pixel = sum(jnp.clip(i, 0, s - 1) * stride for i, s, stride in zip(index, layout.sizes, layout.strides))
        weights = [f if k else 1 - f for f, k in zip(fracs, corner)]
        yield corner, pixel * layout.channels, inside, weights


def _load(layout: _Layout, image_ref, first, inside):
    """(block, channels): the channels of a corner, 0 outside the image (no masks: clamped indices)."""
    channel = lax.broadcasted_iota(jnp.int32, (1, layout.channels), 1)
    values = image_ref[first[:, None] + channel]
    return jnp.where(inside[:, None], values, jnp.zeros((), values.dtype))


def _forward_kernel(*refs, layout: _Layout):
    n = len(layout.sizes)
    coord_refs, image_ref, out_ref = refs[:n], refs[n], refs[n + 1]
    out = jnp.zeros((layout.block, layout.channels), out_ref.dtype)
    for _, first, inside, weights in _corners(layout, coord_refs):
        weight = functools.reduce(lambda a, b: a * b, weights)
        out = out + weight[:, None] * _load(layout, image_ref, first, inside)
    out_ref[...] = out


def _backward_kernel(*refs, layout: _Layout, needs: _Needs, triton: bool):
    n = len(layout.sizes)
    coord_refs, image_ref, cotangent_ref = refs[:n], refs[n], refs[n + 1]
    outs = refs[n + 3 :] if needs.image else refs[n + 2 :]  # after the aliased zeros, if any
    cotangent = cotangent_ref[...]
    grads = [jnp.zeros((layout.block,), cotangent.dtype) for _ in range(n)]
    adds = []
    for corner, first, inside, weights in _corners(layout, coord_refs):
        if needs.grid:
            dot = jnp.sum(_load(layout, image_ref, first, inside) * cotangent, axis=1)
            for d in range(n):
                others = [w for e, w in enumerate(weights) if e != d]
                slope = functools.reduce(lambda a, b: a * b, others, jnp.ones_like(dot))
                grads[d] = grads[d] + (slope * dot if corner[d] else -(slope * dot))
        if needs.image:
            adds.append((first, inside, functools.reduce(lambda a, b: a * b, weights)))
    if needs.grid:
        for ref, grad in zip(outs[:n], grads):
            ref[...] = grad
    if not needs.image:
        return
    grad_ref = outs[-1]
    channel = lax.broadcasted_iota(jnp.int32, (1, layout.channels), 1)
    if triton:
        shape = (layout.block, layout.channels)
        for first, inside, weight in adds:
            mask = jnp.broadcast_to(inside[:, None], shape)
            atomic_add(grad_ref, (first[:, None] + channel,), weight[:, None] * cotangent, mask=mask)
        return

    # Interpret mode: one point at a time, so that no add has repeated indices.
    def add_point(p, carry):
        row = lax.dynamic_index_in_dim(cotangent, p, keepdims=False)
        for first, inside, weight in adds:
            scale = jnp.where(inside[p], weight[p], jnp.zeros((), weight.dtype))
            window = pl.ds(first[p], layout.channels)
            grad_ref[window] = grad_ref[window] + scale * row
        return carry

    lax.fori_loop(0, layout.block, add_point, 0)
