"""Benchmark of ``stn_jax.sample`` against PyTorch's ``grid_sample`` and two JAX peers.

Every implementation runs in this one process on the same inputs (bilinear, trilinear
on volumes; zero padding, ``align_corners=False``, float32), on one device: JAX's
default backend, and
PyTorch on ``cuda`` when that backend is a GPU and PyTorch sees CUDA (else on the CPU
with 2 threads):

* ``stn_jax.sample`` vmapped over the batch and jitted: the default
  (``implementation=None``, the column the ratio is taken of) and, once ``sample``
  takes ``implementation=``, each of ``stn_jax.sampling.IMPLEMENTATIONS`` as its own
  column ("dense" is skipped where its largest intermediate, batch × points ×
  max(H·C, H + W) elements, exceeds ``--dense-budget``);
* ``torch.nn.functional.grid_sample``, NCHW and channels_last (the faster layout is
  the one compared);
* ``jax.scipy.ndimage.map_coordinates`` (order 1, constant 0) vmapped over channels
  and batch;
* dm-pix's ``flat_nd_linear_interpolate_constant`` vmapped likewise, if installed
  (it clamps differently at the border; it is here for speed only).

Passes: ``fwd`` (output only), ``fwd+bwd`` (output and the gradients w.r.t. image and
grid for a fixed random cotangent) and ``grid-bwd`` (output and the gradient w.r.t.
the grid only, the paper's setting where the image needs no gradient).

Each figure is the median over ``--repeats`` rounds after warm-up; in each round
every implementation of one workload and pass runs once, interleaved, so a load
change hits all of them alike. Every call is synchronised with its device
(``jax.block_until_ready``; ``torch.cuda.synchronize()`` on CUDA). JAX compile time
(lower + compile) is reported separately. Ratio = torch time / stn_jax time (> 1
means stn_jax is faster). The forward outputs are also compared with torch's.

Run: ``PYTHONPATH=. python benchmarks/sampler.py`` (``--no-write`` to only print,
``--out DIR`` to write ``DIR/sampler.md`` instead of BENCHMARKS.md, ``--quick`` for
tiny workloads). By default the table is written into BENCHMARKS.md between the
markers below. On a GPU one more workload (a batch of 256 ImageNet-sized images) is
timed.

Workloads: 2-D images warped by random affine θ (rotation, scale, shift), and two 3-D
ones: a 160×192×224 one-channel volume warped by a smooth dense displacement field
(image registration: identity grid plus a displacement of a few voxels), and a batch
of two 16-channel 64³ feature volumes warped by random 3-D affine θ.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

# This process shares the accelerator between JAX and PyTorch: no JAX preallocation.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np

import report
import stn_jax
from stn_jax import sampling

# (name, batch, (H, W, C) or (D, H, W, C) in, (Ho, Wo) or (Do, Ho, Wo) out, warp): warp "affine" is a
# random θ per example, "displacement" the identity grid plus a smooth random displacement field.
WORKLOADS = [
    ("MNIST", 256, (28, 28, 1), (28, 28), "affine"),
    ("cluttered MNIST", 256, (60, 60, 1), (30, 30), "affine"),
    ("feature map", 64, (32, 32, 64), (32, 32), "affine"),
    ("image", 8, (224, 224, 3), (224, 224), "affine"),
    ("registration", 1, (160, 192, 224, 1), (160, 192, 224), "displacement"),
    ("feature volume", 2, (64, 64, 64, 16), (64, 64, 64), "affine"),
]
# Only on an accelerator: too big for the 2-core CPU.
ACCELERATOR_WORKLOADS = [
    ("image batch", 256, (224, 224, 3), (224, 224), "affine"),
]
# --quick: a smoke run, seconds on a CPU (mostly compile time).
QUICK_WORKLOADS = [
    ("tiny", 4, (8, 8, 3), (6, 6), "affine"),
    ("tiny volume", 2, (6, 7, 8, 2), (5, 6, 7), "displacement"),
]
PASSES = ("fwd", "fwd+bwd", "grid-bwd")
# The volumes are timed forward and forward+backward only (accelerator.sh's time budget).
VOLUME_PASSES = ("fwd", "fwd+bwd")
DENSE_BUDGET = 2**28  # elements of the dense implementation's largest intermediate
DEFAULT = "default"  # our column for implementation=None
BEGIN = "<!-- BEGIN benchmarks/sampler.py (generated, do not edit by hand) -->"
NAME = "sampler.md"  # the table's file under --out
END = "<!-- END benchmarks/sampler.py -->"


# ---------------------------------------------------------------- which implementations


def implementations() -> tuple[str, ...]:
    """The explicit ``implementation=`` values of ``stn_jax.sample`` (none while it has no such option)."""
    if "implementation" not in inspect.signature(stn_jax.sample).parameters:
        return ()
    impls = tuple(getattr(sampling, "IMPLEMENTATIONS", ()))
    # "pallas" runs its kernels in interpret mode on CPU: exact, far too slow to time.
    return tuple(i for i in impls if i != "pallas" or jax.default_backend() != "cpu")


def default_pick(platform_name: str) -> str | None:
    """Which implementation ``implementation=None`` picks on ``platform_name`` (None: not known)."""
    pick = getattr(sampling, "default_implementation", None)
    if pick is None or "implementation" not in inspect.signature(stn_jax.sample).parameters:
        return None
    return pick(platform_name)


def dense_elements(batch: int, in_shape, out_shape) -> int:
    """Elements of the largest intermediate of the dense (matmul) sampler on a batch.

    Per output point it builds a weight row per axis (H and W long; D, H, W in 3-D) and
    contracts the x axis first, leaving an (H, C) row ((D, H, C) in 3-D):
    batch · points · max(H·C, H + W), resp. batch · points · max(D·H·C, D + H + W).
    """
    *spatial, channels = in_shape
    return batch * math.prod(out_shape) * max(math.prod(spatial[:-1]) * channels, sum(spatial))


def passes_for(workload, passes) -> list[str]:
    """The passes of ``passes`` timed on ``workload``: all on images, VOLUME_PASSES on volumes."""
    out_shape = workload[3]
    return [p for p in passes if len(out_shape) < 3 or p in VOLUME_PASSES]


def skip_reason(
    impl: str | None, batch: int, in_shape, out_shape, *, method: str = "bilinear", budget: int = DENSE_BUDGET
) -> str | None:
    """Why ``impl`` is not timed on this case (a table cell), or None to time it."""
    if impl != "dense":
        return None
    if method != "bilinear":
        return "skipped (method)"
    if dense_elements(batch, in_shape, out_shape) > budget:
        return "skipped (size)"
    return None


# ---------------------------------------------------------------- inputs


def make_inputs(batch, in_shape, out_shape, seed=0, warp="affine"):
    """Random images (or volumes), their grids and a cotangent; some points fall outside.

    ``warp="affine"``: a random θ per example (rotation about the last axis, scale, shift).
    ``warp="displacement"``: the identity grid plus a smooth random displacement field (a
    few low-frequency waves per axis, up to about 0.04 in normalised units: 3-4 voxels of a
    160-224 voxel axis), as in image registration.
    """
    rng = np.random.default_rng(seed)
    n = len(out_shape)
    image = rng.standard_normal((batch, *in_shape), dtype=np.float32)
    cot = rng.standard_normal((batch, *out_shape, in_shape[-1]), dtype=np.float32)
    if warp == "displacement":
        identity = np.asarray(stn_jax.identity_grid(out_shape))
        axes = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in out_shape], indexing="ij")
        grid = np.empty((batch, *out_shape, n), np.float32)
        for b in range(batch):
            field = np.zeros((*out_shape, n), np.float32)
            for d in range(n):
                for _ in range(3):
                    k = rng.uniform(0.5, 2.0, n) * np.pi
                    phase = rng.uniform(0, 2 * np.pi)
                    field[..., d] += 0.013 * np.sin(sum(k_i * a for k_i, a in zip(k, axes)) + phase)
            grid[b] = identity + field
        return image, grid, cot
    angle = rng.uniform(-0.5, 0.5, batch)
    scale = rng.uniform(0.8, 1.2, batch)
    shift = rng.uniform(-0.2, 0.2, (batch, n))
    theta = np.zeros((batch, n, n + 1), np.float32)
    for d in range(n):
        theta[:, d, d] = scale
    theta[:, 0, 0] = theta[:, 1, 1] = scale * np.cos(angle)
    theta[:, 0, 1] = -scale * np.sin(angle)
    theta[:, 1, 0] = scale * np.sin(angle)
    theta[:, :, n] = shift
    grid = np.array(jax.vmap(lambda t: stn_jax.affine_grid(t, out_shape))(theta))
    return image, grid, cot


# ---------------------------------------------------------------- JAX implementations


def stn_fn(impl: str | None):
    """Batched ``stn_jax.sample`` with ``implementation=impl`` (None: the argument is not passed)."""
    kw = {} if impl is None else {"implementation": impl}

    def fn(image, grid):
        return jax.vmap(lambda u, g: stn_jax.sample(u, g, **kw))(image, grid)

    return fn


def _pixel_coords(grid, spatial):
    """align_corners=False unnormalisation, in image-axis order ((z,) y, x) for map_coordinates / dm-pix."""
    sizes = spatial[::-1]  # grid order: x, y(, z)
    return [((grid[..., d] + 1) * sizes[d] - 1) / 2 for d in range(len(sizes))][::-1]


def _map_coordinates(image, grid):
    def one(u, g):
        coords = _pixel_coords(g, u.shape[:-1])
        chan = lambda c: jax.scipy.ndimage.map_coordinates(c, coords, order=1, mode="constant", cval=0.0)
        return jax.vmap(chan, in_axes=-1, out_axes=-1)(u)

    return jax.vmap(one)(image, grid)


def _dm_pix(image, grid):
    import dm_pix

    def one(u, g):
        coords = jnp.stack(_pixel_coords(g, u.shape[:-1]))
        chan = lambda c: dm_pix.flat_nd_linear_interpolate_constant(c, coords, cval=0.0)
        return jax.vmap(chan, in_axes=-1, out_axes=-1)(u)

    return jax.vmap(one)(image, grid)


def jax_pass(fn, which):
    if which == "fwd":
        return fn
    if which == "fwd+bwd":

        def both(image, grid, cot):
            out, vjp = jax.vjp(fn, image, grid)
            return out, vjp(cot)

        return both

    def grid_only(image, grid, cot):
        out, vjp = jax.vjp(lambda g: fn(image, g), grid)
        return out, vjp(cot)

    return grid_only


def compile_jax(fn, which, image, grid, cot):
    """Returns (call, compile seconds); ``call()`` returns once the device is done."""
    args = (image, grid) if which == "fwd" else (image, grid, cot)
    args = tuple(jax.device_put(a) for a in args)
    start = time.perf_counter()
    compiled = jax.jit(jax_pass(fn, which)).lower(*args).compile()
    seconds = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(*args))), seconds


# ---------------------------------------------------------------- PyTorch


def torch_device(torch) -> str:
    """``"cuda"`` when JAX runs on a GPU and PyTorch sees CUDA, else ``"cpu"``."""
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def channels_first(ndim: int) -> tuple[int, ...]:
    """The axes that take a channels-last batch (N, *spatial, C) to PyTorch's (N, C, *spatial)."""
    return (0, ndim - 1, *range(1, ndim - 1))


def torch_call(torch, which, image, grid, cot, channels_last, device="cpu"):
    """``run()`` of one pass of ``grid_sample`` on ``device``; returns once the device is done."""
    F = torch.nn.functional
    first = channels_first(image.ndim)
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(first))).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if image.ndim == 4 else torch.channels_last_3d)
    g = torch.from_numpy(grid).to(device)
    c = torch.from_numpy(np.ascontiguousarray(cot.transpose(first))).to(device)
    kw = dict(mode="bilinear", padding_mode="zeros", align_corners=False)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if which == "fwd":

        def run():
            with torch.no_grad():
                out = F.grid_sample(x, g, **kw)
            sync()
            return out

        return run
    x = x.detach().requires_grad_(which == "fwd+bwd")
    g = g.detach().requires_grad_(True)
    wrt = (x, g) if which == "fwd+bwd" else (g,)

    def run():
        out = F.grid_sample(x, g, **kw)
        grads = torch.autograd.grad(out, wrt, c)
        sync()
        return out, grads

    return run


# ---------------------------------------------------------------- timing


def calibrate(run, target=0.05):
    """Number of calls that take about ``target`` seconds (at least 1)."""
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    return max(1, int(target / max(once, 1e-6)))


def time_interleaved(runs: dict, repeats: int, target: float = 0.05) -> dict:
    """Median seconds per call of each run, timed round-robin (each ``run`` synchronises itself)."""
    for run in runs.values():  # warm-up
        run()
        run()
    numbers = {k: calibrate(r, target) for k, r in runs.items()}
    samples = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            start = time.perf_counter()
            for _ in range(numbers[k]):
                run()
            samples[k].append((time.perf_counter() - start) / numbers[k])
    return {k: statistics.median(v) for k, v in samples.items()}


def machine(torch, device: str) -> str:
    versions = [
        f"Python {platform.python_version()}",
        f"jax {jax.__version__}",
        f"torch {torch.__version__}",
        f"numpy {np.__version__}",
    ]
    try:
        import dm_pix

        versions.append(f"dm-pix {dm_pix.__version__}")
    except ImportError:
        pass
    devices = jax.devices()
    where = f"jax backend `{jax.default_backend()}` ({len(devices)}× {devices[0].device_kind})"
    if device == "cuda":
        where += f", torch on cuda ({torch.cuda.get_device_name()})"
    else:
        where += ", torch on the CPU (2 threads)"
    return f"{report.cpu_name()}, {platform.system()} {platform.machine()}; {where}; " + ", ".join(versions)


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="rounds per figure (default 9; 2 with --quick)")
    parser.add_argument("--workloads", default="", help="comma-separated workload indices (default: all)")
    parser.add_argument("--passes", default=",".join(PASSES))
    parser.add_argument("--quick", action="store_true", help="tiny workloads, 2 rounds: a smoke run")
    parser.add_argument(
        "--dense-budget",
        type=int,
        default=DENSE_BUDGET,
        help="largest intermediate (elements) the dense implementation may build",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; write no file")
    parser.add_argument("--out", default=None, help="write the table as OUT/sampler.md instead of BENCHMARKS.md")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 9
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def workloads_for(args, backend: str) -> list:
    if args.quick:
        available = QUICK_WORKLOADS
    else:
        available = WORKLOADS + (ACCELERATOR_WORKLOADS if backend != "cpu" else [])
    return [available[int(i)] for i in args.workloads.split(",")] if args.workloads else list(available)


def main(argv=None):
    args = parse_args(argv)

    import torch

    backend = jax.default_backend()
    device = torch_device(torch)
    if device == "cpu":
        torch.set_num_threads(2)
    try:
        import dm_pix  # noqa: F401

        have_pix = True
    except ImportError:
        have_pix = False

    impls = implementations()
    ours = [DEFAULT, *impls]
    pick = default_pick(backend)
    target = 0.005 if args.quick else 0.05
    passes = [p for p in args.passes.split(",") if p]
    print(
        f"jax backend {backend} {jax.devices()}, torch on {device}; implementation=None picks "
        f"{pick or 'n/a'}; explicit implementations {list(impls) or 'n/a'}",
        flush=True,
    )
    meta = dict(
        backend=backend,
        device=device,
        pick=pick,
        impls=impls,
        have_pix=have_pix,
        machine=machine(torch, device),
        load_before=os.getloadavg()[0],
    )
    rows, agreement, failures = [], [], []
    for workload in workloads_for(args, backend):
        name, batch, in_shape, out_shape, warp = workload
        image, grid, cot = make_inputs(batch, in_shape, out_shape, warp=warp)
        label = f"{name}: B={batch} {'×'.join(map(str, in_shape))}→{'×'.join(map(str, out_shape))}"
        for which in passes_for(workload, passes):
            runs, compile_s, cells = {}, {}, {}
            for impl in ours:
                reason = skip_reason(
                    None if impl == DEFAULT else impl, batch, in_shape, out_shape, budget=args.dense_budget
                )
                if reason:
                    cells[impl] = reason
                    continue
                try:
                    run, compile_s[impl] = compile_jax(
                        stn_fn(None if impl == DEFAULT else impl), which, image, grid, cot
                    )
                    run()
                    runs[impl] = run
                except Exception as e:
                    if isinstance(e, ValueError) and "implementation" in str(e):
                        # `sample` refuses an implementation this case or this JAX cannot run.
                        print(f"{label} {which}: implementation={impl!r} unavailable: {e}", flush=True)
                        cells[impl] = "unavailable"
                        continue
                    traceback.print_exc()
                    cells[impl] = f"error ({type(e).__name__})"
                    failures.append(f"{label} {which} {impl}: {type(e).__name__}: {e}")
            runs["torch NCHW"] = torch_call(torch, which, image, grid, cot, False, device)
            runs["torch channels_last"] = torch_call(torch, which, image, grid, cot, True, device)
            runs["map_coordinates"], compile_s["map_coordinates"] = compile_jax(
                _map_coordinates, which, image, grid, cot
            )
            if have_pix:
                runs["dm-pix"], compile_s["dm-pix"] = compile_jax(_dm_pix, which, image, grid, cot)
            if which == "fwd":
                agreement.append((label, fwd_agreement(runs, ours, cells)))
            med = time_interleaved(runs, args.repeats, target)
            layout = "NCHW" if med["torch NCHW"] <= med["torch channels_last"] else "channels_last"
            t_torch = med[f"torch {layout}"]
            row = dict(
                label=label,
                which=which,
                torch=t_torch,
                layout=layout,
                times={},
                ratios={},
                cells=cells,
                compile=compile_s,
                mc=med["map_coordinates"],
                pix=med.get("dm-pix"),
            )
            for impl in ours:
                if impl in med:
                    row["times"][impl] = med[impl]
                    row["ratios"][impl] = t_torch / med[impl]
            rows.append(row)
            print(progress_line(row, ours, have_pix), flush=True)
            if args.out and not args.no_write:
                write_out(args, render(rows, agreement, args, meta, partial=True))
    meta["load_after"] = os.getloadavg()[0]
    table = render(rows, agreement, args, meta)
    print()
    print(table)
    if not args.no_write:
        path = report.write_table(table, out=args.out, name=NAME, output=args.output, begin=BEGIN, end=END)
        print(f"wrote {path}")
    if failures:
        print(f"{len(failures)} of our implementations failed:", *failures, sep="\n  ", file=sys.stderr)
        sys.exit(1)


def fwd_agreement(runs, ours, cells) -> dict:
    """Max |ours - torch| of the forward outputs, per implementation (cells as text)."""
    reference = runs["torch NCHW"]().detach().cpu().numpy()
    reference = reference.transpose(np.argsort(channels_first(reference.ndim)))
    result = {}
    for impl in ours:
        if impl in runs:
            result[impl] = f"{float(np.max(np.abs(np.asarray(runs[impl]()) - reference))):.1e}"
        else:
            result[impl] = cells.get(impl, "—")
    return result


def progress_line(row, ours, have_pix) -> str:
    parts = [f"{row['label']:45s} {row['which']:9s} torch {1e3 * row['torch']:8.3f} ms ({row['layout']:13s})"]
    for impl in ours:
        if impl in row["times"]:
            parts.append(
                f"{impl} {1e3 * row['times'][impl]:8.3f} ms ratio {row['ratios'][impl]:5.2f} "
                f"(compile {row['compile'][impl]:.2f} s)"
            )
        else:
            parts.append(f"{impl} {row['cells'][impl]}")
    parts.append(f"map_coordinates {1e3 * row['mc']:8.3f} ms")
    if have_pix:
        parts.append(f"dm-pix {1e3 * row['pix']:8.3f} ms")
    return "  ".join(parts)


def write_out(args, table: str) -> Path:
    return report.write_table(table, out=args.out, name=NAME, output=args.output, begin=BEGIN, end=END)


def header_of(impl: str, pick: str | None) -> str:
    if impl == DEFAULT:
        return f"stn_jax default (→ {pick}) ms" if pick else "stn_jax ms"
    return f"stn_jax[{impl}] ms (ratio)"


def render(rows, agreement, args, meta, *, partial=False) -> str:
    ours = [DEFAULT, *meta["impls"]]
    have_pix = meta["have_pix"]
    cmd = "PYTHONPATH=. python benchmarks/sampler.py" + (f" {' '.join(args.argv)}" if args.argv else "")
    if meta["pick"]:
        picks = (
            f"On this backend (`{meta['backend']}`) `implementation=None` picks `{meta['pick']}`; "
            f"every implementation (`stn_jax.sampling.IMPLEMENTATIONS` = {', '.join(meta['impls'])}) is "
            "also timed on its own: ms (ratio)."
        )
    else:
        picks = "`stn_jax.sample` has no `implementation` option here: one implementation."
    torch_where = "torch on cuda" if meta["device"] == "cuda" else "torch with 2 threads"
    load_after = meta.get("load_after")
    lines = [
        "## Sampler: `stn_jax.sample` vs `torch.nn.functional.grid_sample`",
        "",
    ]
    if partial:
        lines += ["**Partial table: the run was still going (or was interrupted) when this was written.**", ""]
    lines += [
        f"Command: `{cmd}`  ",
        f"Machine: {meta['machine']}  ",
        f"Load average (1 min) before/after: {meta['load_before']:.2f} / "
        + (f"{load_after:.2f}" if load_after is not None else "—")
        + f"; medians of {args.repeats} interleaved rounds after warm-up, every call synchronised with the device; "
        "bilinear (trilinear on volumes), zeros, align_corners=False, float32; "
        f"{torch_where}, faster of NCHW and channels_last (NCDHW and channels_last_3d on volumes).",
        "",
        "Ratio = torch / stn_jax (above 1: stn_jax is faster). `fwd+bwd`: gradients w.r.t. image and grid; "
        "`grid-bwd`: gradient w.r.t. the grid only. Compile = JAX lower + compile of the default stn_jax step. "
        + picks
        + f" `dense` is skipped where its largest intermediate would exceed {args.dense_budget} elements.",
        "",
        "| workload | pass | "
        + " | ".join(
            [header_of(DEFAULT, meta["pick"]), "torch ms (layout)", "**ratio**"]
            + [header_of(i, meta["pick"]) for i in meta["impls"]]
            + ["map_coordinates ms"]
            + (["dm-pix ms"] if have_pix else [])
            + ["stn_jax compile s"]
        )
        + " |",
        "| --- | --- | " + " | ".join(["---:"] * (5 + len(meta["impls"]) + have_pix)) + " |",
    ]

    def ms(r, impl, with_ratio):
        if impl not in r["times"]:
            return r["cells"][impl]
        text = f"{1e3 * r['times'][impl]:.3f}"
        return f"{text} ({r['ratios'][impl]:.2f})" if with_ratio else text

    for r in rows:
        ratio = f"**{r['ratios'][DEFAULT]:.2f}**" if DEFAULT in r["ratios"] else "—"
        compile_s = f"{r['compile'][DEFAULT]:.2f}" if DEFAULT in r["times"] else "—"
        cells = (
            [ms(r, DEFAULT, False), f"{1e3 * r['torch']:.3f} ({r['layout']})", ratio]
            + [ms(r, i, True) for i in meta["impls"]]
            + [f"{1e3 * r['mc']:.3f}"]
            + ([f"{1e3 * r['pix']:.3f}"] if have_pix else [])
            + [compile_s]
        )
        lines.append(f"| {r['label']} | {r['which']} | " + " | ".join(cells) + " |")
    if agreement:
        lines += [
            "",
            "Forward outputs vs torch's (max absolute difference):",
            "",
            "| workload | " + " | ".join("default" if i == DEFAULT else i for i in ours) + " |",
            "| --- | " + " | ".join(["---:"] * len(ours)) + " |",
        ]
        for label, diffs in agreement:
            lines.append(f"| {label} | " + " | ".join(diffs[i] for i in ours) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
