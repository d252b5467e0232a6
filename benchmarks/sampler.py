"""Benchmark of ``stn_jax.sample`` against PyTorch's ``grid_sample`` and two JAX peers.

Every implementation runs in this one process on the same inputs (bilinear, zero
padding, ``align_corners=False``, float32):

* ``stn_jax.sample`` vmapped over the batch and jitted;
* ``torch.nn.functional.grid_sample`` with 2 threads, NCHW and channels_last (the
  faster layout is the one compared);
* ``jax.scipy.ndimage.map_coordinates`` (order 1, constant 0) vmapped over channels
  and batch;
* dm-pix's ``flat_nd_linear_interpolate_constant`` vmapped likewise, if installed
  (it clamps differently at the border; it is here for speed only).

Passes: ``fwd`` (output only), ``fwd+bwd`` (output and the gradients w.r.t. image and
grid for a fixed random cotangent) and ``grid-bwd`` (output and the gradient w.r.t.
the grid only, the paper's setting where the image needs no gradient).

Each figure is the median over ``--repeats`` rounds after warm-up; in each round
every implementation of one workload and pass runs once, interleaved, so a load
change hits all of them alike. JAX compile time (lower + compile) is reported
separately. Ratio = torch time / stn_jax time (> 1 means stn_jax is faster).

Run: ``PYTHONPATH=. python benchmarks/sampler.py`` (``--no-write`` to only print).
The table is written into BENCHMARKS.md between the markers below.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import report
import stn_jax

# (name, batch, (H, W, C) in, (Ho, Wo) out)
WORKLOADS = [
    ("MNIST", 256, (28, 28, 1), (28, 28)),
    ("cluttered MNIST", 256, (60, 60, 1), (30, 30)),
    ("feature map", 64, (32, 32, 64), (32, 32)),
    ("image", 8, (224, 224, 3), (224, 224)),
]
PASSES = ("fwd", "fwd+bwd", "grid-bwd")
BEGIN = "<!-- BEGIN benchmarks/sampler.py (generated, do not edit by hand) -->"
END = "<!-- END benchmarks/sampler.py -->"


def make_inputs(batch, in_shape, out_shape, seed=0):
    """Random images and grids from random affine θ (rotation, scale, shift), some points outside."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((batch, *in_shape), dtype=np.float32)
    angle = rng.uniform(-0.5, 0.5, batch)
    scale = rng.uniform(0.8, 1.2, batch)
    shift = rng.uniform(-0.2, 0.2, (batch, 2))
    theta = np.zeros((batch, 2, 3), np.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = scale * np.cos(angle)
    theta[:, 0, 1] = -scale * np.sin(angle)
    theta[:, 1, 0] = scale * np.sin(angle)
    theta[:, :, 2] = shift
    grid = np.array(jax.vmap(lambda t: stn_jax.affine_grid(t, out_shape))(theta))
    cot = rng.standard_normal((batch, *out_shape, in_shape[-1]), dtype=np.float32)
    return image, grid, cot


# ---------------------------------------------------------------- JAX implementations


def _stn(image, grid):
    return jax.vmap(lambda u, g: stn_jax.sample(u, g))(image, grid)


def _pixel_coords(grid, h, w):
    # align_corners=False unnormalisation, as (y, x) for map_coordinates / dm-pix.
    x = ((grid[..., 0] + 1) * w - 1) / 2
    y = ((grid[..., 1] + 1) * h - 1) / 2
    return y, x


def _map_coordinates(image, grid):
    def one(u, g):
        y, x = _pixel_coords(g, u.shape[0], u.shape[1])
        chan = lambda c: jax.scipy.ndimage.map_coordinates(c, [y, x], order=1, mode="constant", cval=0.0)
        return jax.vmap(chan, in_axes=-1, out_axes=-1)(u)

    return jax.vmap(one)(image, grid)


def _dm_pix(image, grid):
    import dm_pix

    def one(u, g):
        y, x = _pixel_coords(g, u.shape[0], u.shape[1])
        coords = jnp.stack([y, x])
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
    """Returns (call, compile seconds)."""
    args = (image, grid) if which == "fwd" else (image, grid, cot)
    args = tuple(jax.device_put(a) for a in args)
    start = time.perf_counter()
    compiled = jax.jit(jax_pass(fn, which)).lower(*args).compile()
    seconds = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(*args))), seconds


# ---------------------------------------------------------------- PyTorch


def torch_call(torch, which, image, grid, cot, channels_last):
    F = torch.nn.functional
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.from_numpy(grid)
    c = torch.from_numpy(np.ascontiguousarray(cot.transpose(0, 3, 1, 2)))
    kw = dict(mode="bilinear", padding_mode="zeros", align_corners=False)
    if which == "fwd":

        def run():
            with torch.no_grad():
                return F.grid_sample(x, g, **kw)

        return run
    x = x.detach().requires_grad_(which == "fwd+bwd")
    g = g.detach().requires_grad_(True)
    wrt = (x, g) if which == "fwd+bwd" else (g,)

    def run():
        out = F.grid_sample(x, g, **kw)
        return out, torch.autograd.grad(out, wrt, c)

    return run


# ---------------------------------------------------------------- timing


def calibrate(run, target=0.05):
    """Number of calls that take about ``target`` seconds (at least 1)."""
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    return max(1, int(target / max(once, 1e-6)))


def time_interleaved(runs: dict, repeats: int) -> dict:
    """Median seconds per call of each run, timed round-robin."""
    for run in runs.values():  # warm-up
        run()
        run()
    numbers = {k: calibrate(r) for k, r in runs.items()}
    samples = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            start = time.perf_counter()
            for _ in range(numbers[k]):
                run()
            samples[k].append((time.perf_counter() - start) / numbers[k])
    return {k: statistics.median(v) for k, v in samples.items()}


def machine() -> str:
    import torch

    versions = [f"Python {platform.python_version()}", f"jax {jax.__version__}", f"torch {torch.__version__}",
                f"numpy {np.__version__}"]
    try:
        import dm_pix

        versions.append(f"dm-pix {dm_pix.__version__}")
    except ImportError:
        pass
    return f"{report.cpu_name()}, {platform.system()} {platform.machine()}; " + ", ".join(versions)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--workloads", default="", help="comma-separated workload indices (default: all)")
    parser.add_argument("--passes", default=",".join(PASSES))
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    try:
        import dm_pix  # noqa: F401

        have_pix = True
    except ImportError:
        have_pix = False

    chosen = [WORKLOADS[int(i)] for i in args.workloads.split(",")] if args.workloads else WORKLOADS
    passes = [p for p in args.passes.split(",") if p]
    load_before = os.getloadavg()[0]
    rows = []
    for name, batch, in_shape, out_shape in chosen:
        image, grid, cot = make_inputs(batch, in_shape, out_shape)
        label = f"{name}: B={batch} {'×'.join(map(str, in_shape))}→{'×'.join(map(str, out_shape))}"
        for which in passes:
            runs, compile_s = {}, {}
            runs["stn_jax"], compile_s["stn_jax"] = compile_jax(_stn, which, image, grid, cot)
            runs["torch NCHW"] = torch_call(torch, which, image, grid, cot, channels_last=False)
            runs["torch channels_last"] = torch_call(torch, which, image, grid, cot, channels_last=True)
            runs["map_coordinates"], compile_s["map_coordinates"] = compile_jax(_map_coordinates, which, image, grid, cot)
            if have_pix:
                runs["dm-pix"], compile_s["dm-pix"] = compile_jax(_dm_pix, which, image, grid, cot)
            med = time_interleaved(runs, args.repeats)
            layout = "NCHW" if med["torch NCHW"] <= med["torch channels_last"] else "channels_last"
            t_torch = med[f"torch {layout}"]
            row = dict(label=label, which=which, ours=med["stn_jax"], torch=t_torch, layout=layout,
                       ratio=t_torch / med["stn_jax"], mc=med["map_coordinates"], pix=med.get("dm-pix"),
                       compile=compile_s["stn_jax"])
            rows.append(row)
            print(f"{label:45s} {which:9s} stn_jax {1e3 * row['ours']:8.3f} ms  torch {1e3 * t_torch:8.3f} ms "
                  f"({layout:13s}) ratio {row['ratio']:5.2f}  map_coordinates {1e3 * row['mc']:8.3f} ms"
                  + (f"  dm-pix {1e3 * row['pix']:8.3f} ms" if have_pix else "")
                  + f"  compile {row['compile']:.2f} s", flush=True)
    load_after = os.getloadavg()[0]
    table = render(rows, args, have_pix, load_before, load_after)
    print()
    print(table)
    if not args.no_write:
        report.write_section(Path(args.output), table, begin=BEGIN, end=END)
        print(f"wrote {args.output}")


def render(rows, args, have_pix, load_before, load_after) -> str:
    cmd = "PYTHONPATH=. python benchmarks/sampler.py" + (f" {' '.join(sys.argv[1:])}" if sys.argv[1:] else "")
    lines = [
        "## Sampler: `stn_jax.sample` vs `torch.nn.functional.grid_sample`",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}  ",
        f"Load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}; "
        f"medians of {args.repeats} interleaved rounds after warm-up; bilinear, zeros, "
        "align_corners=False, float32; torch with 2 threads, faster of NCHW and channels_last.",
        "",
        "Ratio = torch / stn_jax (above 1: stn_jax is faster). `fwd+bwd`: gradients w.r.t. image and grid; "
        "`grid-bwd`: gradient w.r.t. the grid only. Compile = JAX lower + compile of the stn_jax step.",
        "",
        "| workload | pass | stn_jax ms | torch ms (layout) | **ratio** | map_coordinates ms"
        + (" | dm-pix ms" if have_pix else "") + " | stn_jax compile s |",
        "| --- | --- | ---: | ---: | ---: | ---:" + (" | ---:" if have_pix else "") + " | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['which']} | {1e3 * r['ours']:.3f} | {1e3 * r['torch']:.3f} ({r['layout']}) | "
            f"**{r['ratio']:.2f}** | {1e3 * r['mc']:.3f}"
            + (f" | {1e3 * r['pix']:.3f}" if have_pix else "") + f" | {r['compile']:.2f} |"
        )
    return "\n".join(lines) + "\n"




if __name__ == "__main__":
    main()
