"""stn_jax: Spatial Transformer Networks (Jaderberg et al., 2015) for JAX and Flax.

Pure per-example functions: :func:`grid` turns transform parameters θ into a sampling
grid, :func:`sample` reads an image at the grid's points. Batch with ``jax.vmap``.
"""

from stn_jax.grids import TRANSFORMS, affine_grid, affine_matrix, grid, identity_grid, identity_params, num_params
from stn_jax.sampling import METHODS, PADDINGS, sample

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "PADDINGS",
    "TRANSFORMS",
    "__version__",
    "affine_grid",
    "affine_matrix",
    "grid",
    "identity_grid",
    "identity_params",
    "num_params",
    "sample",
]
