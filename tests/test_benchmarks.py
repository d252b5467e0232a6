"""benchmarks/accelerator.sh and the scripts it runs: a quick run on this CPU as the accelerator box would see it.

The accelerator box has jax, flax, optax, chex, numpy and torch only, so the scripts here run with the
training extra's packages (TensorFlow, TFDS, grain, orbax, ...) made unimportable. No figure is checked:
benchmarks are scripts, not timed tests.
"""

import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import sampler
import train_speed

# Not on the accelerator box (the `train` extra and optional peers).
ABSENT_ON_ACCELERATOR = (
    "tensorflow",
    "tensorflow_datasets",
    "grain",
    "orbax",
    "ml_collections",
    "dm_pix",
    "scipy",
    "PIL",
    "matplotlib",
    "tensorboardX",
    "array_record",
)
SCRIPTS = ("sampler", "antialias", "train_speed", "loop_speed")


def _our_implementations() -> tuple[tuple[str, ...], str | None]:
    """(explicit implementations, the one None picks on this CPU), from the library, not from the script."""
    import stn_jax
    from stn_jax import sampling

    if "implementation" not in inspect.signature(stn_jax.sample).parameters:
        return (), None
    # Not "pallas" on CPU, where its kernels run in interpret mode (too slow to time).
    impls = tuple(i for i in sampling.IMPLEMENTATIONS if i != "pallas")
    return impls, sampling.default_implementation("cpu")


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    """A PYTHONPATH entry whose ``sitecustomize`` makes ABSENT_ON_ACCELERATOR unimportable in every Python started."""
    shim = tmp_path_factory.mktemp("accelerator_box")
    (shim / "sitecustomize.py").write_text(
        textwrap.dedent(f"""\
        import sys
        for name in {ABSENT_ON_ACCELERATOR!r}:
            sys.modules[name] = None  # `import name` (and its submodules) now raises ImportError
        """)
    )
    return shim


def _env(**extra):
    return {**os.environ, **extra}


def test_the_blocking_works(blocked):
    result = subprocess.run(
        [sys.executable, "-c", "import scipy"], env=_env(PYTHONPATH=str(blocked)), capture_output=True, text=True
    )
    assert result.returncode != 0 and "import of scipy halted" in result.stderr, result.stderr


def test_benchmark_modules_import_without_the_training_extra(blocked):
    names = [n for n in SCRIPTS if (BENCHMARKS / f"{n}.py").exists()]
    code = "import sys; sys.path.insert(0, 'benchmarks'); " + "; ".join(f"import {n}" for n in names)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(PYTHONPATH=f"{blocked}:{ROOT}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def quick_run(blocked, tmp_path_factory):
    """``bash benchmarks/accelerator.sh --quick`` into a temporary OUT, as on the accelerator box."""
    out = tmp_path_factory.mktemp("accelerator_out")
    before = (ROOT / "BENCHMARKS.md").read_bytes()
    result = subprocess.run(
        ["bash", "benchmarks/accelerator.sh", "--quick"],
        cwd=ROOT,
        env=_env(OUT=str(out), PYTHONPATH=str(blocked), PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result, out, before


def _table(text: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, row cells) of the first markdown table whose header starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return cells(lines[start]), rows


def test_quick_run_succeeds_and_leaves_benchmarks_md_alone(quick_run):
    result, out, before = quick_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (ROOT / "BENCHMARKS.md").read_bytes() == before
    for name in SCRIPTS:
        assert (out / f"{name}.md").exists(), name
        assert (out / f"{name}.log").stat().st_size > 0, name


def test_quick_sampler_table_has_every_implementation(quick_run):
    _, out, _ = quick_run
    text = (out / "sampler.md").read_text()
    assert "Partial table" not in text
    header, rows = _table(text, "| workload |")
    impls, pick = _our_implementations()
    assert (impls, pick) == (sampler.implementations(), sampler.default_pick("cpu"))
    assert header[2] == (f"stn_jax default (→ {pick}) ms" if pick else "stn_jax ms")
    assert "**ratio**" in header
    for impl in impls:
        assert f"stn_jax[{impl}] ms (ratio)" in header
    assert [r[1] for r in rows] == [p for w in sampler.QUICK_WORKLOADS for p in sampler.passes_for(w, sampler.PASSES)]
    assert any(r[0].startswith("tiny volume") for r in rows)  # a 3-D workload too
    for row in rows:
        assert len(row) == len(header)
        assert re.fullmatch(r"\*\*\d+\.\d\d\*\*", row[header.index("**ratio**")]), row
        for impl in impls:  # all fit the quick workload: every one timed, with its ratio
            assert re.fullmatch(r"\d+\.\d{3} \(\d+\.\d\d\)", row[header.index(f"stn_jax[{impl}] ms (ratio)")]), row
    if impls:
        _, agreement = _table(text, "| workload | default |")
        for row in agreement:
            assert all(float(d) < 1e-4 for d in row[1:]), row


def test_quick_train_speed_and_loop_speed_tables(quick_run):
    _, out, _ = quick_run
    header, rows = _table((out / "train_speed.md").read_text(), "| model |")
    assert "**ratio**" in header and rows and rows[0][0].startswith("ST-CNN")
    assert re.fullmatch(r"\*\*\d+\.\d\d\*\*", rows[0][header.index("**ratio**")])
    # The loop's images/s against the bare step's: a bold ratio column ("**ratio**", "**loop / bare**").
    header, rows = _table((out / "loop_speed.md").read_text(), "| model |")
    ratio = [i for i, h in enumerate(header) if h.startswith("**") and ("ratio" in h or " / " in h)]
    assert ratio and rows, header
    assert all(re.fullmatch(r"\*\*\d+\.\d\d\*\*", row[ratio[0]]) for row in rows), rows


def test_quick_summary_names_backend_versions_and_times(quick_run):
    import jax

    _, out, _ = quick_run
    summary = (out / "summary.md").read_text()
    assert f"jax backend: {jax.default_backend()}" in summary
    assert "bash benchmarks/accelerator.sh --quick" in summary and "Total wall time:" in summary
    for package in ("jax", "jaxlib", "flax", "optax", "torch"):
        assert re.search(rf"\b{package} \d", summary), package
    for name in SCRIPTS:
        assert re.search(rf"\| benchmarks/{name}\.py \| 0 \| \d+\.\d \| {name}\.md \|", summary), name


def test_a_failing_script_fails_the_run_and_the_others_still_run(tmp_path):
    # A stand-in interpreter: every benchmark "runs" in no time, train_speed.py fails; the summary is real.
    fake = tmp_path / "python"
    fake.write_text(
        textwrap.dedent(f"""\
        #!/usr/bin/env bash
        case "${{1:-}}" in
          benchmarks/train_speed.py) echo "Traceback: ImportError" >&2; exit 3 ;;
          benchmarks/*.py) echo "ran $1" >> "$OUT/ran.txt"; exit 0 ;;
          *) exec {sys.executable} "$@" ;;
        esac
        """)
    )
    fake.chmod(0o755)
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", "benchmarks/accelerator.sh", "--quick"],
        cwd=ROOT,
        env=_env(OUT=str(out), PYTHON=str(fake)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (out / "ran.txt").read_text().split() == [
        "ran",
        "benchmarks/sampler.py",
        "ran",
        "benchmarks/antialias.py",
        "ran",
        "benchmarks/loop_speed.py",
    ]
    summary = (out / "summary.md").read_text()
    assert re.search(r"\| benchmarks/train_speed\.py \| 3 FAILED \|", summary)
    assert "ImportError" in (out / "train_speed.log").read_text()


def test_unknown_option_is_refused():
    result = subprocess.run(["bash", "benchmarks/accelerator.sh", "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "--fast" in result.stderr


# ---------------------------------------------------------------- pure helpers


def test_dense_budget_decision():
    budget = sampler.DENSE_BUDGET
    # batch · points · max(H·C, H + W)
    assert sampler.dense_elements(64, (32, 32, 64), (32, 32)) == 64 * 1024 * 32 * 64 == 2**27
    assert sampler.dense_elements(2, (10, 30, 1), (4, 5)) == 2 * 20 * 40  # the weight rows dominate for C = 1
    assert sampler.skip_reason("dense", 64, (32, 32, 64), (32, 32), budget=budget) is None
    assert sampler.skip_reason("dense", 8, (224, 224, 3), (224, 224), budget=budget) == "skipped (size)"
    assert sampler.skip_reason("dense", 256, (224, 224, 3), (224, 224), budget=budget) == "skipped (size)"
    limit = sampler.dense_elements(4, (8, 8, 3), (6, 6))
    assert sampler.skip_reason("dense", 4, (8, 8, 3), (6, 6), budget=limit) is None
    assert sampler.skip_reason("dense", 4, (8, 8, 3), (6, 6), budget=limit - 1) == "skipped (size)"
    assert sampler.skip_reason("dense", 1, (8, 8, 3), (6, 6), method="bicubic") == "skipped (method)"
    for impl in (None, "reference", "cpu"):
        assert sampler.skip_reason(impl, 256, (224, 224, 3), (224, 224), budget=1) is None
    # Volumes: the x axis is contracted first, leaving (D, H, C) per point.
    assert sampler.dense_elements(2, (4, 5, 6, 3), (2, 3, 4)) == 2 * 24 * 4 * 5 * 3
    assert sampler.dense_elements(1, (4, 5, 60, 1), (2, 3, 4)) == 24 * (4 + 5 + 60)
    assert sampler.skip_reason("dense", 1, (160, 192, 224, 1), (160, 192, 224), budget=budget) == "skipped (size)"
    assert sampler.skip_reason("dense", 2, (64, 64, 64, 16), (64, 64, 64), budget=budget) == "skipped (size)"


def test_volumes_are_timed_forward_and_forward_backward_only():
    assert sampler.passes_for(("v", 1, (4, 5, 6, 1), (2, 3, 4), "displacement"), sampler.PASSES) == ["fwd", "fwd+bwd"]
    assert sampler.passes_for(("i", 1, (5, 6, 1), (3, 4), "affine"), sampler.PASSES) == list(sampler.PASSES)
    assert sampler.passes_for(("v", 1, (4, 5, 6, 1), (2, 3, 4), "affine"), ["grid-bwd"]) == []


def test_volume_inputs_have_the_grid_torch_expects():
    image, grid, cot = sampler.make_inputs(2, (6, 7, 8, 2), (5, 6, 7), warp="displacement")
    assert image.shape == (2, 6, 7, 8, 2) and grid.shape == (2, 5, 6, 7, 3) and cot.shape == (2, 5, 6, 7, 2)
    # A displacement of a few voxels around the identity grid.
    import numpy as np

    import stn_jax

    offset = grid - np.asarray(stn_jax.identity_grid((5, 6, 7)))
    assert 0.005 < np.abs(offset).max() < 0.05
    image, grid, _ = sampler.make_inputs(1, (6, 7, 8, 2), (5, 6, 7), warp="affine")
    assert grid.shape == (1, 5, 6, 7, 3) and np.all(np.isfinite(grid))
    assert sampler.channels_first(5) == (0, 4, 1, 2, 3) and sampler.channels_first(4) == (0, 3, 1, 2)


def test_skipped_and_failed_implementations_render_as_cells():
    args = sampler.parse_args(["--quick", "--no-write"])
    meta = dict(
        backend="gpu",
        device="cuda",
        pick="reference",
        impls=("reference", "cpu", "dense"),
        have_pix=False,
        machine="test machine",
        load_before=0.5,
        load_after=0.7,
    )
    row = dict(
        label="image: B=8",
        which="fwd",
        torch=1e-3,
        layout="NCHW",
        times={"default": 2e-3, "reference": 2e-3},
        ratios={"default": 0.5, "reference": 0.5},
        cells={"cpu": "error (NotImplementedError)", "dense": "skipped (size)"},
        compile={"default": 1.0, "reference": 1.0},
        mc=3e-3,
        pix=None,
    )
    text = sampler.render([row], [], args, meta)
    assert "`implementation=None` picks `reference`" in text
    header, rows = _table(text, "| workload |")
    assert len(rows[0]) == len(header)
    assert rows[0][header.index("stn_jax[dense] ms (ratio)")] == "skipped (size)"
    assert rows[0][header.index("stn_jax[cpu] ms (ratio)")] == "error (NotImplementedError)"
    assert rows[0][header.index("stn_jax[reference] ms (ratio)")] == "2.000 (0.50)"
    assert rows[0][header.index("**ratio**")] == "**0.50**"


def test_accelerator_expected_before_the_backend_starts():
    expected = train_speed.accelerator_expected
    assert expected({"JAX_PLATFORMS": "cuda,cpu"}, distributions=[]) is True
    assert expected({"JAX_PLATFORMS": "cpu"}, distributions=["jax-cuda12-plugin"]) is False
    assert expected({}, distributions=["jax_cuda13_plugin", "numpy"]) is True
    assert expected({}, distributions=["libtpu"]) is True
    assert expected({}, distributions=["jax", "jaxlib", "torch"]) is False


def test_quick_defaults_and_explicit_options():
    args = train_speed.parse_args(["--quick"])
    assert (args.batch, args.sides, args.models, args.repeats) == (16, (28,), ("st_cnn_affine",), 1)
    args = train_speed.parse_args(["--batch", "8"])
    assert (args.batch, args.sides, args.models) == (8, train_speed.SIDES, train_speed.MODELS)
    assert sampler.parse_args(["--quick"]).repeats == 2 and sampler.parse_args([]).repeats == 9


def test_render_without_an_implementation_option():
    # Before `sample` takes implementation= (or on a library that never will): one column of ours.
    args = sampler.parse_args(["--quick", "--no-write"])
    meta = dict(backend="cpu", device="cpu", pick=None, impls=(), have_pix=True, machine="m", load_before=0.1)
    row = dict(
        label="tiny",
        which="fwd",
        torch=1e-3,
        layout="NCHW",
        times={"default": 1e-3},
        ratios={"default": 1.0},
        cells={},
        compile={"default": 0.1},
        mc=2e-3,
        pix=4e-3,
    )
    text = sampler.render([row], [], args, meta, partial=True)
    assert "Partial table" in text and "no `implementation` option" in text
    header, rows = _table(text, "| workload |")
    assert header[2] == "stn_jax ms" and "dm-pix ms" in header and len(rows[0]) == len(header)
    assert not any(h.startswith("stn_jax[") for h in header)


def test_quick_antialias_table_shows_the_filter_helping(quick_run):
    _, out, _ = quick_run
    text = (out / "antialias.md").read_text()
    assert "matplotlib is not installed" in text  # blocked here, as it may be on the accelerator box
    header, rows = _table(text, "| image | warp |")
    assert [r[:2] for r in rows] == [["zone plate", "zoom-out 4x, 30°"]]
    plain = float(rows[0][header.index("plain bilinear")])
    for variant in ("isotropic (probes=1)", "anisotropic (probes=2)"):
        assert float(rows[0][header.index(variant)]) >= plain + 6, (variant, rows[0])
    header, rows = _table(text, "| workload | pass |")
    assert [r[1] for r in rows] == ["fwd", "fwd+bwd"] and all(r[2].endswith("(1.0x)") for r in rows)


def _imports(path: Path) -> tuple[set[str], list[int]]:
    """(modules ``path`` imports anywhere, function bodies too; lines that touch ``sys.path``)."""
    modules, sys_path = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
        elif isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
            sys_path.append(node.lineno)
    return modules, sys_path


def test_benchmarks_import_no_circle_no_cli_internals_and_leave_sys_path_alone():
    """The scripts find ``stn_jax`` and ``train`` installed (or on PYTHONPATH) and their siblings in their own folder."""
    scripts = {path.stem: path for path in BENCHMARKS.glob("*.py")}
    siblings = {}
    for name, path in scripts.items():
        modules, sys_path = _imports(path)
        assert not sys_path, f"benchmarks/{name}.py edits sys.path (lines {sys_path})"
        assert "train.__main__" not in modules, f"benchmarks/{name}.py imports the CLI; use train.configs"
        siblings[name] = {m for m in modules if m in scripts}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(name) :], name]))
        if name not in done:
            for sibling in sorted(siblings[name]):
                visit(sibling, (*path, name))
            done.add(name)

    for name in sorted(scripts):
        visit(name, ())
    assert siblings["reproduce"] >= {"cells", "records"} and "reproduce" not in siblings["generalisation"]


def test_antialias_versions_times_the_sampler_against_its_earlier_implementations_read_from_git():
    # HEAD: a commit every clone has, even a shallow one (BENCHMARKS.md's figures name older ones).
    result = subprocess.run(
        [sys.executable, "benchmarks/antialias_versions.py", "--quick", "--commits", "HEAD"],
        cwd=ROOT,
        env=_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| tiny |")]
    assert [row.split(" | ")[1] for row in rows] == ["fwd", "fwd+bwd"]
    assert "| workload | pass | plain | HEAD | now |" in result.stdout
    assert all(row.endswith("(1.00×) |") for row in rows)  # the last column is now against itself
