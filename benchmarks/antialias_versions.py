"""Antialiased sampling now against its earlier implementations, in one process, interleaved.

The earlier ``stn_jax/_sampling_antialias.py`` are read from git (the level stack of 59917c8 and the
mip pyramid of 0318cc4 by default) and run with today's plain sampler; the workloads are
``benchmarks/antialias.py``'s speed workloads, two probes, ``padding="zeros"``. Prints a Markdown table.

    PYTHONPATH=. python benchmarks/antialias_versions.py [--commits 59917c8,0318cc4] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import stn_jax
from antialias import QUICK_SPEED, SPEED_WORKLOADS, speed_inputs

ROOT = Path(__file__).resolve().parent.parent


def module_at(commit: str, folder: Path):
    """``stn_jax/_sampling_antialias.py`` as it was at ``commit``, imported under another name."""
    text = subprocess.run(
        ["git", "show", f"{commit}:stn_jax/_sampling_antialias.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / f"antialias_{commit}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def median_ms(fns: dict, repeats: int) -> dict:
    for fn, args in fns.values():
        jax.block_until_ready(fn(*args))
    times = {}
    for _ in range(repeats):
        for key, (fn, args) in fns.items():
            start = time.perf_counter()
            for _ in range(5):
                jax.block_until_ready(fn(*args))
            times.setdefault(key, []).append((time.perf_counter() - start) / 5 * 1e3)
    return {key: float(np.median(t)) for key, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", default="59917c8,0318cc4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tiny workload, one round (a smoke run)")
    args = parser.parse_args(argv)
    workloads, repeats = (QUICK_SPEED, 1) if args.quick else (SPEED_WORKLOADS, args.repeats)
    print(f"1-minute load at the start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        older = {c: module_at(c, Path(folder)) for c in args.commits.split(",")}
        options = dict(padding="zeros", align_corners=False, dtype=jnp.float32)
        variants = {"plain": stn_jax.sample}
        for commit, module in older.items():
            variants[commit] = lambda i, g, m=module: m.sample(i, g, stn_jax.sample(i, g), **options)
        variants["now"] = lambda i, g: stn_jax.sample(i, g, antialias=True)
        print("| workload | pass | " + " | ".join(variants) + " |")
        print("| --- | --- |" + " ---: |" * len(variants))
        for name, batch, in_shape, out_shape in workloads:
            image, grid, cot = speed_inputs(batch, in_shape, out_shape)
            fns = {}
            for label, one in variants.items():
                batched = jax.vmap(one)
                fns[label, "fwd"] = (jax.jit(batched), (image, grid))
                backward = jax.jit(lambda i, g, c, f=batched: jax.vjp(f, i, g)[1](c))
                fns[label, "fwd+bwd"] = (backward, (image, grid, cot))
            ms = median_ms(fns, repeats)
            for which in ("fwd", "fwd+bwd"):
                cells = [
                    f"{ms[label, which]:.2f} ms ({ms['now', which] / ms[label, which]:.2f}×)" for label in variants
                ]
                print(f"| {name} | {which} | " + " | ".join(cells) + " |")
    print(f"1-minute load at the end: {os.getloadavg()[0]:.2f} (in brackets: now / that column)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
