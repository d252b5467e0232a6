"""Benchmark of ``stn_jax.sample(..., antialias=True)``: quality against a box-filter reference, speed against plain bilinear.

**Quality.** Two test images: a zone plate ``cos(pi k r^2)`` whose local frequency stays below
the input's Nyquist limit (0.45 cycles/pixel in the corners), and a photograph (Grace Hopper,
matplotlib's sample data, grey, centre crop). Warps: zoom-outs by 2, 4 and 8 at 0° and 30°
(the output covers the whole input, ``n/zoom`` pixels a side), an anisotropic 4x1 scale at 0°
and 30°, and a projective tilt. Each output is compared (PSNR; peak = the image's value
range) with the **reference**: the bilinear image averaged over each output pixel's footprint
(the preimage of the output pixel's square) by dense supersampling, ``4·zoom`` (at most 32)
plain samples a side spread evenly over each output pixel. That is what an ideal camera with
square pixels would record of the continuous (bilinear) image, and it needs no choice of
filter of ours. Compared: plain bilinear, our isotropic variant (one read at the level of the
footprint's longest side: ``probes=1``) and anisotropic variants (``probes`` reads along the
longest side), and ``jax.image.scale_and_translate(method="linear", antialias=True)`` where
it applies (axis-aligned cases).

**Loss along θ.** The mean squared error between each image warped at scale ``s`` (output
half the input's size) and its reference at ``s = 0.7``, for ``s`` from 1 down to 0.25, with
and without ``antialias``, and its derivative by ``jax.grad``: a picture of how smooth the
landscape is that a localisation network descends.

**Speed.** Forward and forward+backward (gradients w.r.t. image and grid), vmapped over a
batch and jitted, median of ``--repeats`` interleaved rounds, ``antialias=False`` (the
platform's default sampler) against each variant.

Run: ``PYTHONPATH=. python benchmarks/antialias.py`` (writes its BENCHMARKS.md section and
``benchmarks/results/antialias*.png``; ``--out DIR`` writes ``DIR/antialias.md`` and the
pictures there instead; ``--no-write`` prints only; ``--quick``: tiny sizes, a smoke run;
``--skip-speed``: quality and loss only, for a machine that is not quiet).
Needs jax, numpy and matplotlib (the photograph and the pictures; Pillow reads the JPEG).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np

import report
import stn_jax
from sampler import time_interleaved
from stn_jax import _sampling_antialias as antialias

BEGIN = "<!-- BEGIN benchmarks/antialias.py (generated, do not edit by hand) -->"
END = "<!-- END benchmarks/antialias.py -->"
NAME = "antialias.md"
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"isotropic (probes=1)": 1, "anisotropic (probes=2)": 2, "anisotropic (probes=4)": 4}
# (name, batch, (H, W, C) in, (Ho, Wo) out); θ: random zoom-outs by 1-2x, rotations up to ±29°
SPEED_WORKLOADS = [
    ("cluttered MNIST ST (60x60 -> 30x30)", 128, (60, 60, 1), (30, 30)),
    ("feature map (64x64x16 -> 32x32)", 32, (64, 64, 16), (32, 32)),
]
QUICK_SPEED = [("tiny", 4, (16, 16, 2), (8, 8))]
# Only on an accelerator: too big for the 2-core CPU.
ACCELERATOR_SPEED = [("image batch (224x224x3 -> 112x112)", 64, (224, 224, 3), (112, 112))]


# ---------------------------------------------------------------- images and warps


def zone_plate(n: int) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n] - n / 2 + 0.5
    k = 0.45 / (n / np.sqrt(2))  # local frequency k·r cycles/pixel: 0.45 in the corners (r = n/√2)
    return np.cos(np.pi * k * (x**2 + y**2))[..., None].astype(np.float32)


def photograph(n: int) -> np.ndarray:
    import matplotlib.cbook
    import matplotlib.pyplot as plt

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        rgb = plt.imread(f).astype(np.float32) / 255
    grey = rgb[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    h, w = grey.shape
    side = min(h, w)
    crop = grey[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    step = max(side // n, 1)
    return np.ascontiguousarray(crop[: n * step : step, : n * step : step][..., None])


def rotation(degrees: float, sx: float = 1.0, sy: float = 1.0) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    return np.array([[c * sx, -s * sy, 0.0], [s * sx, c * sy, 0.0]], np.float32)


def warps(n: int, quick: bool = False):
    """(name, transform, θ, out shape, zoom used for the supersampling, axis-aligned scale or None)."""
    if quick:
        return [("zoom-out 4x, 30°", "affine", rotation(30), (n // 4, n // 4), 4, None)]
    cases = []
    for zoom in (2, 4, 8):
        for degrees in (0, 30):
            out = (n // zoom, n // zoom)
            aligned = (out[0] / n, out[1] / n) if degrees == 0 else None
            cases.append((f"zoom-out {zoom}x, {degrees}°", "affine", rotation(degrees), out, zoom, aligned))
    for degrees in (0, 30):
        aligned = (1.0, 0.25) if degrees == 0 else None
        cases.append((f"anisotropic 4x1, {degrees}°", "affine", rotation(degrees), (n, n // 4), 4, aligned))
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.75, 1.0]], np.float32)  # far rows shrink ~7x
    cases.append(("projective tilt", "projective", tilt, (n // 4, n // 4), 8, None))
    return cases


def make_grid(transform, theta, out):
    return stn_jax.grid(jnp.asarray(theta), out, transform=transform)


def reference(image, transform, theta, out, zoom):
    per = min(4 * zoom, 32)
    fine = sample_plain(image, make_grid(transform, theta, (out[0] * per, out[1] * per)))
    return np.asarray(fine).reshape(out[0], per, out[1], per, -1).mean(axis=(1, 3))


sample_plain = jax.jit(stn_jax.sample)


def sample_variant(image, grid, probes):
    plain = stn_jax.sample(image, grid)
    return antialias.sample(image, grid, plain, padding="zeros", align_corners=False, dtype=jnp.float32, probes=probes)


sample_variant = jax.jit(sample_variant, static_argnums=2)


def psnr(a, b, peak) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(peak**2 / mse)) if mse > 0 else float("inf")


def quality(images: dict, n: int, quick: bool = False):
    """Rows of PSNR figures and the outputs of the picture's case."""
    rows, picture = [], {}
    for image_name, image in images.items():
        peak = float(image.max() - image.min())
        for name, transform, theta, out, zoom, aligned in warps(n, quick):
            grid = make_grid(transform, theta, out)
            ref = reference(image, transform, theta, out, zoom)
            outputs = {"plain bilinear": sample_plain(image, grid)}
            outputs.update({v: sample_variant(image, grid, p) for v, p in VARIANTS.items()})
            if aligned is not None:
                outputs["scale_and_translate"] = jax.image.scale_and_translate(
                    jnp.asarray(image),
                    (*out, image.shape[-1]),
                    (0, 1),
                    jnp.asarray(aligned, jnp.float32),
                    jnp.zeros(2),
                    method="linear",
                    antialias=True,
                )
            rows.append((image_name, name, {k: psnr(v, ref, peak) for k, v in outputs.items()}))
            if name == "zoom-out 4x, 30°":
                picture[image_name] = {"reference": ref, **{k: np.asarray(v) for k, v in outputs.items()}}
    return rows, picture


def quality_table(rows) -> list[str]:
    columns = ["plain bilinear", *VARIANTS, "scale_and_translate"]
    lines = ["| image | warp | " + " | ".join(columns) + " |", "| --- | --- |" + " ---: |" * len(columns)]
    for image_name, name, figures in rows:
        cells = [f"{figures[c]:.1f}" if c in figures else "n/a" for c in columns]
        lines.append(f"| {image_name} | {name} | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------- loss along θ


def loss_line(image, scales):
    """MSE to the reference at s = 0.7 and its derivative in s, plain and antialiased."""
    n = image.shape[0]
    out = (n // 2, n // 2)
    target = jnp.asarray(reference(image, "affine", rotation(0, 0.7, 0.7), out, 2))

    def loss(s, on):
        theta = jnp.array([[1.0, 0, 0], [0, 1.0, 0]]) * s
        warped = stn_jax.sample(jnp.asarray(image), stn_jax.affine_grid(theta, out), antialias=on)
        return jnp.mean((warped - target) ** 2)

    curves = {}
    for on in (False, True):
        value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(lambda s, on=on: loss(s, on))))
        curves[on] = tuple(np.asarray(x) for x in value_and_grad(jnp.asarray(scales, jnp.float32)))
    return curves


def roughness(values: np.ndarray) -> float:
    """Total variation of a derivative curve, relative to its range: 1 for a monotone one."""
    return float(np.abs(np.diff(values)).sum() / max(np.ptp(values), 1e-12))


# ---------------------------------------------------------------- speed


def speed_inputs(batch, in_shape, out_shape, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((batch, *in_shape), dtype=np.float32)
    scale = rng.uniform(1.0, 2.0, batch)  # zoom-outs: every point reads a filtered level
    angle = rng.uniform(-0.5, 0.5, batch)
    theta = np.stack([rotation(np.rad2deg(a), s, s) for a, s in zip(angle, scale)])
    grid = jax.vmap(lambda t: stn_jax.affine_grid(t, out_shape))(jnp.asarray(theta))
    cot = rng.standard_normal((batch, *out_shape, in_shape[-1]), dtype=np.float32)
    return jnp.asarray(image), grid, jnp.asarray(cot)


def speed(workloads, repeats):
    candidates = {"antialias=False": None, **{f"{k}": v for k, v in VARIANTS.items()}}
    rows = []
    for name, batch, in_shape, out_shape in workloads:
        image, grid, cot = speed_inputs(batch, in_shape, out_shape)
        for which in ("fwd", "fwd+bwd"):
            runs = {}
            for label, probes in candidates.items():
                if probes is None:
                    one = stn_jax.sample
                else:
                    one = lambda i, g, p=probes: antialias.sample(
                        i, g, stn_jax.sample(i, g), padding="zeros", align_corners=False, dtype=jnp.float32, probes=p
                    )
                batched = jax.vmap(one)
                if which == "fwd":
                    fn = jax.jit(batched)
                    args = (image, grid)
                else:
                    fn = jax.jit(lambda i, g, c, f=batched: jax.vjp(f, i, g)[1](c))
                    args = (image, grid, cot)
                fn = fn.lower(*args).compile()
                runs[label] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
            seconds = time_interleaved(runs, repeats)
            base = seconds["antialias=False"]
            rows.append((name, which, {k: (v, v / base) for k, v in seconds.items()}))
    return rows, list(candidates)


def speed_table(rows, labels) -> list[str]:
    lines = ["| workload | pass | " + " | ".join(labels) + " |", "| --- | --- |" + " ---: |" * len(labels)]
    for name, which, figures in rows:
        cells = [f"{figures[k][0] * 1e3:.2f} ms ({figures[k][1]:.1f}x)" for k in labels]
        lines.append(f"| {name} | {which} | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------- pictures


def save_pictures(picture: dict, curves: dict, scales, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    columns = ["reference", "plain bilinear", "isotropic (probes=1)", "anisotropic (probes=2)"]
    fig, axes = plt.subplots(len(picture), len(columns), figsize=(2.6 * len(columns), 2.7 * len(picture)))
    axes = np.atleast_2d(axes)
    for r, (image_name, outputs) in enumerate(picture.items()):
        for c, column in enumerate(columns):
            axes[r, c].imshow(outputs[column][..., 0], cmap="gray", interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(column, fontsize=9)
        axes[r, 0].set_ylabel(image_name)
    fig.suptitle("4x zoom-out at 30°", fontsize=10)
    fig.tight_layout()
    warps_png = folder / "antialias.png"
    fig.savefig(warps_png, dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(curves), figsize=(5 * len(curves), 5), sharex=True, squeeze=False)
    for col, (name, curve) in enumerate(curves.items()):
        top, bottom = axes[0, col], axes[1, col]
        for on, label in ((False, "plain"), (True, "antialias=True")):
            top.plot(scales, curve[on][0], label=label)
            bottom.plot(scales, curve[on][1], label=label)
        top.set_title(name, fontsize=10)
        bottom.set_xlabel("θ scale s (s > 0.5 shrinks)")
    axes[0, 0].set_ylabel("MSE to the s = 0.7 reference")
    axes[1, 0].set_ylabel("d loss / d s")
    axes[0, 0].legend()
    fig.tight_layout()
    loss_png = folder / "antialias_loss.png"
    fig.savefig(loss_png, dpi=90)
    plt.close(fig)
    return [warps_png, loss_png]


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one warp: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per timing (default 7; 2 with --quick)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no file")
    parser.add_argument("--skip-speed", action="store_true", help="quality and loss only: no timing")
    parser.add_argument("--out", default=None, help="write DIR/antialias.md and the pictures there instead")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 7)
    n = 32 if args.quick else 256
    started = time.time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    try:
        import matplotlib
    except ImportError:
        matplotlib = None
    images = {"zone plate": zone_plate(n)}
    if matplotlib is not None:
        images["photograph"] = photograph(n)
    rows, picture = quality(images, n, args.quick)
    scales = np.linspace(0.25, 1.0, 16 if args.quick else 151)
    curves = {name: loss_line(image, scales) for name, image in images.items()}
    workloads = QUICK_SPEED if args.quick else SPEED_WORKLOADS
    if not args.quick and jax.default_backend() != "cpu":
        workloads = workloads + ACCELERATOR_SPEED
    timing, labels = ([], []) if args.skip_speed else speed(workloads, repeats)

    devices = jax.devices()
    given = sys.argv[1:] if argv is None else list(argv)
    lines = [
        "## Antialiased sampling: `sample(..., antialias=True)` against plain bilinear",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/antialias.py{''.join(' ' + a for a in given)}`  ",
        f"Machine: {report.cpu_name()}; jax backend `{jax.default_backend()}` ({devices[0].device_kind}); "
        f"Python {platform.python_version()}, jax {jax.__version__}, numpy {np.__version__}; "
        f"1-minute load {load:.2f} at the start; {time.time() - started:.0f} s in all.",
        "",
        f"PSNR (dB) against the box-filter reference, images {n}x{n} "
        "(higher is better; n/a: `scale_and_translate` takes axis-aligned scales only):",
        "",
        *quality_table(rows),
        "",
        *([] if matplotlib else ["matplotlib is not installed: no photograph, no pictures.", ""]),
        "Loss along θ (MSE of the image warped at scale s, output half the input's size, to the "
        "reference at s = 0.7; s from 0.25 to 1): roughness of d loss/d s (total variation / range, "
        "1 = monotone) and where the loss is least, plain → antialias=True: "
        + "; ".join(
            f"{name} {roughness(c[False][1]):.1f} → {roughness(c[True][1]):.1f}, "
            f"s = {scales[np.argmin(c[False][0])]:.3f} → {scales[np.argmin(c[True][0])]:.3f}"
            for name, c in curves.items()
        )
        + ".",
        "",
        *(
            [
                f"Time per batch, median of {repeats} rounds (x: ratio to antialias=False, lower is better):",
                "",
                *speed_table(timing, labels),
            ]
            if timing
            else ["Time: not measured in this run (`--skip-speed`)."]
        ),
        "",
    ]
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return 0
    folder = Path(args.out) if args.out else RESULTS
    pictures = save_pictures(picture, curves, scales, folder) if matplotlib else []
    if pictures and not args.out:
        rel = [p.relative_to(Path(args.output).resolve().parent) for p in pictures]
        table += f"\n![4x zoom-out at 30°, plain and antialiased]({rel[0]})\n![Loss along θ]({rel[1]})\n"
    path = report.write_table(table, out=args.out, name=NAME, output=args.output, begin=BEGIN, end=END)
    print(f"wrote {', '.join(map(str, [path, *pictures]))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
