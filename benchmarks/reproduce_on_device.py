"""Table 1 cells trained where only JAX, Flax, Optax, Orbax and ml_collections are installed: an accelerator
lent for minutes.

Each cell runs exactly as ``reproduce.py`` runs it: ``python -m train`` with the cell's config and budget
(:func:`reproduce.run_cell`), in its own process, with validation, checkpoints, pictures and summary. Only its
data_dir differs: a pack (:mod:`train.packed`), one ``.npz`` file holding the raw splits the cells read, which
a run reads without TFDS, and whose training split it holds on the device (``data_source="auto"``). There is
no training loop here.

Three steps::

    # here, with TFDS: the raw splits the cells read, in one file (12 MB)
    PYTHONPATH=. python benchmarks/reproduce_on_device.py pack --data_dir out/data --out out/device/mnist.npz
    # there: the cells in priority order, several processes sharing the accelerator
    PYTHONPATH=. python benchmarks/reproduce_on_device.py run --pack out/device/mnist.npz --table1 \\
        --workers 8 --seconds 520 --out "$OUT"
    # back here: the records into benchmarks/results, RESULTS.md rendered
    PYTHONPATH=. python benchmarks/reproduce_on_device.py import "$OUT/records.json"

``run`` trains each cell in ``<out>/runs/<run>``, writes each finished cell's record in reproduce.py's format
(``machine`` names the device) to ``<out>/results/<run>.json`` and all of them to ``<out>/records.json``, which
``import`` reads (an existing record of the same run is kept). A cell still running after ``--seconds`` is
preempted (SIGTERM: a checkpoint of the step it reached); ``run`` again with the same ``--out`` resumes it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

from cells import EXPERIMENTS, TABLE1_BUDGET, TABLE1_CELLS, config_name, run_stem, with_recipe
from records import RESULTS_DIR, record_path, write_results
from reproduce import TEST_EXAMPLES, experiment_runs, git_commit, pending, plan, run_cell
from train import configs, packed

# --table1's order on the device: the CNN family first (the CPU's slowest cells, its second seed included), then
# the FCN family (minutes each on the CPU).
DEVICE_ORDER = tuple(sorted(TABLE1_CELLS, key=lambda cell: "cnn" not in cell))


def pack(data_dir: Path, out: Path, cells: list[str]) -> dict:
    """The raw training, validation and test splits of ``cells`` (which must share them) in one file."""
    from train import input_pipeline  # reads TFDS: here, not on the device

    splits = {
        (c.dataset, c.train_split, c.val_split, c.test_split)
        for c in (configs.get_config(config_name(x)) for x in cells)
    }
    if len(splits) != 1:
        raise ValueError(f"the cells read different splits {sorted(splits)}: pack them separately")
    dataset, *names = splits.pop()
    cache_dir = input_pipeline.cache_dir(data_dir)
    # Whole splits, as one process of a run reads them.
    arrays = {
        name: input_pipeline.load_split(
            dataset, name, data_dir=data_dir, shard_index=0, shard_count=1, drop_remainder=False, cache_dir=cache_dir
        )
        for name in names
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    packed.write(out, dataset, arrays, {"git_commit": git_commit()})
    return {"dataset": dataset, **{name: len(labels) for name, (_, labels) in arrays.items()}}


def device_name() -> str:
    import jax

    device = jax.devices()[0]
    return f"{getattr(device, 'device_kind', device.platform)} ({device.platform}, jax {jax.__version__})"


def test_examples(pack_path: Path) -> int:
    """The size of the pack's test split (the last it holds: :func:`pack` writes train, validation, test)."""
    held = packed.header(pack_path)
    return len(packed.read(pack_path, held["dataset"], held["splits"][-1])[1])


def run(specs: list[tuple[str, int, int]], pack_path: Path, out: Path, *, workers: int, seconds: float) -> int:
    """The cells in order, ``workers`` at a time, each ``python -m train`` on the pack; returns how many were
    recorded. Besides one file per record, ``<out>/records.json`` holds them all, rewritten after each cell:
    one plainly named file, which a machine lent for minutes can hand back."""
    (out / "results").mkdir(parents=True, exist_ok=True)
    deadline = None if math.isinf(seconds) else time.time() + seconds
    machine, commit = device_name(), packed.header(pack_path).get("git_commit", "unknown")
    size = test_examples(pack_path)
    # Several processes share one accelerator: none may take most of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    recorded: list[dict] = []
    lock = threading.Lock()

    def one(spec: tuple[str, int, int]) -> str:
        cell, steps, batch = spec
        if deadline is not None and time.time() > deadline - 60:
            return f"{cell}: not started, out of time"
        record = run_cell(
            cell,
            steps,
            batch,
            data_dir=pack_path.resolve(),
            runs_dir=out / "runs",
            results_dir=out / "results",
            python=sys.executable,
            deadline=deadline,
            machine=machine,
            commit=commit,
            test_examples=size,
        )
        if record is None:
            return f"{cell}: stopped or failed, see {out / 'runs' / run_stem(cell, steps, batch) / 'train.log'}"
        with lock:
            recorded.append(record)
            (out / "records.json").write_text(json.dumps(recorded, indent=1) + "\n")
        return f"{cell}: test error {record['test_error_pct']:.2f}% in {record['wall_time_s']:.0f} s"

    with concurrent.futures.ThreadPoolExecutor(workers) as pool, open(out / "run.log", "a") as log:
        for line in pool.map(one, specs):
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
    r.add_argument(
        "--experiments",
        default="",
        help=f"the runs of these smaller experiments not yet in benchmarks/results, comma-separated "
        f"({','.join(EXPERIMENTS)})",
    )
    r.add_argument("--workers", type=int, default=4)
    r.add_argument(
        "--seconds",
        type=float,
        default=math.inf,
        help="no cell runs past this many seconds from the start (default: no limit)",
    )
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
        cells = [*TABLE1_CELLS, *(cell for cell, _, _ in experiment_runs(list(EXPERIMENTS)))]
        print(json.dumps(pack(args.data_dir, args.out, cells)), flush=True)
        return 0
    if args.workers < 1 or args.seconds <= 0:
        parser.error("--workers must be at least 1 and --seconds positive")
    if sum(map(bool, (args.table1, args.cells, args.experiments))) != 1:
        parser.error("give one of --cells, --table1 and --experiments")
    if args.table1 and test_examples(args.pack) != TEST_EXAMPLES:  # Table 1 compares with the paper: the whole split
        parser.error(f"{args.pack} holds {test_examples(args.pack)} test examples, not {TEST_EXAMPLES}")
    steps, batch = TABLE1_BUDGET
    if args.table1:  # those without a record yet (benchmarks/results: what the CPU has already trained)
        specs = pending(plan([with_recipe(c) for c in DEVICE_ORDER], steps, batch), RESULTS_DIR)
    elif args.experiments:  # those without a record yet, as for --table1
        specs = pending(experiment_runs(args.experiments.split(",")), RESULTS_DIR)
    else:
        specs = plan(args.cells.split(","), None, None)
    recorded = run(specs, args.pack, args.out, workers=args.workers, seconds=args.seconds)
    print(f"{recorded} of {len(specs)} cells recorded in {args.out / 'results'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
