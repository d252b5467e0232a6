import os

import jax
import pytest


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
    """float64 inside one test: ``jax.enable_x64`` as a context, so other tests keep JAX's defaults."""
    with jax.enable_x64(True):
        yield
