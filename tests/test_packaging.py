"""The wheel as a user gets it: built from a copy of this tree, inspected, installed into a fresh venv
and run from outside the repository (where the editable install of the test venv cannot help)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a build must not see: virtual environments, build outputs, caches, local runs and data.
_ANYWHERE = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis")
# Only at the root: a module may be called workdir_lock.py.
_AT_ROOT = shutil.ignore_patterns("build", "dist", "out", "workdir*", "runs", "data", ".venv-oldest")


def NOT_SOURCE(directory: str, names: list[str]) -> set[str]:
    """What the copy of the checkout leaves out: caches everywhere, run outputs at the root."""
    ignored = set(_ANYWHERE(directory, names))
    if Path(directory).resolve() == ROOT:
        ignored |= set(_AT_ROOT(directory, names))
    return ignored


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """(the wheel, pip's output while building it). Built from a copy, so the build writes nothing
    (build/, *.egg-info) into the checkout; without build isolation, with the test venv's setuptools
    (the `dev` extra asks for the version the [build-system] table needs), so no network is needed."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--verbose",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = build.stdout + build.stderr
    assert build.returncode == 0, output
    (built,) = (tmp / "dist").glob("stn_jax-*.whl")
    return built, output


def test_build_has_no_license_deprecation_warning(wheel):
    _, output = wheel
    assert "Building wheel for stn_jax" in output  # the backend's output is there to be checked
    assert "project.license" not in output, output  # setuptools>=77 warns about the TOML-table form


def test_wheel_contents(wheel):
    built, _ = wheel
    with zipfile.ZipFile(built) as z:
        names = set(z.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = z.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "stn_jax/py.typed" in names  # PEP 561: type checkers read the annotations
    for package in ("stn_jax", "train"):
        modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
        assert modules, package
        assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"
    configs = {p.name for p in (ROOT / "train" / "configs").glob("*.py")}
    assert {"__init__.py", "base.py", "tiny.py"} <= configs and {f"train/configs/{c}" for c in configs} <= names
    top_level = {n.split("/", 1)[0] for n in names}
    assert top_level == {"stn_jax", "train", metadata.split("/", 1)[0]}, top_level  # no tests/, colab/, ...
    assert "License-Expression: Apache-2.0" in headers, headers
    assert not [h for h in headers if h.startswith("License:")], headers  # the legacy field is gone


def test_wheel_runs_in_a_fresh_venv_outside_the_repository(wheel, tmp_path):
    built, _ = wheel
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # The wheel alone (--no-deps), with this venv's pip pointed at the fresh interpreter; installing its
    # dependencies from the network would take minutes and gigabytes.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(built),
        ],
        check=True,
        timeout=300,
    )
    fresh = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies come from the test venv instead: a plain path line in a .pth file is appended to
    # sys.path as it is, and the .pth files *in* that directory are not processed, so the test venv's
    # editable-install finder (__editable__.stn_jax-*.pth) stays inactive and the checkout's stn_jax and
    # train are not importable there; the import checks below make sure of it.
    outer = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (fresh / "_test_venv_dependencies.pth").write_text("".join(f"{p}\n" for p in outer))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    cwd = tmp_path / "elsewhere"  # not the repository, so `python -m train` cannot find the checkout
    cwd.mkdir()

    listed = subprocess.run(
        [python, "-m", "train", "--list"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    names = set(listed.stdout.split())
    assert {"tiny", "mnist_rts_st_cnn_affine", "mnist_rts_cnn", "svhn_st_cnn_multi"} <= names, listed.stdout
    # Every config module of the checkout is an experiment the installed package lists.
    configs = {p.stem for p in (ROOT / "train" / "configs").glob("*.py")} - {"__init__", "base"}
    assert configs <= names, sorted(configs - names)

    probe = (
        "import importlib.metadata, importlib.resources, json, sys, stn_jax, train, train.configs, train.__main__\n"
        "print(json.dumps({'stn_jax': stn_jax.__file__, 'train': train.__file__, 'configs': train.configs.__file__,\n"
        "    'main': train.__main__.__file__, 'version': stn_jax.__version__,\n"
        "    'dist': str(importlib.metadata.distribution('stn_jax').locate_file('')),\n"
        "    'py_typed': importlib.resources.files('stn_jax').joinpath('py.typed').is_file(),\n"
        "    'finders': [m for m in sys.modules if 'editable' in m]}))\n"
    )
    found = subprocess.run([python, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stdout + found.stderr
    info = json.loads(found.stdout.strip().splitlines()[-1])
    for key in ("stn_jax", "train", "configs", "main"):
        path = Path(info[key]).resolve()
        assert path.is_relative_to(fresh.resolve()), f"{key} imported from {path}, not from the fresh venv {fresh}"
        assert not path.is_relative_to(ROOT), f"{key} imported from the repository: {path}"
    assert Path(info["dist"]).resolve() == fresh.resolve(), info  # the wheel's metadata, not the editable one's
    assert info["py_typed"] and info["finders"] == [], info
    assert info["version"] == built.name.split("-")[1]


def test_core_requires_jax_and_numpy_only(wheel):
    """`pip install stn_jax` brings JAX and NumPy; Flax and Optax come with the `flax` extra, which `train`
    and `dev` include (so `pip install -e ".[dev,train]"` keeps installing them)."""
    built, _ = wheel
    with zipfile.ZipFile(built) as z:
        (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            line.split(": ", 1)[1]
            for line in z.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    extra = lambda name: {r.split(";")[0].strip() for r in requires if f'extra == "{name}"' in r}
    assert {r for r in requires if ";" not in r} == {"jax>=0.7.1", "numpy>=2.0"}, requires
    assert extra("flax") == {"flax>=0.12.0", "optax>=0.1.5"}, requires
    for name in ("train", "dev"):
        assert "stn_jax[flax]" in extra(name), (name, requires)


# Run in a venv holding the wheel and what `pip install stn_jax` brings: the functional core, every sampler
# implementation against the reference, a gradient, the demo's gallery; then each Flax-side module's error.
_CORE_PROBE = """
import importlib, importlib.util, json
import jax, jax.numpy as jnp, numpy as np
import stn_jax
from stn_jax import demo

image = jnp.arange(5 * 6 * 3, dtype=jnp.float32).reshape(5, 6, 3) / 90
theta = jnp.array([[0.9, -0.2, 0.1], [0.25, 0.8, -0.05]])
g = stn_jax.grid(theta, (4, 7))
out = {impl: np.asarray(stn_jax.sample(image, g, implementation=impl)) for impl in stn_jax.IMPLEMENTATIONS}
grad = jax.grad(lambda t: stn_jax.sample(image, stn_jax.grid(t, (4, 7))).sum())(theta)
tps = stn_jax.sample(image, stn_jax.grid(stn_jax.identity_params("tps"), (5, 6), transform="tps"))
round_trip = stn_jax.compose_affine(theta, stn_jax.invert_affine(theta))
errors = {}
for name in ("stn_jax.nnx", "stn_jax.linen", "stn_jax.models", "stn_jax.optim"):
    try:
        importlib.import_module(name)
        errors[name] = None
    except ImportError as error:
        errors[name] = str(error)
print(json.dumps({
    "stn_jax": stn_jax.__file__,
    "grid": g.shape, "sample": {k: v.shape for k, v in out.items()},
    "agree": all(np.allclose(v, out["reference"], atol=1e-4) for v in out.values()),
    "grad_finite_nonzero": bool(jnp.isfinite(grad).all() and (grad != 0).any()),
    "tps_identity": bool(np.allclose(tps, image, atol=1e-4)),
    "round_trip": bool(np.allclose(round_trip, stn_jax.identity_params("affine"), atol=1e-5)),
    "gallery": [name for name, _ in demo.gallery(demo.checkerboard(16))],
    "absent": [m for m in ("flax", "optax") if importlib.util.find_spec(m) is None],
    "errors": errors,
}))
"""


def test_core_runs_without_the_flax_extra(wheel, tmp_path):
    """The wheel installed as `pip install stn_jax` does it, dependencies from the package index, into a
    fresh venv: the functional core runs; stn_jax.nnx, linen, models and optim say which extra to install."""
    built, _ = wheel
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(built)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    env["JAX_PLATFORMS"] = "cpu"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    probe = subprocess.run([python, "-c", _CORE_PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(info["stn_jax"]).resolve().is_relative_to(env_dir.resolve()), info["stn_jax"]
    assert info["absent"] == ["flax", "optax"], info  # the core install brought neither
    every = ("reference", "cpu", "dense", "deterministic", "pallas")  # each runs in the core install
    assert info["grid"] == [4, 7, 2] and info["sample"] == {k: [4, 7, 3] for k in every}
    assert info["agree"] and info["grad_finite_nonzero"] and info["tps_identity"] and info["round_trip"], info
    assert info["gallery"] == ["identity", "affine", "attention", "similarity", "projective", "tps"], info
    for name, message in info["errors"].items():
        assert message is not None, f"{name} imported without flax and optax"
        assert message.startswith(f"{name} needs ") and 'pip install "stn_jax[flax]"' in message, message
