"""Training-step speed: the ST-CNN (affine) and the CNN of ``stn_jax.models`` vs the same nets in PyTorch.

One *training step* = forward, cross-entropy loss, backward, optimiser update (AdamW,
localisation parameters at 0.1× the rate, as ``train.optimizer`` builds it), on a fixed
batch of 256 random images with random labels. Ours is the training loop's step without
its on-device distortion: the models ``train`` builds (``stn_jax.models.build_model``)
merged from their parameters inside one jitted function with ``jax.value_and_grad`` and
the Optax update (parameters and optimiser state donated). PyTorch 2.13 (CPU,
``torch.set_num_threads(2)``) runs the same architectures — conv widths, kernels, SAME
padding, pooling order, the localisation net on the 2×-average-pooled input,
``affine_grid`` + ``grid_sample`` (bilinear, zeros, ``align_corners=False``), the
transformer output average-pooled by 2 above 32 px — with ``torch.optim.AdamW`` in two
parameter groups; channels-first (NCHW) and channels_last are both timed and the faster
one is compared.

Each figure is the median over ``--repeats`` rounds after warm-up; in every round each
implementation runs ``--steps_per_round`` steps, interleaved, so a load change hits all
alike. Compile = JAX lower + compile of our step. Ratio = torch time / ours (> 1: ours
is faster).

``--profile`` prints where our step's time goes instead: each part of the ST-CNN step
timed on its own (forward + backward of the classifier, of the localisation net, of the
sampler, the optimiser update), and the per-operation totals of a
``jax.profiler`` trace of the whole step.

On a CPU ours runs with the XLA flag the training command sets (``train/xla_cpu.py``:
convolutions and reductions on XLA's own CPU kernels rather than YNNPACK); ``--xla_default``
times XLA's defaults instead. Where JAX will run on an accelerator (a CUDA, ROCm or TPU
plugin is installed, or ``JAX_PLATFORMS`` names one first) the flag is not set, and
PyTorch runs on ``cuda`` when JAX's backend is a GPU and PyTorch sees CUDA (else on the
CPU with 2 threads). Every step is synchronised with its device (``jax.block_until_ready``
on all outputs; ``torch.cuda.synchronize()`` on CUDA).

Run: ``PYTHONPATH=. python benchmarks/train_speed.py`` (``--no-write`` to only print,
``--out DIR`` to write ``DIR/train_speed.md`` instead of BENCHMARKS.md, ``--quick`` for a
smoke run of the ST-CNN at 28×28 and batch 16). By default the table is written into BENCHMARKS.md
between the markers below.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# This process shares an accelerator between JAX and PyTorch: no JAX preallocation.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import report
from stn_jax.models import build_model
from stn_jax.optim import with_localisation_lr
from train import xla_cpu

BEGIN = "<!-- BEGIN benchmarks/train_speed.py (generated, do not edit by hand) -->"
NAME = "train_speed.md"  # the table's file under --out
END = "<!-- END benchmarks/train_speed.py -->"
BATCH = 256
SIDES = (28, 42, 60)
MODELS = ("st_cnn_affine", "cnn")
LR = 1e-3
# Distributions of JAX's accelerator plugins (names normalised to lower case with "-").
ACCELERATOR_PLUGINS = ("jax-cuda", "jax-rocm", "libtpu")


def accelerator_expected(environ=os.environ, distributions=None) -> bool:
    """Whether JAX's default backend will be an accelerator, decided before the backend starts.

    ``JAX_PLATFORMS`` (or ``JAX_PLATFORM_NAME``) decides when set: its first platform; else
    whether a CUDA, ROCm or TPU plugin is installed. (XLA reads ``XLA_FLAGS`` once, when the
    backends start, so the CPU flag must be decided without starting them.)
    """
    platforms = environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or ""
    first = platforms.split(",")[0].strip().lower()
    if first:
        return first != "cpu"
    if distributions is None:
        distributions = [d.metadata["Name"] or "" for d in importlib.metadata.distributions()]
    names = {name.lower().replace("_", "-") for name in distributions}
    return any(name.startswith(ACCELERATOR_PLUGINS) for name in names)


def torch_device(torch) -> str:
    """``"cuda"`` when JAX runs on a GPU and PyTorch sees CUDA, else ``"cpu"``."""
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


# -- ours -------------------------------------------------------------------------------------------


def jax_step(name: str, side: int, batch: int = BATCH, *, dtype=jnp.float32):
    """(step, params, opt_state, images, labels, model): ``step(params, opt_state, x, y) -> (params, opt_state, loss)``."""
    model = build_model(name, num_classes=10, input_shape=(side, side, 1), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = with_localisation_lr(optax.adamw(LR, weight_decay=1e-4), multiplier=0.1)
    opt_state = tx.init(params)

    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p, rest)(x.astype(dtype), train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, side, side, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    return jax.jit(step, donate_argnums=(0, 1)), params, opt_state, x, y, model


def compile_ours(name, side, batch=BATCH):
    step, params, opt_state, x, y, model = jax_step(name, side, batch)
    t0 = time.perf_counter()
    compiled = step.lower(params, opt_state, x, y).compile()
    compile_s = time.perf_counter() - t0
    state = {"params": params, "opt": opt_state}

    def run():
        state["params"], state["opt"], loss = compiled(state["params"], state["opt"], x, y)
        jax.block_until_ready((state["params"], state["opt"], loss))

    return run, compile_s, model


# -- PyTorch ------------------------------------------------------------------------------------------


def torch_nets(torch):
    nn, F = torch.nn, torch.nn.functional

    class CNN(nn.Module):
        """conv 9×9 → max-pool 2 → ReLU → conv 7×7 → max-pool 2 → ReLU → linear (SAME padding)."""

        def __init__(self, side, channels=(32, 32), classes=10):
            super().__init__()
            self.conv0 = nn.Conv2d(1, channels[0], 9, padding=4)
            self.conv1 = nn.Conv2d(channels[0], channels[1], 7, padding=3)
            self.out = nn.Linear((side // 2 // 2) ** 2 * channels[1], classes)

        def forward(self, x):
            x = F.relu(F.max_pool2d(self.conv0(x), 2))
            x = F.relu(F.max_pool2d(self.conv1(x), 2))
            return self.out(torch.flatten(x, 1))

    class STCNN(nn.Module):
        """Localisation (avg-pool 2, conv 5×5 20 → pool → conv 5×5 20 → pool → FC 50 → 6) → sampler → CNN."""

        def __init__(self, side, channels, classes=10):
            super().__init__()
            self.side, self.pool = side, 2 if side > 32 else 1
            self.loc0 = nn.Conv2d(1, 20, 5, padding=2)
            self.loc1 = nn.Conv2d(20, 20, 5, padding=2)
            self.loc_fc = nn.Linear((side // 2 // 2 // 2) ** 2 * 20, 50)
            self.loc_head = nn.Linear(50, 6)
            nn.init.zeros_(self.loc_head.weight)
            with torch.no_grad():
                self.loc_head.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
            self.cnn = CNN(side // self.pool, channels, classes)

        def forward(self, x):
            h = F.avg_pool2d(x, 2)
            h = F.relu(F.max_pool2d(self.loc0(h), 2))
            h = F.relu(F.max_pool2d(self.loc1(h), 2))
            theta = self.loc_head(F.relu(self.loc_fc(torch.flatten(h, 1)))).view(-1, 2, 3)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if self.pool > 1:
                warped = F.avg_pool2d(warped, self.pool)
            return self.cnn(warped)

    return CNN, STCNN


def torch_step(torch, name, side, channels, *, channels_last, batch=BATCH, device="cpu"):
    CNN, STCNN = torch_nets(torch)
    torch.manual_seed(0)
    model = (STCNN(side, channels) if name == "st_cnn_affine" else CNN(side, channels)).to(device)
    loc = [p for n, p in model.named_parameters() if n.startswith("loc")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("loc")]
    groups = [{"params": rest, "lr": LR}] + ([{"params": loc, "lr": 0.1 * LR}] if loc else [])
    opt = torch.optim.AdamW(groups, lr=LR, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((batch, 1, side, side), dtype=np.float32)).to(device)
    y = torch.from_numpy(rng.integers(0, 10, batch)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sync()

    return run


def classifier_channels(model) -> tuple[int, int]:
    features = model.classifier.features if hasattr(model, "classifier") else model.features
    return features.conv_0.out_features, features.conv_1.out_features


# -- timing -------------------------------------------------------------------------------------------


def time_interleaved(runs: dict, repeats: int, steps_per_round: int, warmup: int = 2) -> dict[str, float]:
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                run()
            times[k].append((time.perf_counter() - t0) / steps_per_round)
    return {k: statistics.median(v) for k, v in times.items()}


def machine(device: str = "cpu") -> str:
    import torch

    devices = jax.devices()
    where = f"jax backend `{jax.default_backend()}` ({len(devices)}× {devices[0].device_kind})"
    where += f", torch on cuda ({torch.cuda.get_device_name()})" if device == "cuda" else ", torch on the CPU"
    return (
        f"{report.cpu_name()}, {platform.system()} {platform.machine()}; {where}; Python "
        f"{platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}"
    )


def benchmark(args, on_row=None) -> list[dict]:
    import torch

    device = torch_device(torch)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # as XLA autotunes its convolutions
    else:
        torch.set_num_threads(2)
    rows = []
    for side in args.sides:
        for name in args.models:
            ours, compile_s, model = compile_ours(name, side, args.batch)
            channels = classifier_channels(model)
            runs = {
                "ours": ours,
                "torch NCHW": torch_step(
                    torch, name, side, channels, channels_last=False, batch=args.batch, device=device
                ),
                "torch channels_last": torch_step(
                    torch, name, side, channels, channels_last=True, batch=args.batch, device=device
                ),
            }
            med = time_interleaved(runs, args.repeats, args.steps_per_round, warmup=args.warmup)
            layout = "NCHW" if med["torch NCHW"] <= med["torch channels_last"] else "channels_last"
            t_torch = med[f"torch {layout}"]
            row = dict(
                model=name,
                side=side,
                channels=channels,
                ours=med["ours"],
                torch=t_torch,
                layout=layout,
                other=med["torch channels_last" if layout == "NCHW" else "torch NCHW"],
                ratio=t_torch / med["ours"],
                compile=compile_s,
                batch=args.batch,
            )
            rows.append(row)
            print(
                f"{name:14s} {side}×{side}  ours {1e3 * row['ours']:8.1f} ms ({args.batch / row['ours']:6.0f} img/s)  "
                f"torch {1e3 * t_torch:8.1f} ms ({args.batch / t_torch:6.0f} img/s, {layout})  "
                f"ratio {row['ratio']:.2f}  compile {compile_s:.2f} s",
                flush=True,
            )
            if on_row is not None:
                on_row(rows)
    return rows


def xla_flags_note(args, backend: str) -> str:
    if args.xla_default:
        return "XLA's defaults"
    if args.xla_flag == "accelerator":
        return f"the training command's CPU flag not set: JAX was expected on an accelerator, runs on `{backend}`"
    if backend != "cpu":
        return f"the training command's CPU flag, which does nothing on `{backend}`"
    return "as `python -m train` sets them, see `train/xla_cpu.py`"


def render(rows, args, load_before, load_after, *, partial=False) -> str:
    import torch

    device = torch_device(torch)
    cmd = "PYTHONPATH=. python benchmarks/train_speed.py" + (f" {' '.join(args.argv)}" if args.argv else "")
    if device == "cuda":
        torch_where = (
            f"torch on cuda (cudnn.benchmark; TF32: convolutions {torch.backends.cudnn.allow_tf32}, "
            f"matmuls {torch.backends.cuda.matmul.allow_tf32}; JAX at its default precision)"
        )
    else:
        torch_where = "torch: 2 threads"
    lines = ["## Training step: ST-CNN and CNN (`stn_jax.models`) vs the same nets in PyTorch", ""]
    if partial:
        lines += ["**Partial table: the run was still going (or was interrupted) when this was written.**", ""]
    lines += [
        f"Command: `{cmd}`  ",
        f"Machine: {machine(device)}  ",
        f"XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}` ({xla_flags_note(args, jax.default_backend())})  ",
        f"Load average (1 min) before/after: {load_before:.2f} / "
        + (f"{load_after:.2f}" if load_after is not None else "—")
        + f"; batch {args.batch}, float32, "
        f"medians of {args.repeats} interleaved rounds of {args.steps_per_round} steps after warm-up, every step "
        "synchronised with the device; one step = "
        f"forward, cross-entropy, backward, AdamW update (localisation at 0.1×). {torch_where}, faster of NCHW "
        "and channels_last. ST-CNN classifier widths as `build_model` matches them to the CNN's parameter count.",
        "",
        "Ratio = torch time / ours (above 1: ours is faster). Compile = JAX lower + compile of our step.",
        "",
        "| model | input | ours ms | ours img/s | torch ms (layout) | torch img/s | **ratio** | compile s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        label = "ST-CNN (affine)" if r["model"] == "st_cnn_affine" else "CNN"
        lines.append(
            f"| {label} {r['channels'][0]}-{r['channels'][1]} | {r['side']}×{r['side']}×1 | {1e3 * r['ours']:.1f} | "
            f"{r['batch'] / r['ours']:.0f} | {1e3 * r['torch']:.1f} ({r['layout']}) | {r['batch'] / r['torch']:.0f} | "
            f"**{r['ratio']:.2f}** | {r['compile']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# -- profile ------------------------------------------------------------------------------------------


def _timed(fn, *args, repeats=7):
    compiled = jax.jit(fn).lower(*args).compile()
    for _ in range(2):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile(args) -> None:
    """Parts of the ST-CNN step timed alone, then a profiler trace of the whole step, per op."""
    import stn_jax

    for side in args.sides:
        model = build_model("st_cnn_affine", num_classes=10, input_shape=(side, side, 1), rngs=nnx.Rngs(0))
        cnn = build_model("cnn", num_classes=10, input_shape=(side, side, 1), rngs=nnx.Rngs(0))
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.random((args.batch, side, side, 1), dtype=np.float32))
        y = jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)
        st = model.transformers[0]
        g_loc, p_loc, r_loc = nnx.split(st.localisation, nnx.Param, ...)
        g_cls, p_cls, r_cls = nnx.split(model.classifier, nnx.Param, ...)
        g_cnn, p_cnn, r_cnn = nnx.split(cnn, nnx.Param, ...)
        pool = model.output_pool
        warped_shape = (args.batch, side // pool, side // pool, 1)
        xw = jnp.asarray(rng.random(warped_shape, dtype=np.float32))

        def cls_loss(p, xw):
            return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(g_cls, p, r_cls)(xw), y).mean()

        def cnn_loss(p, x):
            return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(g_cnn, p, r_cnn)(x), y).mean()

        def loc_loss(p, x):
            return jnp.sum(nnx.merge(g_loc, p, r_loc)(x) ** 2)

        theta = jnp.tile(jnp.array([[0.9, 0.1, 0.05], [-0.1, 0.9, 0.0]], jnp.float32), (args.batch, 1, 1))

        def sampler_loss(theta, x):
            def one(img, th):
                return stn_jax.sample(img, stn_jax.affine_grid(th, (side, side)))

            out = jax.vmap(one)(x, theta)
            if pool > 1:
                out = nnx.avg_pool(out, (pool, pool), strides=(pool, pool))
            return jnp.sum(out**2)

        tx = with_localisation_lr(optax.adamw(LR, weight_decay=1e-4), multiplier=0.1)
        params = nnx.state(model, nnx.Param)
        opt_state = tx.init(params)

        def update(params, opt_state, grads):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        step, sp, so, sx, sy, _ = jax_step("st_cnn_affine", side, args.batch)
        full = _timed(lambda p, o: step(p, o, sx, sy), *jax.tree.map(jnp.copy, (sp, so)))
        parts = {
            "whole ST-CNN step": full,
            "classifier CNN fwd+bwd (on the warped input)": _timed(jax.grad(cls_loss), p_cls, xw),
            "localisation net fwd+bwd": _timed(jax.grad(loc_loss), p_loc, x),
            "grid + sampler (+ output pool) fwd+bwd w.r.t. θ": _timed(jax.grad(sampler_loss), theta, x),
            "AdamW update": _timed(update, params, opt_state, params),
            "(baseline CNN fwd+bwd on the full input)": _timed(jax.grad(cnn_loss), p_cnn, x),
        }
        print(f"\n{side}×{side}, batch {args.batch}:")
        for k, v in parts.items():
            print(f"  {k:55s} {1e3 * v:8.1f} ms  ({100 * v / full:5.1f}% of the step)")
        if args.trace:
            trace_ops(step, sp, so, sx, sy, side)


def trace_ops(step, params, opt_state, x, y, side, steps=5) -> None:
    """Sums the XLA CPU thunk times of a ``jax.profiler`` trace of ``steps`` steps, by op name."""
    import glob
    import gzip
    import json
    import re
    import tempfile

    compiled = step.lower(params, opt_state, x, y).compile()
    p, o = jax.tree.map(jnp.copy, (params, opt_state))
    for _ in range(2):
        p, o, loss = compiled(p, o, x, y)
    loss.block_until_ready()
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(steps):
                p, o, loss = compiled(p, o, x, y)
            loss.block_until_ready()
        (path,) = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    totals: dict[str, float] = {}
    hlo = compiled.as_text()
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        name = e.get("name", "")
        if name.startswith(("PjRt", "Thunk", "ThunkExecutor", "$")) or "Execute" in name:
            continue
        totals[name] = totals.get(name, 0.0) + e["dur"] / 1e3 / steps
    kinds: dict[str, float] = {}
    for name, ms in totals.items():
        m = re.search(rf"%{re.escape(name)} = \S+ (\w[\w-]*)\(", hlo)
        kind = m.group(1) if m else "?"
        if kind == "fusion":
            body = re.search(rf"%{re.escape(name)} = .*calls=(%[\w.-]+)", hlo)
            kind = f"fusion ({body.group(1)})" if body else kind
        kinds[kind.split(" (")[0]] = kinds.get(kind.split(" (")[0], 0.0) + ms
    print(f"  profiler trace, {side}×{side}: top ops (ms per step)")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:25]:
        m = re.search(rf"%{re.escape(name)} = (\S+) (\w[\w-]*)\(", hlo)
        print(f"    {ms:8.2f}  {name}  {m.group(2) + ' ' + m.group(1) if m else ''}")
    print("  by HLO op kind:", {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])})


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the ST-CNN at 28×28 only, batch 16, 1 round of 1 step (unless given)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 7; 1 with --quick)")
    parser.add_argument("--steps_per_round", type=int, default=None, help="default 2; 1 with --quick")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2; 1 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help=f"default {BATCH}; 16 with --quick")
    parser.add_argument(
        "--sides",
        type=lambda s: tuple(int(v) for v in s.split(",")),
        default=None,
        help="default " + ",".join(map(str, SIDES)) + "; 28 with --quick",
    )
    parser.add_argument(
        "--models",
        type=lambda s: tuple(s.split(",")),
        default=None,
        help="default " + ",".join(MODELS) + "; st_cnn_affine with --quick",
    )
    parser.add_argument("--profile", action="store_true", help="where our ST-CNN step's time goes (no table)")
    parser.add_argument("--trace", action="store_true", help="with --profile: also a jax.profiler trace, per op")
    parser.add_argument(
        "--xla_default",
        action="store_true",
        help="leave XLA's CPU defaults (YNNPACK convolutions) instead of the training command's flag",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; write no file")
    parser.add_argument("--out", default=None, help="write the table as OUT/train_speed.md instead of BENCHMARKS.md")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    defaults = dict(
        repeats=(1, 7),
        steps_per_round=(1, 2),
        warmup=(1, 2),
        batch=(16, BATCH),
        sides=((28,), SIDES),
        models=(("st_cnn_affine",), MODELS),
    )
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def write_out(args, table: str) -> Path:
    return report.write_table(table, out=args.out, name=NAME, output=args.output, begin=BEGIN, end=END)


def main(argv=None):
    args = parse_args(argv)
    # Before JAX's backend starts (XLA reads its flags once), as `python -m train` runs; not
    # on an accelerator, where the CPU flag means nothing.
    if args.xla_default:
        args.xla_flag = "default"
    elif accelerator_expected():
        args.xla_flag = "accelerator"
    else:
        xla_cpu.use_xla_convolutions()
        args.xla_flag = "cpu"
    if args.profile:
        profile(args)
        return
    backend = jax.default_backend()
    print(f"jax backend {backend} {jax.devices()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    if args.xla_flag == "accelerator" and backend == "cpu":
        print(
            "note: expected an accelerator but JAX runs on the CPU: timed without the training command's CPU flag",
            flush=True,
        )
    load_before = os.getloadavg()[0]

    def partial(rows):
        if args.out and not args.no_write:
            write_out(args, render(rows, args, load_before, None, partial=True))

    rows = benchmark(args, on_row=partial)
    table = render(rows, args, load_before, os.getloadavg()[0])
    print()
    print(table)
    if not args.no_write:
        path = report.write_table(table, out=args.out, name=NAME, output=args.output, begin=BEGIN, end=END)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
