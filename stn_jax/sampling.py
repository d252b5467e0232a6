"""The differentiable sampler: read an image at the (normalised) points of a grid.

``sample`` checks its arguments and hands them to one of several implementations that
compute the same numbers (``torch.nn.functional.grid_sample``'s) in different ways:

* ``"reference"`` (``_sampling_reference``): plain ``jnp``, differentiated by JAX itself;
  the specification, and the default on every platform but CPU.
* ``"cpu"`` (``_sampling_cpu``): linear sampling through window primitives with a
  written-out derivative, measured faster on XLA CPU (BENCHMARKS.md); the default there.
  It needs JAX internals: where they are missing, CPU falls back to the reference.
* ``"dense"`` (``_sampling_dense``): bilinear as per-axis weight matrices and matrix
  products, no gather or scatter; for small images, never a default.
* ``"deterministic"`` (``_sampling_deterministic``): the reference, whose image
  gradient is a sort and a segmented sum instead of a scatter-add, so bit-reproducible
  on GPUs; never a default.
* ``"pallas"`` (``_sampling_pallas``): linear sampling as Pallas kernels, compiled by
  Triton on GPUs (image gradient by atomic adds) and run in interpret mode (slow, exact)
  elsewhere; reverse-mode derivatives only. Never a default: it has not been timed on a
  GPU yet, so ``default_implementation`` does not pick it on any platform.

With ``implementation=None`` the choice is made per platform when the function is
lowered (``jax.lax.platform_dependent``), not when it is traced, so one function exported
for several platforms runs the right path on each.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from stn_jax import _checks
from stn_jax import _sampling_antialias as antialiased
from stn_jax import _sampling_dense as dense
from stn_jax import _sampling_deterministic as deterministic
from stn_jax import _sampling_reference as reference

try:  # The CPU kernels use JAX internals that change between releases.
    from stn_jax import _sampling_cpu as cpu_kernels
except Exception as _err:
    cpu_kernels = None
    warnings.warn(
        f"stn_jax: the CPU sampler kernels do not work with jax {jax.__version__} ({type(_err).__name__}: {_err}); "
        "sample() uses the reference implementation on CPU",
        RuntimeWarning,
        stacklevel=2,
    )

try:  # Pallas is jax.experimental: it may move between releases.
    from stn_jax import _sampling_pallas as pallas_kernels
except Exception:
    pallas_kernels = None

__all__ = ["IMPLEMENTATIONS", "METHODS", "PADDINGS", "default_implementation", "sample"]

#: Interpolations of :func:`sample` (``method=``); ``"bicubic"`` is 2-D only.
METHODS = ("bilinear", "nearest", "bicubic")
#: What :func:`sample` reads outside the image (``padding=``), as in PyTorch's ``grid_sample``.
PADDINGS = ("zeros", "border", "reflection")
#: Implementations of :func:`sample` (``implementation=``): ``"reference"`` (plain ``jnp``, the
#: specification), ``"cpu"`` (kernels tuned for XLA CPU), ``"dense"`` (per-axis weight matrices),
#: ``"pallas"`` (Pallas kernels: Triton on GPUs, interpret mode elsewhere).
#: Also ``"deterministic"`` (the reference, with an image gradient that is bit-reproducible on GPUs).
IMPLEMENTATIONS = ("reference", "cpu", "dense", "deterministic", "pallas")

_MODULES = {
    "reference": reference,
    "cpu": cpu_kernels,
    "dense": dense,
    "deterministic": deterministic,
    "pallas": pallas_kernels,
}


def default_implementation(platform: str) -> str:
    """The implementation that ``implementation=None`` runs on ``platform`` (``"cpu"``, ``"cuda"``, ...).

    Args:
      platform: a JAX platform name, as in ``jax.devices()[0].platform``.

    Returns:
      One of :data:`IMPLEMENTATIONS`: ``"cpu"`` on CPU where the CPU kernels work with the
      installed JAX, else ``"reference"`` (no other platform has been measured yet; in
      particular ``"pallas"`` is never the default, even on GPUs, until it has been timed).

    Example:
      >>> from stn_jax.sampling import default_implementation
      >>> default_implementation("tpu")
      'reference'
    """
    return "cpu" if platform == "cpu" and cpu_kernels is not None else "reference"


def _check_inputs(image, grid, method: str) -> tuple[jax.Array, jax.Array]:
    image = jnp.asarray(image)
    grid = jnp.asarray(grid)
    if grid.ndim < 2 or grid.shape[-1] not in (1, 2, 3):
        raise ValueError(
            f"grid must have shape (*out_spatial, n) with n = 1, 2 or 3 coordinates, got shape {grid.shape}"
        )
    n = grid.shape[-1]
    if grid.ndim != n + 1:
        raise ValueError(
            f"grid with {n} coordinates must have {n} spatial axes plus the coordinate axis, "
            f"i.e. rank {n + 1}, got shape {grid.shape}"
        )
    if image.ndim != n + 1:
        raise ValueError(
            f"image must have rank {n + 1} ({n} spatial axes then channels) to match a grid with {n} "
            f"coordinates, got image shape {image.shape} and grid shape {grid.shape}"
        )
    if any(s == 0 for s in image.shape):
        raise ValueError(f"image must not have empty axes, got shape {image.shape}")
    if not jnp.issubdtype(grid.dtype, jnp.floating):
        raise TypeError(f"grid must have a floating dtype, got {grid.dtype}")
    if not jnp.issubdtype(image.dtype, jnp.floating) and (
        method != "nearest" or jnp.issubdtype(image.dtype, jnp.complexfloating)
    ):
        raise TypeError(
            f"image must have a floating dtype for method={method!r} (integer images are "
            f"accepted only by method='nearest'), got {image.dtype}"
        )
    if method == "bicubic" and n != 2:
        raise ValueError(f"method='bicubic' needs a 2-D image and grid, got a grid with {n} coordinates")
    return image, grid


def sample(
    image: ArrayLike,
    grid: ArrayLike,
    *,
    method: str = "bilinear",
    padding: str = "zeros",
    align_corners: bool = False,
    antialias: bool = False,
    implementation: str | None = None,
) -> jax.Array:
    """Samples ``image`` at the normalised points of ``grid`` (one example; vmap for batches).

    ``grid[..., 0]`` is x (the last spatial axis of ``image``), ``grid[..., 1]`` is y and
    ``grid[..., 2]`` is z, each in ``[-1, 1]`` with PyTorch's ``align_corners`` meaning.
    Every channel is warped by the same grid. The output spatial shape is the grid's,
    so the output may be smaller or larger than the input.

    Points with a non-finite coordinate (NaN or ±inf) read 0 whatever the padding, and
    pass a zero gradient back to the grid; this holds under ``jit`` too.

    The gradient w.r.t. ``image`` is a scatter-add, which GPUs run with atomic adds in
    no fixed order: repeated runs differ in the last bits, as PyTorch's ``grid_sample``
    backward does. For bit-reproducible image gradients pass
    ``implementation="deterministic"`` (same values, every method; the image gradient
    becomes a sort plus a segmented sum, not yet timed on a GPU) or, for small images,
    ``"dense"``. The gradient w.r.t. the grid needs no scatter (each point has its own
    taps): the reference's is deterministic already. The process-wide alternative is the
    XLA flag ``--xla_gpu_deterministic_ops=true`` (in ``XLA_FLAGS``, before JAX starts):
    XLA then rewrites every scatter and picks deterministic kernels elsewhere, at a cost
    to the whole program; ``jax_default_matmul_precision`` fixes what precision matrix
    products round to. ``stn_jax`` sets neither.

    Args:
      image: ``(W, C)``, ``(H, W, C)`` or ``(D, H, W, C)``. Floating, or any integer
        dtype with ``method="nearest"``.
      grid: ``(Wo, 1)``, ``(Ho, Wo, 2)`` or ``(Do, Ho, Wo, 3)``, floating.
      method: ``"bilinear"`` (linear/trilinear in 1-D/3-D), ``"nearest"`` or
        ``"bicubic"`` (2-D only).
      padding: value read outside the image: ``"zeros"``, ``"border"`` (nearest edge
        pixel) or ``"reflection"`` (mirrored at the edges).
      align_corners: PyTorch's meaning.
      antialias: read, at each point, the image averaged over the point's footprint (how
        far apart neighbouring grid points land in the input), so that grids that shrink
        the image do not alias; ``method="bilinear"`` only. Where the grid does not shrink
        (identity, upsampling) the output equals ``antialias=False`` bit for bit. The
        filter, its cost and its gradient: ``stn_jax/_sampling_antialias.py``; its reads
        are plain ``jnp`` gathers, or the CPU kernels' where ``implementation`` runs them.
      implementation: ``None`` (the platform's default, chosen when lowering: see
        :func:`~stn_jax.sampling.default_implementation`) or one of :data:`IMPLEMENTATIONS`:
        ``"reference"`` (plain ``jnp``, every option), ``"cpu"`` (kernels tuned for XLA
        CPU; linear sampling only, the other methods are the reference's) or
        ``"dense"`` (bilinear as matrix products, no gather or scatter; small images
        only: about ``2·P·H·W·C`` FLOPs for ``P`` output points) or ``"pallas"``
        (Pallas kernels for linear sampling, Triton on GPUs and interpret mode
        elsewhere, the other methods are the reference's; reverse mode only: no
        ``jax.jvp``/``jax.hessian``).

    Returns:
      ``(*grid.shape[:-1], C)`` in ``image``'s dtype (half precision accumulates in float32).

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> image = jnp.arange(12.0).reshape(3, 4, 1)
      >>> flip = stn_jax.affine_grid(jnp.array([[-1.0, 0, 0], [0, 1, 0]]), (3, 4))
      >>> stn_jax.sample(image, flip)[..., 0]
      Array([[ 3.,  2.,  1.,  0.],
             [ 7.,  6.,  5.,  4.],
             [11., 10.,  9.,  8.]], dtype=float32)
    """
    method = _checks.check_option("method", method, METHODS)
    padding = _checks.check_option("padding", padding, PADDINGS)
    align_corners = _checks.check_bool("align_corners", align_corners)
    antialias = _checks.check_bool("antialias", antialias)
    if antialias and method != "bilinear":
        raise ValueError(
            f"antialias=True needs method='bilinear' (linear in 1-D, trilinear in 3-D), got method={method!r}"
        )
    if antialias and implementation == "deterministic":
        raise ValueError(
            "implementation='deterministic' cannot be combined with antialias=True: the antialiased "
            "reads' image gradient is a scatter-add"
        )
    image, grid = _check_inputs(image, grid, method)
    if implementation is not None:
        _check_implementation(implementation, method)
    if jnp.issubdtype(image.dtype, jnp.floating):
        dtype = jnp.promote_types(_checks.compute_dtype(image.dtype), _checks.compute_dtype(grid.dtype))
    else:
        dtype = _checks.compute_dtype(grid.dtype)

    options = dict(method=method, padding=padding, align_corners=align_corners, dtype=dtype)
    grid = grid.astype(dtype)
    out = _run(image, grid, options, implementation)
    if antialias:
        read = _antialias_read(implementation)
        out = antialiased.sample(image, grid, out, padding=padding, align_corners=align_corners, dtype=dtype, read=read)
    return out.astype(image.dtype)


def _antialias_read(implementation: str | None):
    """How the antialiased sampler reads its pyramid: with the CPU kernels where linear sampling
    runs them (``None`` on a CPU, ``"cpu"``), else with the portable gathers."""
    kernels = cpu_kernels
    if kernels is None or implementation not in (None, "cpu"):
        return antialiased.read_rows
    if implementation == "cpu":
        return kernels.read_rows

    def by_platform(flat, indices):
        return jax.lax.platform_dependent(flat, indices, cpu=kernels.read_rows, default=antialiased.read_rows)

    return by_platform


def _run(image: jax.Array, grid: jax.Array, options: dict, implementation: str | None) -> jax.Array:
    if implementation is not None:
        return _MODULES[implementation].sample(image, grid, **options)
    if options["method"] == "bilinear" and cpu_kernels is not None:
        # Both branches are traced; lowering keeps the one of the platform compiled for.
        return jax.lax.platform_dependent(
            image,
            grid,
            cpu=functools.partial(cpu_kernels.sample, **options),
            default=functools.partial(reference.sample, **options),
        )
    return reference.sample(image, grid, **options)  # nearest and bicubic: one implementation


def _check_implementation(implementation, method: str) -> None:
    _checks.check_option("implementation", implementation, IMPLEMENTATIONS)
    if implementation == "cpu" and cpu_kernels is None:
        raise ValueError(
            f"implementation='cpu' is unavailable: the CPU kernels do not work with jax {jax.__version__} "
            "(see the warning at import); use implementation=None or 'reference'"
        )
    if implementation == "pallas" and pallas_kernels is None:
        raise ValueError(
            f"implementation='pallas' is unavailable: jax.experimental.pallas does not import with jax "
            f"{jax.__version__}; use implementation=None or 'reference'"
        )
    if implementation == "dense" and method != "bilinear":
        raise ValueError(f"implementation='dense' supports method='bilinear' only, got method={method!r}")
