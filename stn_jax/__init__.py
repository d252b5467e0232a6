"""stn_jax: Spatial Transformer Networks (Jaderberg et al., 2015) for JAX and Flax.

Pure per-example functions: :func:`grid` turns transform parameters θ into a sampling
grid, :func:`sample` reads an image at the grid's points. Batch with ``jax.vmap``.
"""

from stn_jax.grids import (
    TRANSFORMS,
    affine_grid,
    affine_matrix,
    grid,
    identity_grid,
    identity_params,
    num_params,
    tps_control_points,
)
from stn_jax.sampling import IMPLEMENTATIONS, METHODS, PADDINGS, sample
from stn_jax.transforms import (
    AffineParams,
    affine_from_params,
    affine_to_params,
    compose_affine,
    invert_affine,
    normalized_to_pixel,
    pixel_to_normalized,
    transform_points,
)

#: The version of this package.
__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATIONS",
    "METHODS",
    "PADDINGS",
    "TRANSFORMS",
    "AffineParams",
    "__version__",
    "affine_from_params",
    "affine_grid",
    "affine_matrix",
    "affine_to_params",
    "compose_affine",
    "grid",
    "identity_grid",
    "identity_params",
    "invert_affine",
    "normalized_to_pixel",
    "num_params",
    "pixel_to_normalized",
    "sample",
    "tps_control_points",
    "transform_points",
]
