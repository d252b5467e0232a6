"""The Colab notebooks under colab/: stripped in git, and executed top to bottom with QUICK=1.

Each notebook writes its figures and a ``metrics.json`` into ``$STN_NOTEBOOK_OUT/<name>/``;
the checks below read them back, so a notebook that "runs" but produces nothing sensible
fails too. The kernel is this interpreter (a kernel spec written for the test and put
first on ``JUPYTER_PATH``), its working directory ``colab/``, so the notebooks find the
local checkout the way a user's Jupyter would. MNIST is the test session's one preparation
(conftest.py's ``real_mnist``), or ``$STN_NOTEBOOK_DATA_DIR``.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import os
import re
import sys
import time
import tomllib
from pathlib import Path

import pytest

import helpers

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(p.stem for p in COLAB.glob("*.ipynb"))
# QUICK training (batches of 32 RTS digits at a learning rate of 0.01) measured 0.31 (ST-CNN) and 0.47 (CNN)
# test error after 120 steps, 0.39 after 100 (ST-CNN on 2 devices); a training that learns nothing scores
# 0.90 ± 0.01 on the 1000 test digits, and one that learns at half the speed about 0.65 (60 steps).
QUICK_TEST_ERROR = 0.6
CELL_TIMEOUT_S = 900  # per cell; QUICK runs take seconds to a couple of minutes a cell
BADGE = "https://colab.research.google.com/github/{org}/stn_jax/blob/main/colab/{name}.ipynb"


def _read(name: str):
    return nbformat.read(COLAB / f"{name}.ipynb", as_version=4)


def _png(path: Path, *, max_kb: int = 1000) -> None:
    assert path.is_file(), f"{path} was not written"
    head = path.read_bytes()[:8]
    assert head == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    size_kb = path.stat().st_size / 1024
    assert 5 < size_kb < max_kb, f"{path}: {size_kb:.0f} KB"


# -- static checks (fast) ----------------------------------------------------------------------


def test_there_are_notebooks_and_each_has_checks():
    assert NOTEBOOKS, f"no notebooks in {COLAB}"
    assert set(NOTEBOOKS) <= set(CHECKS), f"notebooks without checks: {sorted(set(NOTEBOOKS) - set(CHECKS))}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_stripped(name):
    nb = _read(name)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: cell {i} has outputs; strip them before committing"
            assert cell.execution_count is None, f"{name}: cell {i} has an execution count"
        assert "execution" not in cell.metadata, f"{name}: cell {i} carries execution timing metadata"
    assert "widgets" not in nb.metadata, f"{name}: widget state in the metadata"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_badge_colab_detection_and_quick(name):
    nb = _read(name)
    text = "\n".join(cell.source for cell in nb.cells)
    badge = re.escape(BADGE.format(org="ORG", name=name)).replace("ORG", "[^/]+")
    assert re.search(badge, nb.cells[0].source), f"{name}: the first cell lacks its Colab badge"
    assert '"google.colab" in sys.modules' in text
    assert 'os.environ.get("QUICK"' in text
    assert nb.metadata["kernelspec"]["name"] == "python3"
    # The pip cell runs only in Colab.
    setup = next(cell.source for cell in nb.cells if "pip" in cell.source and cell.cell_type == "code")
    assert re.search(r"^if IN_COLAB:\n\s+subprocess.run\(\[sys.executable, \"-m\", \"pip\"", setup, re.M)


def _setup_function(name: str, function: str):
    """A function defined in the notebook's setup cell, exec'd alone (the rest of the cell is not run)."""
    setup = next(cell.source for cell in _read(name).cells if "pip" in cell.source and cell.cell_type == "code")
    defs = [node for node in ast.parse(setup).body if isinstance(node, ast.FunctionDef) and node.name == function]
    assert len(defs) == 1, f"{name}: no function {function} in the setup cell"
    namespace: dict = {}
    exec(compile(ast.Module(body=defs, type_ignores=[]), f"{name}:setup", "exec"), namespace)
    return namespace[function]


def _requires_dist() -> list[str]:
    """stn_jax's metadata Requires-Dist lines, as pyproject.toml gives them (what the Colab cell reads)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *(f'{r}; extra == "{e}"' for e, rs in extras.items() for r in rs)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_colab_pip_requirements(name):
    """In Colab: the `train` extra's requirements with their ranges (and those of the extras it includes by
    naming `stn_jax[...]`), the runtime's own TensorFlow distribution in place of `tensorflow-cpu`, jax with the
    accelerator's extra; never the `dev` extra's."""
    from packaging.requirements import Requirement

    pip_requirements = _setup_function(name, "pip_requirements")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    train = [Requirement(r) for r in (*project["dependencies"], *extras["train"])]
    included = [Requirement(r) for t in train if t.name == "stn_jax" for e in t.extras for r in extras[e]]
    assert {"flax", "optax"} <= {r.name for r in included}  # `train` includes the `flax` extra
    expected = {r.name: r for r in train + included if r.name != "stn_jax"}

    def parse(requirements: list[str]) -> dict[str, Requirement]:
        assert all(";" not in r for r in requirements), requirements  # markers resolved, not passed on
        return {Requirement(r).name: Requirement(r) for r in requirements}

    # No TensorFlow in the runtime: exactly the extra's requirements, tensorflow-cpu included.
    plain = parse(pip_requirements(_requires_dist(), tensorflow=None, accelerator=None))
    assert set(plain) == set(expected) and "tensorflow-cpu" in plain
    assert all(plain[n].specifier == expected[n].specifier and not plain[n].extras for n in plain)
    assert not {"pytest", "nbclient"} & set(plain)  # dev-only requirements are not installed in Colab

    # Colab: its `tensorflow` is kept (asked for the same range), jax keeps its accelerator plugin.
    colab = parse(pip_requirements(_requires_dist(), tensorflow="tensorflow", accelerator="cuda12"))
    assert set(colab) == set(expected) - {"tensorflow-cpu"} | {"tensorflow"}
    assert colab["tensorflow"].specifier == expected["tensorflow-cpu"].specifier
    assert colab["jax"].extras == {"cuda12"} and colab["jax"].specifier == expected["jax"].specifier
    assert all(colab[n].specifier == expected[n].specifier for n in set(colab) - {"tensorflow"})


# -- execution -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kernel_path(tmp_path_factory) -> Path:
    """A ``python3`` kernel spec that runs this interpreter, whatever else is installed."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    return root


@pytest.fixture(scope="session")
def data_dir(request) -> Path:
    """MNIST for the notebooks: ``$STN_NOTEBOOK_DATA_DIR``, else the session's one preparation (conftest.py)."""
    if value := os.environ.get("STN_NOTEBOOK_DATA_DIR"):
        return Path(value)
    return request.getfixturevalue("real_mnist")


def execute(name: str, out: Path, data: Path, kernel_path: Path, monkeypatch) -> float:
    """Runs the notebook in a fresh kernel; raises (with the failing cell's traceback) on any error."""
    monkeypatch.setenv("QUICK", "1")
    monkeypatch.setenv("STN_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("STN_DATA_DIR", str(data))
    jupyter_path = [str(kernel_path), *filter(None, os.environ.get("JUPYTER_PATH", "").split(os.pathsep))]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(jupyter_path))
    nb = _read(name)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(COLAB)}}
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors}"
    return seconds


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, data_dir, kernel_path, monkeypatch):
    seconds = execute(name, tmp_path, data_dir, kernel_path, monkeypatch)
    out = tmp_path / name
    metrics = json.loads((out / "metrics.json").read_text())
    CHECKS[name](out, metrics)
    print(f"{name}: {seconds:.0f} s with QUICK=1")


# -- what each notebook must have produced ------------------------------------------------------


def check_quickstart(out: Path, m: dict) -> None:
    for figure in ("photo", "digit", "gallery", "timeseries", "volume"):
        _png(out / f"{figure}.png")
    assert m["photo_identity_max_abs_error"] < 1e-4  # identity grid samples the photo back (float32 rounding)
    assert m["digit_roundtrip_mean_abs_error"] < 0.03  # distortion undone by the inverse transform (two blurs)
    assert set(m["gallery_transforms"]) == {"affine", "attention", "translation", "similarity", "projective", "tps"}
    assert m["timeseries_theta_error"] < 2e-3 and m["timeseries_final_loss"] < 1e-3  # registration found the warp
    # The grid zooms out 1.6× and the whole object stays in view: 1/1.6³ of its mass is left.
    assert m["volume_shape"] == [40, 40, 40, 1] and abs(m["volume_mass_ratio"] - 1.6**-3) < 0.01
    assert m["vmap_batch_shape"] == [8, 64, 64, 3] and m["grad_theta_finite_nonzero"]
    # The PyTorch comparison runs wherever torch is installed (the kernel is this interpreter), never silently not.
    if helpers.in_ci() or importlib.util.find_spec("torch") is not None:
        assert m["torch_max_abs_difference"] < 1e-4


def _learned(run_dir: Path, test_error: float, *, below: float) -> None:
    """A run that learned: its train loss fell well below ln(10) ≈ 2.30 (chance; measured 1.07-1.49 at the
    end), its validation error fell at every evaluation, and its test error is under ``below``."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if r["split"] == "train"]
    val = [r["error"] for r in records if r["split"] == "val"]
    assert train[0] > 2.2 and train[-1] < 1.8, (run_dir.name, train)
    assert len(val) >= 2 and all(b < a for a, b in itertools.pairwise(val)), (run_dir.name, val)
    assert test_error < below, (run_dir.name, test_error)


def check_train_mnist(out: Path, m: dict) -> None:
    _png(out / "curves.png")
    _png(out / "transformed.png")
    for label, config in (("ST-CNN", "mnist_rts_st_cnn_affine"), ("CNN", "mnist_rts_cnn")):
        run = m[label]
        assert run["config"] == config and run["steps"] == m["ST-CNN"]["steps"]  # trained the same way
        assert run["test_examples"] == 1000
        _learned(out / "runs" / config, run["test_error"], below=QUICK_TEST_ERROR)
    assert m["theta_shape"] == [8, 2, 3] and m["warped_shape"] == [8, 42, 42, 1]
    assert m["theta_moved_from_identity"] > 1e-3  # the localisation net trained (it starts at the identity)
    assert m["samples"] == ["step_000060.png", "step_000120.png"], m["samples"]  # inputs-vs-transformer figures


def check_accelerators(out: Path, m: dict) -> None:
    _png(out / "throughput.png")
    if m["backend"] == "cpu":
        assert m["device_count"] == 2  # QUICK splits the CPU: the data-parallel path ran on a 2-device mesh
    assert m["summary_devices"] == m["device_count"] and m["batch_size"] % m["device_count"] == 0
    assert m["images_per_s"] > 0
    (run,) = (out / "runs").iterdir()
    _learned(run, m["test_error"], below=QUICK_TEST_ERROR)


CHECKS = {"01_quickstart": check_quickstart, "02_train_mnist": check_train_mnist, "03_accelerators": check_accelerators}
