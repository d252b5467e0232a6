import os

import jax
import jax.experimental
import pytest

# `jax.enable_x64` as a context manager is jax >= 0.8; before, `jax.experimental.enable_x64`
# (removed in 0.9). The oldest supported jax (tests/oldest-versions.txt) is 0.7.
enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64


@pytest.fixture(scope="session")
def torch():
    """PyTorch, the reference implementation; in CI its absence is a failure, not a skip."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        import torch as torch_module
    else:
        torch_module = pytest.importorskip("torch")
    torch_module.set_num_threads(2)
    return torch_module


@pytest.fixture
def x64():
    """float64 inside one test: ``enable_x64`` as a context, so other tests keep JAX's defaults."""
    with enable_x64(True):
        yield
