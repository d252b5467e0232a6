"""Deterministic sampling: the reference, with an image gradient that is bit-reproducible on GPUs.

The image gradient of a gather is a scatter-add, and on GPUs scatter-adds whose indices
repeat (many points reading one pixel) add with atomics in whatever order the threads
arrive: floating-point addition is not associative, so the gradient changes in its last
bits from run to run (PyTorch's ``grid_sample`` backward too: pytorch/pytorch#68959).

Here the forward pass is the reference's (one flat gather, the same numbers bit for bit)
and only the derivative of that gather is written differently (``jax.custom_jvp``): the
image tangent reads ``rows[index]`` through a chain of operations whose transposes, which
JAX derives, leave no two updates on one address:

1. sort the flat indices (stable, so ties keep the points' order: a total order);
2. read each pixel once, at the first entry of its run in the sorted list (the other
   entries read 0), a gather whose transpose writes each pixel at most once;
3. copy each run's first value along the run (a segmented scan, ``lax.associative_scan``),
   whose transpose sums each run's cotangents in a fixed tree order;
4. put the entries back in the points' order (a permutation: unique indices).

So the image gradient is a sort plus a segmented sum, much like the rewrite that XLA's
``--xla_gpu_deterministic_ops`` applies to every scatter, but for this one operation and
without a process-wide flag. The grid gradient needs no scatter (each point has its own taps).
The values and both gradients equal the reference's up to the order of the sums.

Cost: the forward pass is the reference's, and a gradient w.r.t. the grid only never
calls the rule below (the image has no tangent). The image gradient adds, per example, a
sort of its ``K·P`` tap indices (``P`` points, ``K`` = 2, 4 or 8 taps for linear, 1 for
nearest, 16 for bicubic), a scan of ``2·log2(K·P)`` steps over the ``(K·P, C)`` tap values
and two permutations, against the reference's one scatter-add; its GPU cost is still to be
measured (``benchmarks/sampler.py`` times it). On CPU, whose scatter-add runs in order, the
reference's image gradient is deterministic already.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stn_jax import _sampling_reference as reference


@jax.custom_jvp
def take(rows: jax.Array, index: jax.Array) -> jax.Array:
    """``rows[index]`` (as ``reference.take``) whose derivative in ``rows`` transposes without a repeated index."""
    return reference.take(rows, index)


@take.defjvp
def _take_jvp(primals, tangents):
    rows, index = primals
    rows_dot, _ = tangents  # the index is integer: no tangent
    return take(rows, index), _take_by_runs(rows_dot, index)


def _take_by_runs(rows: jax.Array, index: jax.Array) -> jax.Array:
    """``rows[index]``, built from operations whose transposes are deterministic (steps 1-4 above)."""
    shape = index.shape
    index = index.reshape(-1)
    order = jnp.argsort(index, stable=True)
    ordered = index[order]
    first = jnp.concatenate([jnp.ones(1, bool), ordered[1:] != ordered[:-1]])
    # Entries that do not start a run read 0 from distinct indices past the end (so the
    # indices are unique; int32 holds them below 2**31 pixels plus taps per example), and
    # the transpose drops them.
    past_end = rows.shape[0] + jnp.arange(index.size, dtype=index.dtype)
    heads = rows.at[jnp.where(first, ordered, past_end)].get(mode="fill", fill_value=0, unique_indices=True)
    runs, _ = jax.lax.associative_scan(_carry_head, (heads, first))
    back = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype), unique_indices=True)
    return runs.at[back].get(mode="promise_in_bounds", unique_indices=True).reshape(*shape, rows.shape[-1])


def _carry_head(earlier, later):
    """Combines two stretches of the sorted list: the later one's head if it has one, else the earlier one's."""
    (value_a, head_a), (value_b, head_b) = earlier, later
    return jnp.where(head_b[..., None], value_b, value_a), head_a | head_b


def sample(image: jax.Array, grid: jax.Array, *, method: str, padding: str, align_corners: bool, dtype) -> jax.Array:
    """As ``_sampling_reference.sample``, with a deterministic image gradient."""
    return reference.sample(
        image, grid, method=method, padding=padding, align_corners=align_corners, dtype=dtype, take=take
    )
