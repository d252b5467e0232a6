"""Table 1 cells trained where only JAX, Flax and Optax are installed: an accelerator lent for minutes.

Trains what ``reproduce.py`` trains (``python -m train`` with the cell's config and budget): the same model,
initialisation, optimiser, jitted step and per-step keys (:func:`train.compiled.functions`) on the same batches
in the same order (:class:`train.data.EpochBatches`, what the grain iterator yields), then the same test
evaluation (the full test split distorted once with ``test_seed``). Left out, because they need TFDS, grain or
orbax and do not change the result: the validation evaluations (curves only), checkpoints and pictures. On a
CPU a cell ends with the parameters and test error of ``python -m train`` bit for bit (tested).

Three steps::

    # here, with TFDS: the raw splits the cells read, in one file (11 MB)
    PYTHONPATH=. python benchmarks/reproduce_on_device.py pack --data_dir out/data --out out/device/mnist.npz
    # there: the cells in priority order, several processes sharing the accelerator (one H200: the 40 runs
    # of --table1 in 8 minutes with 8 workers, the GPU 97% busy; 2026-11-30)
    PYTHONPATH=. python benchmarks/reproduce_on_device.py run --pack out/device/mnist.npz --table1 \\
        --workers 8 --seconds 520 --out "$OUT"
    # back here: the records into benchmarks/results, RESULTS.md rendered
    PYTHONPATH=. python benchmarks/reproduce_on_device.py import "$OUT/records.json"

``run`` writes each finished cell's record in reproduce.py's format (``machine`` names the device) to
``<out>/results/<run>.json`` and all of them to ``<out>/records.json``, which ``import`` reads (an existing
record of the same run is kept). A cell unfinished after ``--seconds`` is abandoned without a record, and
``reproduce.py --table1`` trains it on the CPU. ``ml_collections`` (pure Python) is the one package beyond
JAX, Flax and Optax that the configs need.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import math
import multiprocessing
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from cells import TABLE1_BUDGET, TABLE1_CELLS, config_name, run_stem, with_recipe
from records import RESULTS_DIR, record_path, write_results
from reproduce import TEST_EXAMPLES, git_commit, make_record, pending, plan, train_sets
from train import configs

# --table1's order on the device: the CNN family first (the CPU's slowest cells, its second seed included), then
# the FCN family (minutes each on the CPU).
DEVICE_ORDER = tuple(sorted(TABLE1_CELLS, key=lambda cell: "cnn" not in cell))


def pack(data_dir: Path, out: Path, cells: list[str]) -> dict:
    """The raw training and test splits of ``cells`` (which must share them) in one compressed file."""
    from train import data  # reads TFDS: here, not on the device

    splits = {(c.dataset, c.train_split, c.test_split) for c in (configs.get_config(config_name(x)) for x in cells)}
    if len(splits) != 1:
        raise ValueError(f"the cells read different splits {sorted(splits)}: pack them separately")
    dataset, train_split, test_split = splits.pop()
    cache_dir = data.cache_dir(data_dir)
    # As train.train reads them: this process's (the only) shard of the training split, the whole test split.
    train = data.load_split(dataset, train_split, data_dir=data_dir, shard_index=0, shard_count=1, cache_dir=cache_dir)
    test = data.load_split(dataset, test_split, data_dir=data_dir, shard_index=0, shard_count=1,
                           drop_remainder=False, cache_dir=cache_dir)  # fmt: skip
    meta = {"dataset": dataset, "train_split": train_split, "test_split": test_split, "git_commit": git_commit()}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, train_images=train[0], train_labels=train[1], test_images=test[0], test_labels=test[1],
                        meta=np.asarray(json.dumps(meta)))  # fmt: skip
    return meta | {"train_examples": len(train[1]), "test_examples": len(test[1])}


def load_pack(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "meta"}
        return json.loads(str(f["meta"])), arrays


def train_cell(config, arrays: dict[str, np.ndarray], *, deadline: float | None = None) -> tuple[dict, object]:
    """``python -m train``'s run of ``config`` without validation, checkpoints or pictures:
    ``(summary, evaluated params)``; raises ``TimeoutError`` past ``deadline`` (``time.time()``)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from train import compiled, data, datasets, evaluation, loop
    from train.config_checks import validate
    from train.errors import NonFiniteLossError

    validate(config)
    t_start = time.perf_counter()
    fns = compiled.functions(config, nnx.eval_shape(lambda: compiled.build(config)))
    state = fns.init()
    other = state["other"]
    make_batch = data.EpochBatches(arrays["train_images"], arrays["train_labels"], config.batch_size, config.seed)

    def one_step(carry, batch, step):  # as train.train's: the step's keys and learning rate come from `step`
        index = jnp.asarray(step - 1, jnp.int32)
        params, opt_state, out = fns.train_step(*carry, other, batch["image"], batch["label"], index)
        return (params, opt_state), out

    every = max(1, min(500, config.steps // 4))
    clock = None
    for step, carry, fetched in loop.drive(
        one_step, (state["params"], state["opt_state"]), map(make_batch, range(config.steps)), sharding=fns.batch,
        start=0, stop=config.steps, boundary=lambda s: s == 1 or s % every == 0,
    ):  # fmt: skip
        bad = [i for i, out in enumerate(fetched, start=step - len(fetched) + 1) if not out["finite"]]
        if bad:
            raise NonFiniteLossError(f"non-finite loss or gradients at step {bad[0]}")
        params, opt_state = carry  # at the last step: the final state
        if clock is None:
            clock = (step, time.perf_counter())  # the first step's end starts the clock (compilation excluded)
        if deadline is not None and time.time() > deadline:
            raise TimeoutError(f"stopped at step {step} of {config.steps}: out of time")
    rate = (config.steps - clock[0]) / (time.perf_counter() - clock[1]) if config.steps > clock[0] else float("nan")
    evaluated = fns.eval_params(params, opt_state)
    test_images, test_labels = datasets.of(config).fixed_input(
        config.distortion, arrays["test_images"], arrays["test_labels"], seed=config.test_seed
    )
    test_set = evaluation.EvalSet(test_images, test_labels, size=len(test_labels), global_batch=config.eval_batch_size)
    test = evaluation.evaluate(fns.eval_step, evaluated, other, test_set, fns.batch)
    summary = {
        "config": config.name,
        "steps": config.steps,
        "test_error": test["error"],
        "test_loss": test["loss"],
        "test_examples": test_set.size,
        "images_per_s": rate * config.batch_size if rate == rate else None,
        "devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "wall_time_s": time.perf_counter() - t_start,
    }
    return summary, evaluated


def device_name() -> str:
    import jax

    device = jax.devices()[0]
    return f"{getattr(device, 'device_kind', device.platform)} ({device.platform}, jax {jax.__version__})"


_PACK: dict = {}  # per worker process: the pack, read once


def _run_one(cell: str, steps: int, batch: int, pack_path: str, out: str, deadline: float,
             command: str) -> tuple[str, dict | None]:  # fmt: skip
    """One cell in a worker process: its record written to ``out/results``; returns (a line for the log, record)."""
    if pack_path not in _PACK:
        _PACK[pack_path] = load_pack(Path(pack_path))
    meta, arrays = _PACK[pack_path]
    if time.time() > deadline - 30:
        return f"{cell}: not started, out of time", None
    config = configs.get_config(config_name(cell), train_sets(cell, steps, batch))
    config.data_dir = str(Path(pack_path).resolve().parent)  # what validate checks; the data come from the pack
    if (config.dataset, config.train_split, config.test_split) != (meta["dataset"], meta["train_split"],
                                                                    meta["test_split"]):  # fmt: skip
        return f"{cell}: the pack holds {meta['train_split']}/{meta['test_split']}, the cell reads other splits", None
    started = time.perf_counter()
    try:
        summary, _ = train_cell(config, arrays, deadline=deadline)
    except Exception:  # one cell's failure must not stop the others: its traceback goes to the log
        return f"{cell}: failed\n{traceback.format_exc()}", None
    # commit: the code packed and carried here, where there may be no git.
    record = make_record(cell, steps, batch, summary, command=command, wall_time_s=time.perf_counter() - started,
                         attempts=1, last_val_error=None, pictures={}, machine=device_name(),
                         commit=meta["git_commit"])  # fmt: skip
    path = Path(out) / "results" / f"{run_stem(cell, steps, batch)}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return f"{cell}: test error {record['test_error_pct']:.2f}% in {record['wall_time_s']:.0f} s", record


def run(specs: list[tuple[str, int, int]], pack_path: Path, out: Path, *, workers: int, seconds: float,
        command: str) -> int:  # fmt: skip
    """The cells in order over ``workers`` processes; returns how many were recorded.

    Besides one file per record (named like reproduce.py's, with ``+``), ``<out>/records.json`` holds them all,
    rewritten after each cell: one plainly named file, which a machine lent for minutes can hand back."""
    (out / "results").mkdir(parents=True, exist_ok=True)
    deadline = time.time() + seconds
    context = multiprocessing.get_context("spawn")  # each worker its own JAX runtime
    recorded: list[dict] = []
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool, open(out / "run.log", "a") as log:
        futures = [pool.submit(_run_one, c, s, b, str(pack_path), str(out), deadline, command) for c, s, b in specs]
        for future in concurrent.futures.as_completed(futures):
            line, record = future.result()
            if record is not None:
                recorded.append(record)
                (out / "records.json").write_text(json.dumps(recorded, indent=1) + "\n")
            stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
            print(f"[{stamp}] {line}", flush=True)
            log.write(f"[{stamp}] {line}\n")
    return len(recorded)


def import_records(bundle: Path, results_dir: Path) -> tuple[list[Path], list[Path]]:
    """The records of a ``records.json`` into ``results_dir``, one file each, as reproduce.py names them:
    ``(written, kept)``; an existing record of the same run is kept (as reproduce.py skips a recorded run)."""
    written, kept = [], []
    results_dir.mkdir(parents=True, exist_ok=True)
    for record in json.loads(bundle.read_text()):
        path = record_path(results_dir, record["cell"], record["steps"], record["batch_size"])
        if path.exists():
            kept.append(path)
            continue
        path.write_text(json.dumps(record, indent=2) + "\n")
        written.append(path)
    return written, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pack", help="the raw splits of the Table 1 cells into one file (needs TFDS)")
    p.add_argument("--data_dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run", help="train cells, several processes at once, records into OUT/results")
    r.add_argument("--pack", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--cells", default="", help="comma-separated cell[:steps[:batch]] (default: --table1's)")
    r.add_argument("--table1", action="store_true", help=f"Table 1's cells at {TABLE1_BUDGET} and its recipe")
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--seconds", type=float, default=math.inf,
                   help="no cell runs past this many seconds from the start (default: no limit)")  # fmt: skip
    i = sub.add_parser("import", help="a run's records.json into benchmarks/results, then RESULTS.md rendered")
    i.add_argument("records", type=Path)
    args = parser.parse_args(argv)
    if args.what == "import":
        written, kept = import_records(args.records, RESULTS_DIR)
        write_results()
        print(f"{len(written)} records written to {RESULTS_DIR}; RESULTS.md rendered", flush=True)
        for path in kept:
            print(f"kept the existing {path.name}: the imported run of the same name is left out", flush=True)
        return 0
    if args.what == "pack":
        print(json.dumps(pack(args.data_dir, args.out, list(TABLE1_CELLS))), flush=True)
        return 0
    if args.workers < 1 or args.seconds <= 0:
        parser.error("--workers must be at least 1 and --seconds positive")
    if args.table1 == bool(args.cells):
        parser.error("give either --cells or --table1")
    _, arrays = load_pack(args.pack)
    if len(arrays["test_labels"]) != TEST_EXAMPLES:  # the records compare with the paper's: the whole test split
        parser.error(f"{args.pack} holds {len(arrays['test_labels'])} test examples, not {TEST_EXAMPLES}")
    steps, batch = TABLE1_BUDGET
    if args.table1:  # those without a record yet (benchmarks/results: what the CPU has already trained)
        specs = pending(plan([with_recipe(c) for c in DEVICE_ORDER], steps, batch), RESULTS_DIR)
    else:
        specs = plan(args.cells.split(","), None, None)
    command = shlex.join(["python", "benchmarks/reproduce_on_device.py", *sys.argv[1:]])
    recorded = run(specs, args.pack, args.out, workers=args.workers, seconds=args.seconds, command=command)
    print(f"{recorded} of {len(specs)} cells recorded in {args.out / 'results'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
