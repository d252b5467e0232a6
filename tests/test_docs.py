"""The documentation site builds warning-free and documents every public name; the public API type-checks.

Needs the `docs` extra (Sphinx) and pyright from the `dev` extra: the README's test command installs both.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zlib
from pathlib import Path

import pytest

from helpers import require

require("sphinx")
require("myst_nb")

import stn_jax
from test_api import PUBLIC_SURFACE

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILD_SECONDS = 60


def build_docs(out: Path) -> subprocess.CompletedProcess:
    """The README's docs build command, into ``out``: every warning and unresolved reference fails it."""
    command = [sys.executable, "-m", "sphinx", "-n", "-W", "--keep-going", "-q", "-b", "html", "docs", str(out)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    start = time.perf_counter()
    done = build_docs(out)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"sphinx-build failed:\n{done.stdout}\n{done.stderr}"
    return out, seconds


def read_inventory(path: Path) -> dict[str, set[str]]:
    """``{"py:function": {"stn_jax.grid", ...}, ...}`` from a Sphinx ``objects.inv`` (format version 2)."""
    data = path.read_bytes()
    header = data.split(b"\n", 4)
    assert header[0] == b"# Sphinx inventory version 2", header[0]
    entries: dict[str, set[str]] = {}
    for line in zlib.decompress(header[4]).decode().splitlines():
        name, role = re.match(r"(.+?)\s+(\S+:\S+)\s+-?\d+\s", line).groups()
        entries.setdefault(role, set()).add(name)
    return entries


def test_the_site_builds_without_a_warning_within_the_time_limit(site):
    out, seconds = site
    assert (out / "index.html").is_file()
    assert seconds < BUILD_SECONDS, f"the docs build took {seconds:.1f} s"


def test_every_public_name_of_every_public_module_is_documented(site):
    out, _ = site
    inventory = read_inventory(out / "objects.inv")
    documented = set().union(*(names for role, names in inventory.items() if role.startswith("py:")))
    assert set(PUBLIC_SURFACE) <= inventory["py:module"]
    missing = [f"{module}.{name}" for module, names in PUBLIC_SURFACE.items() for name in names]
    missing = [name for name in missing if name not in documented]
    assert not missing, f"not in the API reference: {missing}"
    # Nothing private is documented as API.
    private = sorted(
        n for n in documented if any(part.startswith("_") and not part.startswith("__") for part in n.split("."))
    )
    assert not private, private


def test_the_readme_is_the_landing_page_and_its_links_reach_pages(site):
    out, _ = site
    index = (out / "index.html").read_text()
    assert "Spatial Transformer Networks" in index
    for target in ("colab/01_quickstart.html", "colab/02_train_mnist.html", "colab/03_accelerators.html"):
        assert f'href="{target}' in index, target
        assert (out / target).is_file(), target
    for page in ("BENCHMARKS", "RESULTS"):
        assert f'href="{page}.html' in index, page
        assert "<h1>" in (out / f"{page}.html").read_text(), page
    for page in ("getting_started", "gallery", "changelog", "api/stn_jax.sampling"):
        assert (out / f"{page}.html").is_file(), page


def test_the_gallery_shows_every_transform_method_and_padding_labelled(site):
    out, _ = site
    gallery = (out / "gallery.html").read_text()
    for option, names in (
        ("transform", stn_jax.TRANSFORMS),
        ("method", stn_jax.METHODS),
        ("padding", stn_jax.PADDINGS),
    ):
        for name in names:
            label = f"{option}={name}"
            image = re.search(rf'<img alt="{label}" src="(_images/[^"]+\.png)"', gallery)
            assert image, label
            assert (out / image.group(1)).stat().st_size > 500, label
            assert f"{option}=&#39;{name}&#39;" in gallery or f"{option}='{name}'" in gallery, label


def test_the_readme_says_how_to_build_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[docs]" && sphinx-build -n -W --keep-going docs docs/_build/html' in readme


def test_the_repository_url_is_the_same_everywhere():
    source = PYPROJECT["project"]["urls"]["Source"]
    for notebook in sorted((ROOT / "colab").glob("*.ipynb")):
        found = re.findall(r'REPO = \\"git\+(\S+?)\\"', notebook.read_text())
        assert found == [source], notebook.name
    assert f'repository-code: "{source}"' in (ROOT / "CITATION.cff").read_text()
    assert all(url.startswith(source) for name, url in PYPROJECT["project"]["urls"].items() if name != "Documentation")


# -- types --------------------------------------------------------------------------------------------------


def pyright(*args: str, cwd: Path, env: dict | None = None) -> dict:
    command = [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable, *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().startswith("{"), done.stdout + done.stderr
    return json.loads(done.stdout)


def test_pyright_finds_no_error_in_stn_jax():
    report = pyright(cwd=ROOT)  # the configuration in pyproject.toml: basic mode over stn_jax
    errors = [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]
    assert report["summary"]["filesAnalyzed"] >= 15
    assert not errors, "\n".join(errors)


def test_the_exported_names_are_typed(tmp_path):
    # pyright cannot follow the editable install: it checks a plain copy of the package. Unknown types that
    # come from other packages (JAX's, Flax's) are left out of the score (--ignoreexternal): ours are counted.
    shutil.copytree(ROOT / "stn_jax", tmp_path / "site" / "stn_jax", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    report = pyright("--verifytypes", "stn_jax", "--ignoreexternal", cwd=tmp_path, env=env)
    completeness = report["typeCompleteness"]
    assert completeness["pyTypedPath"].endswith("py.typed")
    assert {m["name"] for m in completeness["modules"]} == set(PUBLIC_SURFACE)
    assert completeness["exportedSymbolCounts"]["withKnownType"] >= 100
    unknown = [s["name"] for s in completeness["symbols"] if s["isExported"] and not s["isTypeKnown"]]
    score = completeness["completenessScore"]
    assert score >= 0.95, f"{score:.1%} of the exported names fully typed; not fully known: {unknown}"
