"""What the training loop costs beyond its bare jitted step: images/s of the loop against the step alone.

Three ways of training the same model (default: the ST-CNN (affine) of
``mnist_rts_st_cnn_affine`` on 42×42 RTS digits, AdamW, localisation at 0.1× the rate),
at the same batch size, on synthetic data (random uint8 28×28 "digits", random labels):

* **bare step** — ``benchmarks/train_speed.py``'s step (``train_speed.jax_step``): forward,
  backward, AdamW on one device-resident float batch already at the model's input size,
  parameters donated; what ``train_speed.py`` reports;
* **real step** — the training loop's own jitted step (``train.step.make_train_step``, as
  ``train.train`` builds it: RTS distortion of the raw digits on the device, dropout keys,
  non-finite check, metrics) called on one device-resident batch;
* **loop** — that step driven by ``train.loop.run`` as ``train_and_evaluate`` drives it:
  host batches gathered from an in-memory uint8 array (like ``train.data``'s iterator),
  sent to the devices one step ahead, metrics fetched every ``--fetch_every`` steps (the
  config's ``log_every``, 50).

loop / bare is what the issue asked for (the loop's images/s against ``train_speed.py``'s
for the same model and batch); loop / real step isolates the loop's own cost (batches,
transfers, dispatch, metric fetches) from the distortion that the real step adds.

Timing: medians over ``--repeats`` rounds after warm-up; in each round every variant runs
``--steps_per_round`` steps (default: enough for about 1 s of bare steps), interleaved, and
ends synchronised with the device (``jax.block_until_ready``), so it runs unchanged on a
GPU or TPU. On a CPU it sets the XLA flag the training command sets (``train/xla_cpu.py``)
before JAX starts; not where an accelerator plugin is installed or ``JAX_PLATFORMS`` names
an accelerator first; ``--xla_default`` leaves XLA's defaults.

Imports only JAX, Flax, Optax, NumPy and this repository (no TFDS, grain, orbax or
ml_collections), so it runs on a bare accelerator machine.

Run: ``PYTHONPATH=. python benchmarks/loop_speed.py`` (writes its section of BENCHMARKS.md
between the markers below); ``--out DIR`` writes ``DIR/loop_speed.md`` instead,
``--no-write`` only prints, ``--quick`` is a smoke run (the CNN on undistorted 28×28 digits,
batch 16, one short round).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import report
import train_speed
from stn_jax.models import build_model
from stn_jax.optim import with_localisation_lr
from train import distortions, loop, xla_cpu
from train import step as step_lib

BEGIN = "<!-- BEGIN benchmarks/loop_speed.py (generated, do not edit by hand) -->"
END = "<!-- END benchmarks/loop_speed.py -->"
OUTPUT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
# mnist_rts_st_cnn_affine's optimiser (train/configs, train/optim.py): AdamW 3e-3, 50 warm-up steps, cosine.
LEARNING_RATE, WARMUP, STEPS, WEIGHT_DECAY, LOCALISATION_LR = 3e-3, 50, 1000, 1e-4, 0.1
POOL = 4096  # synthetic training digits held in memory


def accelerator_expected(environ=os.environ) -> bool:
    """Whether JAX will run on an accelerator, decided before its backend starts (``JAX_PLATFORMS``, else plugins)."""
    first = (environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or "").split(",")[0].strip().lower()
    if first:
        return first != "cpu"
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    return any(name.startswith(("jax-cuda", "jax-rocm", "libtpu")) for name in names)


def host_batches(batch: int, seed: int = 0):
    """Endless ``{"image": uint8 (B, 28, 28, 1), "label": int32 (B,)}`` gathered from an in-memory pool."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (POOL, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, POOL).astype(np.int32)
    while True:
        order = rng.permutation(POOL)
        for start in range(0, POOL - batch + 1, batch):
            rows = order[start : start + batch]
            yield {"image": images[rows], "label": labels[rows]}


def real_step(name: str, distortion: str, batch: int, *, seed: int = 0):
    """The loop's jitted step, its state, the shardings and a device-resident batch."""
    shape = distortions.OUTPUT_SHAPES[distortion]
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    model = nnx.eval_shape(lambda: build_model(name, num_classes=10, input_shape=shape, rngs=nnx.Rngs(seed)))
    graphdef, _, rng_state, _ = nnx.split(model, nnx.Param, nnx.RngState, ...)
    schedule = optax.warmup_cosine_decay_schedule(0.0, LEARNING_RATE, WARMUP, STEPS, end_value=0.0)
    tx = with_localisation_lr(optax.adamw(schedule, weight_decay=WEIGHT_DECAY), multiplier=LOCALISATION_LR)

    def init():
        built = build_model(name, num_classes=10, input_shape=shape, rngs=nnx.Rngs(seed))
        _, params, _, other = nnx.split(built, nnx.Param, nnx.RngState, ...)
        return params, tx.init(params), other

    params, opt_state, other = jax.jit(init, out_shardings=replicated)()
    train_step = step_lib.make_train_step(graphdef, rng_state, tx, seed=seed,
                                          preprocess=lambda k, x, y: distortions.distort(distortion, k, x, y),
                                          schedule=schedule, replicated=replicated, batch=batch_sharding)  # fmt: skip

    def one_step(carry, batch, step):  # as train.train's loop calls it
        index = jnp.asarray(step - 1, jnp.int32)
        params, opt_state, out = train_step(*carry, other, batch["image"], batch["label"], index)
        return (params, opt_state), out

    resident = loop.global_batch(next(host_batches(batch, seed=1)), batch_sharding)
    return one_step, (params, opt_state), batch_sharding, resident


def runners(args, name: str, distortion: str, batch: int) -> tuple[dict, float]:
    """``{variant: run(k)}``, each running k steps and returning synchronised; and the real step's compile time."""
    side = distortions.OUTPUT_SHAPES[distortion][0]
    bare_step, bare_params, bare_opt, x, y, _ = train_speed.jax_step(name, side, batch)
    bare = {"state": (bare_params, bare_opt)}

    def run_bare(k):
        params, opt_state = bare["state"]
        for _ in range(k):
            params, opt_state, _ = bare_step(params, opt_state, x, y)
        bare["state"] = jax.block_until_ready((params, opt_state))

    one_step, carry, sharding, resident = real_step(name, distortion, batch)
    real = {"carry": carry, "loop": carry}
    batches = host_batches(batch)

    def run_real(k):
        carry = real["carry"]
        for s in range(1, k + 1):
            carry, _ = one_step(carry, resident, s)
        real["carry"] = jax.block_until_ready(carry)

    def run_loop(k):
        carry, metrics = loop.run(one_step, real["loop"], batches, sharding=sharding, steps=k,
                                  fetch_every=args.fetch_every)  # fmt: skip
        real["loop"] = jax.block_until_ready(carry)
        assert len(metrics) == k

    t0 = time.perf_counter()
    run_real(1)  # compiles the real step
    compile_s = time.perf_counter() - t0
    return {"bare": run_bare, "real": run_real, "loop": run_loop}, compile_s


def measure(args, name: str, distortion: str, batch: int) -> dict:
    runs, compile_s = runners(args, name, distortion, batch)
    for run in runs.values():
        run(args.warmup)
    k = args.steps_per_round
    if k is None:  # about args.round_s seconds of bare steps per round
        t0 = time.perf_counter()
        runs["bare"](2)
        k = max(2, math.ceil(args.round_s / ((time.perf_counter() - t0) / 2)))
    times = {v: [] for v in runs}
    for _ in range(args.repeats):
        for v, run in runs.items():
            t0 = time.perf_counter()
            run(k)
            times[v].append((time.perf_counter() - t0) / k)
    med = {v: statistics.median(t) for v, t in times.items()}
    row = dict(model=name, distortion=distortion, side=distortions.OUTPUT_SHAPES[distortion][0], batch=batch,
               steps_per_round=k, compile=compile_s, **{f"{v}_ips": batch / t for v, t in med.items()})  # fmt: skip
    row["loop_over_bare"] = row["loop_ips"] / row["bare_ips"]
    row["loop_over_real"] = row["loop_ips"] / row["real_ips"]
    print(f"{name} {row['side']}×{row['side']} batch {batch}: bare {row['bare_ips']:.0f} img/s, real step "
          f"{row['real_ips']:.0f} img/s, loop {row['loop_ips']:.0f} img/s; loop/bare {row['loop_over_bare']:.2f}, "
          f"loop/real {row['loop_over_real']:.2f} ({k} steps a round, compile {compile_s:.1f} s)", flush=True)  # fmt: skip
    return row


def machine() -> str:
    devices = jax.devices()
    return (f"{report.cpu_name()}, {platform.system()} {platform.machine()}; jax backend `{jax.default_backend()}` "
            f"({len(devices)}× {devices[0].device_kind}); Python {platform.python_version()}, jax {jax.__version__}")  # fmt: skip


def render(rows: list[dict], args, load_before: float, load_after: float) -> str:
    cmd = "PYTHONPATH=. python benchmarks/loop_speed.py" + (f" {' '.join(args.argv)}" if args.argv else "")
    flags = ("XLA's defaults" if args.xla_default else
             "accelerator: the training command's CPU flag not set" if args.accelerator else
             "as `python -m train` sets them, see `train/xla_cpu.py`")  # fmt: skip
    lines = [
        "## Training loop vs its bare step (`train.loop` around the jitted step)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}  ",
        f"XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}` ({flags})  ",
        f"Load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}; float32, synthetic uint8 digits, "
        f"medians of {args.repeats} interleaved rounds after {args.warmup} warm-up steps, each round synchronised "
        f"with the device; the loop fetches metrics every {args.fetch_every} steps and at the end of each round.",
        "",
        "Bare step: `benchmarks/train_speed.py`'s (forward, backward, AdamW on a device-resident batch at the "
        "model's input size, donated). Real step: the training loop's jitted step (`train.step`: RTS distortion "
        "on the device, dropout keys, non-finite check, metrics) on a device-resident batch. Loop: that step "
        "driven by `train.loop` over host batches (the next batch sent while the current step runs, metrics "
        "fetched only every N steps), as `python -m train` runs it.",
        "",
        "| model | input | batch | bare step img/s | real step img/s | loop img/s | **loop / bare** | loop / real step "
        "| steps a round | compile s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['distortion']} {r['side']}×{r['side']}×1 | {r['batch']} | {r['bare_ips']:.0f} | "
            f"{r['real_ips']:.0f} | {r['loop_ips']:.0f} | **{r['loop_over_bare']:.2f}** | {r['loop_over_real']:.2f} "
            f"| {r['steps_per_round']} | {r['compile']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the CNN on undistorted 28×28 digits, batch 16, 1 round of 2 steps",
    )
    parser.add_argument("--model", default=None, help="default st_cnn_affine (cnn with --quick)")
    parser.add_argument(
        "--distortion",
        default=None,
        help="the training distortion, which sets the input size (default RTS; none with --quick)",
    )
    parser.add_argument(
        "--batches",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="comma-separated batch sizes (default 256,64: train_speed.py's and the RTS config's)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 7; 1 with --quick)")
    parser.add_argument(
        "--steps_per_round",
        type=int,
        default=None,
        help="default: enough for --round_s seconds of bare steps (2 with --quick)",
    )
    parser.add_argument("--round_s", type=float, default=1.0)
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps per variant (default 2; 1 with --quick)"
    )
    parser.add_argument(
        "--fetch_every", type=int, default=None, help="the loop's metric fetches (default 50, log_every)"
    )
    parser.add_argument(
        "--xla_default", action="store_true", help="leave XLA's CPU defaults (no training-command flag)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write DIR/loop_speed.md instead of BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    quick = args.quick
    args.model = args.model or ("cnn" if quick else "st_cnn_affine")
    args.distortion = args.distortion or ("none" if quick else "RTS")
    args.batches = args.batches or ([16] if quick else [256, 64])
    args.repeats = args.repeats or (1 if quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.steps_per_round = args.steps_per_round or (2 if quick else None)
    args.fetch_every = args.fetch_every or (2 if quick else 50)
    return args


def main(argv=None):
    args = parse_args(argv)
    args.accelerator = accelerator_expected()
    if not args.xla_default and not args.accelerator:  # before JAX's backend starts, as `python -m train` does
        xla_cpu.use_xla_convolutions()
    load_before = os.getloadavg()[0]
    rows = [measure(args, args.model, args.distortion, b) for b in args.batches]
    table = render(rows, args, load_before, os.getloadavg()[0])
    print()
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "loop_speed.md").write_text(table)
        print(f"wrote {args.out / 'loop_speed.md'}")
    elif not args.no_write:
        report.write_section(args.output, table, begin=BEGIN, end=END)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
