"""Sphinx configuration of stn_jax's documentation.

Build: ``sphinx-build -n -W --keep-going docs docs/_build/html`` (what tests/test_docs.py runs). At
``builder-inited`` this file writes the API pages (``docs/api/``, one per public module), the gallery
(``docs/_generated/``) and copies of the pages the README links to; all are generated, never edited.
Notebooks are rendered as stored, not executed.
Intersphinx links reach the JAX ecosystem's inventories only with ``STN_DOCS_INTERSPHINX=1`` (this
machine has no network): without it, external names are ignored by the short ``nitpick_ignore_regex``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import re
import tomllib

import numpy as np

import stn_jax

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

project = "stn_jax"
author = "The stn_jax authors"
copyright = "2026, the stn_jax authors"
release = version = stn_jax.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]
exclude_patterns = ["_build", "_generated/*.md", "**.ipynb_checkpoints"]

html_theme = "sphinx_book_theme"
html_title = "stn_jax"
html_theme_options = {
    "repository_url": PYPROJECT["project"]["urls"]["Source"],
    "use_repository_button": True,
    "show_toc_level": 2,
}

# MyST and notebooks: render the notebooks as they are stored (no execution at build time).
nb_execution_mode = "off"
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# Python API.
autosummary_generate = False  # the pages are written by _write_api_pages below
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_type_aliases = {"ArrayLike": "jax.typing.ArrayLike"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # an Attributes section lists fields; it does not document them a second time

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "jax": ("https://docs.jax.dev/en/latest", None),
    "flax": ("https://flax.readthedocs.io/en/latest", None),
    "optax": ("https://optax.readthedocs.io/en/latest", None),
}
if os.environ.get("STN_DOCS_INTERSPHINX") != "1":
    intersphinx_mapping = {}

# Names of other projects (resolved by intersphinx when it is on; ignored offline), nothing of stn_jax's.
nitpicky = True
nitpick_ignore_regex = [
    ("py:.*", r"(jax|jaxlib|numpy|np|flax|nnx|nn|optax|typing|collections\.abc|argparse)(\..*)?"),
    ("py:.*", r"(Any|Callable|Sequence|Mapping|ArrayLike|Array|PyTree|ndarray)"),
]

# -- generated pages ------------------------------------------------------------------------------------

#: The public modules, in the order of the API index (tests/test_api.py holds the same list).
PUBLIC_MODULES = [
    "stn_jax",
    "stn_jax.grids",
    "stn_jax.sampling",
    "stn_jax.transforms",
    "stn_jax.nnx",
    "stn_jax.linen",
    "stn_jax.models",
    "stn_jax.optim",
    "stn_jax.demo",
]


def _defined_data(module) -> set[str]:
    """Module-level names with a ``#:`` doc comment in the module's own source."""
    from sphinx.pycode import ModuleAnalyzer

    return {name for (scope, name) in ModuleAnalyzer.for_module(module.__name__).find_attr_docs() if not scope}


def _home_of_data(name: str, value) -> str:
    """The public module that defines (documents) the constant ``value`` re-exported as ``name``."""
    for other in PUBLIC_MODULES[1:]:
        module = importlib.import_module(other)
        if getattr(module, name, None) is value and name in _defined_data(module):
            return other
    raise ValueError(f"no public module documents the constant {name!r}")


def _entry(module, name: str) -> list[str]:
    value = getattr(module, name)
    if inspect.isclass(value):
        return [f".. autoclass:: {name}", "   :members:", "   :special-members: __call__", ""]
    if callable(value):
        return [f".. autofunction:: {name}", ""]
    if name in _defined_data(module):
        return [f".. autodata:: {name}", ""]
    home = _home_of_data(name, value)
    return [f".. py:data:: {name}", f"   :value: {value!r}", "", f"   The same as :data:`{home}.{name}`.", ""]


def _api_page(name: str) -> str:
    module = importlib.import_module(name)
    names = list(module.__all__)
    routines = [n for n in names if callable(getattr(module, n))]
    lines = [name, "=" * len(name), "", f".. automodule:: {name}", "", f".. currentmodule:: {name}", ""]
    if routines:
        lines += [".. autosummary::", "", *(f"   {n}" for n in routines), ""]
    for n in names:
        lines += _entry(module, n)
    return "\n".join(lines)


def _write_if_changed(path: pathlib.Path, data: bytes) -> None:
    """Writes ``data`` unless ``path`` holds it already (an unchanged file is not read again)."""
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _write_api_pages() -> None:
    for name in PUBLIC_MODULES:
        _write_if_changed(DOCS / "api" / f"{name}.rst", _api_page(name).encode())


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((160, 160), Image.NEAREST).save(buffer, "png")
    return buffer.getvalue()


GALLERY_COLUMNS = 3  # pictures per row of the gallery


def _write_gallery() -> None:
    """One picture per transform, method and padding from :func:`stn_jax.demo.gallery`, in labelled tables."""
    from stn_jax import demo

    image = demo.checkerboard()
    out = DOCS / "_generated"
    _write_if_changed(out / "gallery" / "input.png", _png(image))
    lines = ["![The input: a checkerboard with a colour gradient](gallery/input.png)", ""]
    for vary, option in (("transform", "transform"), ("method", "method"), ("padding", "padding")):
        tiles = demo.gallery(image, vary=vary)
        lines += [f"## Every {option}", ""]
        for row in range(0, len(tiles), GALLERY_COLUMNS):  # tables as wide as the page: no sideways scrolling
            shown = tiles[row : row + GALLERY_COLUMNS]
            lines += ["| " + " | ".join(f"`{option}={label!r}`" for label, _ in shown) + " |"]
            lines += ["| " + " | ".join("---" for _ in shown) + " |"]
            cells = []
            for label, tile in shown:
                _write_if_changed(out / "gallery" / f"{vary}_{label}.png", _png(tile))
                cells.append(f"![{option}={label}](_generated/gallery/{vary}_{label}.png)")
            lines += ["| " + " | ".join(cells) + " |", ""]
    lines[0] = lines[0].replace("(gallery/", "(_generated/gallery/")
    _write_if_changed(out / "gallery.md", "\n".join(lines).encode())


def _copy_linked_pages() -> None:
    """Copies under docs/ of the pages that README.md and BENCHMARKS.md link to (the notebooks, the H200
    tables), at the same relative paths, so that their links reach pages of the site."""
    for notebook in sorted(ROOT.glob("colab/*.ipynb")):
        _write_if_changed(DOCS / notebook.relative_to(ROOT), notebook.read_bytes())
    for table in sorted(ROOT.glob("benchmarks/results/h200/*.md")):  # sections without a title of their own
        title = f"# `{table.relative_to(ROOT)}`\n\n"
        _write_if_changed(DOCS / table.relative_to(ROOT), title.encode() + table.read_bytes())


def _readable_signature(app, what, name, obj, options, signature, return_annotation):
    """Signatures Sphinx can parse and link: a default shown as ``<... object>`` (Linen's ``parent``)
    becomes ``...``; an alias of ``autodoc_type_aliases`` inside a union (``ArrayLike | tuple``), which
    autodoc shows as ``TypeAliasForwardRef('name')``, becomes its name."""
    if signature:
        signature = re.sub(r"<[^<>]* object( at 0x[0-9a-f]+)?>", "...", signature)
        signature = re.sub(r"TypeAliasForwardRef\('([\w.]+)'\)", r"\1", signature)
    return signature, return_annotation


def setup(app):
    _write_api_pages()
    _write_gallery()
    _copy_linked_pages()
    app.connect("autodoc-process-signature", _readable_signature)
