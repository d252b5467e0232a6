"""What the training loop costs beyond its bare jitted step: images/s of the loop against the step alone.

Ways of training the same model (default: the ST-CNN (affine) of ``mnist_rts_st_cnn_affine`` on 42×42 RTS
digits, AdamW, localisation at 0.1× the rate), at the same batch size, on synthetic data (random uint8 28×28
"digits", random labels):

* **bare step** — ``benchmarks/train_speed.py``'s step (``train_speed.jax_step``): forward,
  backward, AdamW on one device-resident float batch already at the model's input size,
  parameters donated; what ``train_speed.py`` reports;
* **real step** — the training loop's step body (``train.step.make_train_step``: RTS distortion of the
  raw digits on the device, dropout keys, non-finite check, metrics) jitted alone, one dispatch per
  step, on one device-resident batch;
* **scanned real step** — the loop's jitted chunk (``train.step.make_train_chunk``) of 32 steps on the
  training split held on the device, one fixed block of rows: the loop's device work without the host;
* **loop** — ``train.loop.run`` as ``train_and_evaluate`` drives it, at most K steps per dispatch
  (K = 1, 8, 32, and "to the next boundary": the metric fetch every ``--fetch_every`` steps, the
  config's ``log_every``, 50), for both sources of ``train.sources``: the split held on the devices
  (``device``: a ``(K, B)`` block of row numbers per dispatch) and host batches (``host``: K batches
  gathered from an in-memory uint8 array, stacked and sent, the next chunk's while the current runs).

loop / bare is what the issue asked for (the loop's images/s against ``train_speed.py``'s for the same
model and batch); loop / scanned real step isolates the loop's own cost (batches, transfers, dispatch,
metric fetches) from the distortion and metrics that the real step adds.

Timing: medians over ``--repeats`` rounds after warm-up; in each round every variant runs
``--steps_per_round`` steps (default: enough for about 1 s of bare steps, rounded up to a multiple of
``--fetch_every``), interleaved, and ends synchronised with the device (``jax.block_until_ready``), so it
runs unchanged on a GPU or TPU. On a CPU it sets the XLA flag the training command sets
(``train/xla_cpu.py``) before JAX starts; not where an accelerator plugin is installed or ``JAX_PLATFORMS``
names an accelerator first; ``--xla_default`` leaves XLA's defaults.

Imports only JAX, Flax, Optax, NumPy and this repository (no TFDS, grain, orbax or ml_collections; the host
source is fed from NumPy as grain's iterator would be), so it runs on a bare accelerator machine.

Run: ``PYTHONPATH=. python benchmarks/loop_speed.py`` (writes its section of BENCHMARKS.md
between the markers below); ``--out DIR`` writes ``DIR/loop_speed.md`` instead,
``--no-write`` only prints, ``--quick`` is a smoke run (the CNN on undistorted 28×28 digits,
batch 16, one short round).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

import report
import train_speed
from stn_jax.models import build_model
from stn_jax.optim import with_localisation_lr
from train import distortions, input_pipeline, loop, sources, xla_cpu
from train import step as step_lib

BEGIN = "<!-- BEGIN benchmarks/loop_speed.py (generated, do not edit by hand) -->"
END = "<!-- END benchmarks/loop_speed.py -->"
OUTPUT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
# mnist_rts_st_cnn_affine's optimiser (train/configs, train/optimizer.py): AdamW 3e-3, 50 warm-up steps, cosine.
LEARNING_RATE, WARMUP, STEPS, WEIGHT_DECAY, LOCALISATION_LR = 3e-3, 50, 1000, 1e-4, 0.1
POOL = 4096  # synthetic training digits held in memory


def accelerator_expected(environ=os.environ) -> bool:
    """Whether JAX will run on an accelerator, decided before its backend starts (``JAX_PLATFORMS``, else plugins)."""
    first = (environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or "").split(",")[0].strip().lower()
    if first:
        return first != "cpu"
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    return any(name.startswith(("jax-cuda", "jax-rocm", "libtpu")) for name in names)


# The loop's steps per dispatch (None: up to the next boundary, the metric fetch), and the scanned real step's
# chunk. A CPU dispatches a chunk's steps one at a time (train.step.stepwise_chunks), so there only K = 1 and 8
# are measured.
CHUNKS = {"accelerator": (1, 8, 32, None), "cpu": (1, 8)}
SCAN = {"accelerator": 32, "cpu": 8}


def platform_kind() -> str:
    return "cpu" if step_lib.stepwise_chunks(jax.default_backend()) else "accelerator"


def pool(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``POOL`` synthetic training digits: uint8 (N, 28, 28, 1) and int32 labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (POOL, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, POOL).astype(np.int32)


def real_chunk(name: str, distortion: str, batch: int, *, seed: int = 0):
    """The loop's jitted chunk and its step jitted alone, the initial state's jitted init, and the shardings."""
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

    step = step_lib.make_train_step(
        graphdef,
        rng_state,
        tx,
        seed=seed,
        preprocess=lambda k, x, y: distortions.distort(distortion, k, x, y),
        schedule=schedule,
    )
    stepwise = step_lib.stepwise_chunks(jax.default_backend())
    chunk = step_lib.make_train_chunk(step, replicated=replicated, batch=batch_sharding, stepwise=stepwise)
    jitted_step = jax.jit(
        step,
        in_shardings=(replicated, replicated, replicated, batch_sharding, batch_sharding, replicated),
        out_shardings=replicated,
        donate_argnums=(0, 1),
    )
    return chunk, jitted_step, jax.jit(init, out_shardings=replicated), replicated, batch_sharding


def runners(args, name: str, distortion: str, batch: int) -> tuple[dict, float]:
    """``{variant: run(k)}``, each running k steps and returning synchronised; and the scanned step's compile time."""
    side = distortions.OUTPUT_SHAPES[distortion][0]
    bare_step, bare_params, bare_opt, x, y, _ = train_speed.jax_step(name, side, batch)
    state = {"bare": (bare_params, bare_opt)}

    def run_bare(k):
        params, opt_state = state["bare"]
        for _ in range(k):
            params, opt_state, _ = bare_step(params, opt_state, x, y)
        state["bare"] = jax.block_until_ready((params, opt_state))

    chunk, jitted_step, init, replicated, batch_sharding = real_chunk(name, distortion, batch)
    steps_sharding = step_lib.chunk_sharding(batch_sharding)
    images, labels = pool()
    device = sources.DeviceSource(
        images, labels, batch_size=batch, seed=1, replicated=replicated, steps_sharding=steps_sharding
    )
    resident = loop.global_batch(input_pipeline.EpochBatches(images, labels, batch, 2)(0), batch_sharding)
    chunks, scan = CHUNKS[platform_kind()], SCAN[platform_kind()]
    block = device.feed(1, scan)  # one fixed block of rows for the scanned real step
    variants = ["real", "scanned"] + [f"{kind}_k{k or 'b'}" for kind in ("device", "host") for k in chunks]
    other = None
    for v in variants:
        params, opt_state, other = init()
        state[v] = (params, opt_state)

    def run_real(k):
        params, opt_state = state["real"]
        for s in range(k):
            params, opt_state, _ = jitted_step(
                params, opt_state, other, resident["image"], resident["label"], np.int32(s)
            )
        state["real"] = jax.block_until_ready((params, opt_state))

    def run_scanned(k):  # whole chunks: returns the steps taken
        params, opt_state = state["scanned"]
        for s in range(0, k, scan):
            params, opt_state, _ = chunk(params, opt_state, other, device.dataset, block, np.int32(s))
        state["scanned"] = jax.block_until_ready((params, opt_state))
        return -(-k // scan) * scan

    def run_loop(variant: str, kind: str, max_steps: int):
        def run(k):
            # A fresh source per round (steps 1..k): the device one is stateless, the host one goes forward only.
            source = device if kind == "device" else host_source(images, labels, batch, steps_sharding)

            def run_chunk(carry, xs, first):
                params, opt_state, out = chunk(*carry, other, source.dataset, xs, np.int32(first - 1))
                return (params, opt_state), out

            carry, metrics = loop.run(
                run_chunk, state[variant], source.feed, steps=k, fetch_every=args.fetch_every, max_steps=max_steps
            )
            state[variant] = jax.block_until_ready(carry)
            assert len(metrics) == k

        return run

    runs = {"bare": run_bare, "real": run_real, "scanned": run_scanned}
    for kind in ("device", "host"):
        for k in chunks:
            runs[f"{kind}_k{k or 'b'}"] = run_loop(f"{kind}_k{k or 'b'}", kind, k or args.fetch_every)
    t0 = time.perf_counter()
    run_scanned(scan)  # compiles the scanned step
    compile_s = time.perf_counter() - t0
    return runs, compile_s


def host_source(images: np.ndarray, labels: np.ndarray, batch: int, steps_sharding) -> sources.HostSource:
    """Host batches as the grain iterator yields them (:class:`train.input_pipeline.EpochBatches`), without grain."""
    return sources.HostSource(
        map(input_pipeline.EpochBatches(images, labels, batch, 1), itertools.count()),
        start=0,
        steps_sharding=steps_sharding,
    )


def measure(args, name: str, distortion: str, batch: int) -> dict:
    runs, compile_s = runners(args, name, distortion, batch)
    k = args.steps_per_round
    if k is None:  # about args.round_s seconds of bare steps per round, whole fetch intervals
        runs["bare"](2)  # compiles
        t0 = time.perf_counter()
        runs["bare"](2)
        k = max(2, math.ceil(args.round_s / ((time.perf_counter() - t0) / 2)))
        k = -(-k // args.fetch_every) * args.fetch_every
    for _ in range(args.warmup):  # every chunk length a round uses, compiled
        for run in runs.values():
            run(k)
    times = {v: [] for v in runs}
    for _ in range(args.repeats):
        for v, run in runs.items():
            t0 = time.perf_counter()
            taken = run(k) or k
            times[v].append((time.perf_counter() - t0) / taken)
    med = {v: statistics.median(t) for v, t in times.items()}
    row = dict(
        model=name,
        distortion=distortion,
        side=distortions.OUTPUT_SHAPES[distortion][0],
        batch=batch,
        steps_per_round=k,
        compile=compile_s,
        **{f"{v}_ips": batch / t for v, t in med.items()},
    )
    best = max((v for v in runs if v.startswith(("device", "host"))), key=lambda v: row[f"{v}_ips"])
    print(
        f"{name} {row['side']}×{row['side']} batch {batch}: bare {row['bare_ips']:.0f} img/s, real step "
        f"{row['real_ips']:.0f}, scanned {row['scanned_ips']:.0f}, best loop ({best}) {row[f'{best}_ips']:.0f}; "
        f"best loop/bare {row[f'{best}_ips'] / row['bare_ips']:.2f} ({k} steps a round, compile "
        f"{compile_s:.1f} s)",
        flush=True,
    )
    return row


def machine() -> str:
    devices = jax.devices()
    return (
        f"{report.cpu_name()}, {platform.system()} {platform.machine()}; jax backend `{jax.default_backend()}` "
        f"({len(devices)}× {devices[0].device_kind}); Python {platform.python_version()}, jax {jax.__version__}"
    )


def render(rows: list[dict], args, load_before: float, load_after: float) -> str:
    cmd = "PYTHONPATH=. python benchmarks/loop_speed.py" + (f" {' '.join(args.argv)}" if args.argv else "")
    flags = (
        "XLA's defaults"
        if args.xla_default
        else "accelerator: the training command's CPU flag not set"
        if args.accelerator
        else "as `python -m train` sets them, see `train/xla_cpu.py`"
    )
    kind = platform_kind()
    lines = [
        "## Training loop vs its bare step (`train.loop` around the scanned step)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}  ",
        f"XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}` ({flags})  ",
        f"Load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}; float32, synthetic uint8 digits, "
        f"medians of {args.repeats} interleaved rounds after {args.warmup} warm-up round(s), each round synchronised "
        f"with the device; the loop fetches metrics every {args.fetch_every} steps.",
        "",
        "Bare step: `benchmarks/train_speed.py`'s (forward, backward, AdamW on a device-resident batch at the "
        "model's input size, donated). Real step: the training loop's step body (`train.step`: RTS distortion "
        "on the device, dropout keys, non-finite check, metrics) jitted alone on a device-resident batch, one "
        f"dispatch per step. Scanned: the loop's chunk of {SCAN[kind]} such steps (`lax.scan`; one step a dispatch on a CPU) on "
        "the split held on "
        "the device. Loop: `train.loop` with at most K steps per dispatch (b: up to the next boundary) and "
        "the training split on the device (`device`) or batches sent from the host (`host`), as `python -m "
        "train` runs it. Every figure is img/s; the ratio is against the bare step.",
        "",
        "| model | input | batch | bare | real step | scanned | "
        + " | ".join(f"{source} K={k or 'b'}" for source in ("device", "host") for k in CHUNKS[kind])
        + " | **best loop / bare** | best loop / scanned | steps a round | compile s |",
        "| --- | --- | ---: | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in range(2 * len(CHUNKS[kind])))
        + " | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        loops = [f"{source}_k{k or 'b'}" for source in ("device", "host") for k in CHUNKS[kind]]
        best = max(r[f"{v}_ips"] for v in loops)
        lines.append(
            f"| {r['model']} | {r['distortion']} {r['side']}×{r['side']}×1 | {r['batch']} | {r['bare_ips']:.0f} | "
            f"{r['real_ips']:.0f} | {r['scanned_ips']:.0f} | "
            + " | ".join(f"{r[f'{v}_ips']:.0f}" for v in loops)
            + f" | **{best / r['bare_ips']:.2f}** | {best / r['scanned_ips']:.2f} | {r['steps_per_round']} | "
            f"{r['compile']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the CNN on undistorted 28×28 digits, batch 16, 1 round of 4 steps",
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
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 1)")
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
    args.warmup = args.warmup if args.warmup is not None else 1
    args.steps_per_round = args.steps_per_round or (4 if quick else None)
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
