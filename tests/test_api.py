"""Conventions every public function of `stn_jax` follows (after dm-pix's api_test)."""

import inspect

import pytest

import stn_jax

PUBLIC_FUNCTIONS = [name for name in stn_jax.__all__ if inspect.isfunction(getattr(stn_jax, name))]


def test_all_names_exist_and_version_is_set():
    for name in stn_jax.__all__:
        assert hasattr(stn_jax, name), name
    assert isinstance(stn_jax.__version__, str) and stn_jax.__version__.count(".") == 2
    assert len(PUBLIC_FUNCTIONS) >= 10


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_docstring_has_args_returns_and_an_executed_example(name):
    doc = inspect.getdoc(getattr(stn_jax, name))
    assert doc, f"{name} has no docstring"
    # Examples are doctests: pytest runs them with --doctest-modules.
    assert "Example" in doc and ">>> " in doc, f"{name} has no runnable example"


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_options_are_keyword_only(name):
    params = list(inspect.signature(getattr(stn_jax, name)).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    # At most the data arguments (θ or points or image, and a grid or shape) are positional.
    assert len(positional) <= 2, f"{name}: {[p.name for p in positional]} should be keyword-only"
    for p in positional:
        assert p.default is inspect.Parameter.empty or p.name == "transform", f"{name}: option {p.name} is positional"


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, stn_jax; print(any(m.split('.')[0] in ('tensorflow', 'torch', 'flax', 'optax') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_imports_do_not_start_a_jax_backend():
    # The training CLI chooses devices (fake CPU devices, jax.distributed) after imports;
    # a backend started by an import would make that impossible.
    import subprocess
    import sys

    modules = "stn_jax, stn_jax.nnx, stn_jax.linen, stn_jax.models, train.distortions, train.data, train.train"
    code = f"import {modules}; from jax._src import xla_bridge; print(sorted(xla_bridge._backends))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
