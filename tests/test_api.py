"""Conventions every public function of `stn_jax` follows (after dm-pix's api_test)."""

import inspect
import re

import pytest

import stn_jax

PUBLIC_FUNCTIONS = [name for name in stn_jax.__all__ if inspect.isfunction(getattr(stn_jax, name))]


def test_all_names_exist_and_version_is_set():
    for name in stn_jax.__all__:
        assert hasattr(stn_jax, name), name
    assert isinstance(stn_jax.__version__, str) and stn_jax.__version__.count(".") == 2
    assert len(PUBLIC_FUNCTIONS) >= 10


def _sections(doc: str) -> dict[str, str]:
    """Google-style sections of a (dedented) docstring: ``{"Args": text, "Returns": text, ...}``."""
    parts = re.split(r"^(\w+):[ \t]*$", doc, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_docstring_has_args_returns_and_an_executed_example(name):
    function = getattr(stn_jax, name)
    sections = _sections(inspect.getdoc(function) or "")
    assert {"Args", "Returns", "Example"} <= set(sections), f"{name}: sections {sorted(sections)}"
    # Every parameter is described: an "  name:" (or "  a, b, c:") line of the Args section.
    described = {n for line in re.findall(r"^  (\w+(?:, \w+)*):", sections["Args"], re.M) for n in line.split(", ")}
    missing = [p for p in inspect.signature(function).parameters if p not in described]
    assert not missing, f"{name}: Args does not describe {missing}"
    assert sections["Returns"].strip(), f"{name}: empty Returns"
    # Examples are doctests: pytest runs them with --doctest-modules.
    assert ">>> " in sections["Example"], f"{name} has no runnable example"


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
