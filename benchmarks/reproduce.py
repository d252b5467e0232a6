"""Reproduce the paper's distorted-MNIST table (Jaderberg et al. 2015, Table 1) cell by cell.

Each *cell* is one model on one distortion (e.g. ``rts_st_cnn_affine``). For each chosen
cell this driver runs the training CLI in a subprocess::

    python -m train --config mnist_<distortion>_<model> --workdir <runs>/<cell>__s<steps>_b<batch>
                    --data_dir <data> --set steps=... batch_size=... warmup_steps=... eval_every=...
                    checkpoint_every=... log_every=...

which trains on ``train[:92%]`` with fresh distortions every step, validates on
``train[92%:]`` and finally evaluates on the **full 10,000-image MNIST test split**,
distorted once with the fixed seed ``test_seed=0`` (:func:`train.distortions.test_set`;
the driver checks ``test_examples == 10000`` before recording). The result goes to
``benchmarks/results/<cell>__s<steps>_b<batch>.json`` (test error, steps, batch, images
seen, wall time, the exact command, ...) with the last inputs-vs-transformer picture and
the curves copied beside it, and ``RESULTS.md`` is regenerated from every record there
(never typed by hand).

Resumable: a cell whose record exists is skipped; a cell interrupted mid-way has a
workdir with checkpoints, and rerunning the same command continues from the latest one
(the training loop resumes by itself; wall time is summed over the attempts). Runs in the
background, e.g.::

    nohup env PYTHONPATH=. python benchmarks/reproduce.py --cells rts_st_cnn_affine,rts_cnn \\
        --steps 4000 --batch 128 --stop_at 01:30 > out/reproduce.log 2>&1 &

Options: ``--cells`` (comma-separated, default: every cell of :data:`cells.DEFAULT_ORDER`; ``cell:steps:batch``
gives one cell its own budget),
``--steps``/``--batch`` (the budget, recorded with each result; default per cell),
``--stop_at HH:MM`` (UTC; interrupts the running cell there, resumable later),
``--pause_file`` (waits between cells while that file exists), ``--list``, ``--dry_run``,
``--render`` (only regenerate RESULTS.md). A cell may name recipe variants, alone or combined
(``tc_cnn+fixed_train+seed_1``; see :data:`cells.VARIANTS`): recorded beside the standard recipe and
compared with the CNN of the same variants, never entered in Table 1.

The cells, variants and the paper's numbers are named in ``cells.py``; the records and RESULTS.md
rendered from them live in ``records.py``. This file runs cells.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import report
from cells import (
    DEFAULT_ORDER,
    EXPERIMENTS,
    ROOT,
    RUNS_DIR,
    SEARCH_BUDGET,
    SEARCH_CELLS,
    SEARCH_VARIANTS,
    TABLE1_BUDGET,
    TABLE1_CELLS,
    cell_label,
    config_name,
    extra_overrides,
    paper_error,
    parse_cell,
    run_stem,
    split_variant,
    variant_for,
    with_recipe,
)
from records import RESULTS_DIR, RESULTS_MD, record_path, write_results
from train import configs

TRAIN_EXAMPLES = 55_200  # train[:92%]
TEST_EXAMPLES = 10_000
# Default budget (steps, batch) per cell; --steps/--batch override it for every chosen cell.
# Sized for 2 CPU cores (measured: CNN on 42×42 trains at ~140-180 images/s, on 28×28 ~350,
# ST-CNN on 42×42 ~490); see RESULTS.md for the budgets actually run.
DEFAULT_BUDGET = {
    "rts_st_cnn_affine": (1000, 128),
    "rts_cnn": (1000, 128),
    "tc_cnn": (300, 128),
    "tc_st_cnn_affine": (300, 128),
    "rts_st_cnn_projective": (1000, 128),
    "rts_st_cnn_tps": (1000, 128),
    "rts_fcn": (1000, 128),
    "rts_st_fcn_affine": (1000, 128),
}
SMALL_BUDGET = (600, 128)


def budget_overrides(steps: int, batch: int) -> dict[str, int]:
    """Everything the driver sets besides the config's own defaults (recorded with the result)."""
    every = max(1, steps // 2)
    return {
        "steps": steps,
        "batch_size": batch,
        "warmup_steps": min(200, max(1, steps // 20)),
        "eval_every": every,
        "checkpoint_every": min(every, 500),
        "log_every": 50,
    }


def train_sets(cell: str, steps: int, batch: int) -> list[str]:
    """The ``--set key=value`` strings of the cell's training command: the budget and the cell's overrides."""
    return [f"{k}={v}" for k, v in (budget_overrides(steps, batch) | extra_overrides(cell)).items()]


def train_command(
    cell: str, steps: int, batch: int, *, workdir: Path, data_dir: Path, python: str = "python"
) -> list[str]:
    return [
        python,
        "-m",
        "train",
        "--config",
        config_name(cell),
        "--workdir",
        str(workdir),
        "--data_dir",
        str(data_dir),
        "--set",
        *train_sets(cell, steps, batch),
    ]


def pending(cells: list[tuple[str, int, int]], results_dir: Path) -> list[tuple[str, int, int]]:
    """The (cell, steps, batch) of ``cells`` that have no record yet."""
    return [c for c in cells if not record_path(results_dir, *c).exists()]


# -- running a cell ---------------------------------------------------------------------------


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip()
    except OSError:
        return "unknown"


def _last_val(workdir: Path) -> float | None:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return None
    val = None
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("split") == "val":
            val = row.get("error")
    return val


def _seconds_until(stop_at: str | None) -> float | None:
    if not stop_at:
        return None
    now = dt.datetime.now(dt.UTC)
    hour, minute = map(int, stop_at.split(":"))
    target = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target < now - dt.timedelta(hours=12):
        target += dt.timedelta(days=1)
    return (target - now).total_seconds()


def run_cell(
    cell: str,
    steps: int,
    batch: int,
    *,
    data_dir: Path,
    runs_dir: Path,
    results_dir: Path,
    python: str,
    stop_at: str | None = None,
    deadline: float | None = None,
    machine: str | None = None,
    commit: str | None = None,
    test_examples: int = TEST_EXAMPLES,
) -> dict | None:
    """Trains (or resumes) one cell and writes its record; None if it was stopped before the end.

    Stopped at ``stop_at`` (HH:MM UTC) or ``deadline`` (``time.time()``) like a preempted run: SIGTERM, a
    checkpoint of the step it reached, resumable. ``machine`` and ``commit`` default to this CPU's name and
    this checkout's commit; the summary must report ``test_examples`` test examples."""
    stem = run_stem(cell, steps, batch)
    workdir = runs_dir / stem
    workdir.mkdir(parents=True, exist_ok=True)
    command = train_command(cell, steps, batch, workdir=workdir, data_dir=data_dir, python=python)
    shown = ["python", *command[1:]]
    shown[shown.index("--workdir") + 1] = (
        str(workdir.relative_to(ROOT)) if workdir.is_relative_to(ROOT) else str(workdir)
    )
    if data_dir.is_relative_to(ROOT):
        shown[shown.index("--data_dir") + 1] = str(data_dir.relative_to(ROOT))
    attempts_path = workdir / "driver_attempts.json"
    attempts = json.loads(attempts_path.read_text()) if attempts_path.exists() else []
    attempts.append({"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "seconds": None})
    attempts_path.write_text(json.dumps(attempts, indent=1))
    remaining = _seconds_until(stop_at) if deadline is None else deadline - time.time()
    if remaining is not None and remaining <= 60:
        print(f"[reproduce] {cell}: not started, the stop time is near", flush=True)
        attempts.pop()
        attempts_path.write_text(json.dumps(attempts, indent=1))
        return None
    print(f"[reproduce] {cell}: {shlex.join(shown)}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    with open(workdir / "train.log", "a") as log:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            child.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            print(f"[reproduce] {cell}: stop time reached, preempting it (resumable)", flush=True)
            child.send_signal(signal.SIGTERM)  # a checkpoint of the step it reached, then exit code 7
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        except BaseException:
            child.send_signal(signal.SIGINT)
            child.wait(timeout=120)
            raise
        finally:
            attempts[-1]["seconds"] = round(time.perf_counter() - t0, 1)
            attempts[-1]["returncode"] = child.returncode
            attempts_path.write_text(json.dumps(attempts, indent=1))
    summary_path = workdir / "summary.json"
    if child.returncode != 0 or not summary_path.exists():
        print(f"[reproduce] {cell}: exit code {child.returncode}; see {workdir / 'train.log'}", flush=True)
        return None
    summary = json.loads(summary_path.read_text())
    if summary.get("steps") != steps or summary.get("test_examples") != test_examples:
        raise RuntimeError(f"{cell}: summary {summary_path} does not match the budget or the full test set: {summary}")
    results_dir.mkdir(parents=True, exist_ok=True)
    pictures = {}
    samples = sorted((workdir / "samples").glob("step_*.png"))
    if samples:
        shutil.copyfile(samples[-1], results_dir / f"{stem}_samples.png")
        pictures["samples"] = f"{stem}_samples.png"
    if (workdir / "curves.png").exists():
        shutil.copyfile(workdir / "curves.png", results_dir / f"{stem}_curves.png")
        pictures["curves"] = f"{stem}_curves.png"
    wall = sum(a["seconds"] or 0.0 for a in attempts)
    record = make_record(
        cell,
        steps,
        batch,
        summary,
        command=shlex.join(shown),
        wall_time_s=wall,
        attempts=len(attempts),
        last_val_error=_last_val(workdir),
        pictures=pictures,
        machine=machine or report.cpu_name(),
        commit=commit or git_commit(),
    )
    record_path(results_dir, cell, steps, batch).write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"[reproduce] {cell}: test error {record['test_error_pct']:.2f}% (paper {record['paper_error_pct']}) "
        f"in {wall:.0f} s",
        flush=True,
    )
    return record


def make_record(
    cell: str,
    steps: int,
    batch: int,
    summary: dict,
    *,
    command: str,
    wall_time_s: float,
    attempts: int,
    last_val_error: float | None,
    pictures: dict,
    machine: str,
    commit: str,
) -> dict:
    """The record of a finished run of ``cell`` from its training summary (what RESULTS.md is rendered from);
    ``commit``: the code that trained it."""
    config = _config(cell, steps, batch)
    return {
        "cell": cell,
        "distortion": parse_cell(cell)[0],
        "model": config["model"],
        "label": cell_label(cell),
        "variant": split_variant(cell)[1],
        "config": config_name(cell),
        "paper_error_pct": paper_error(cell),
        "test_error": summary["test_error"],
        "test_error_pct": round(100 * summary["test_error"], 2),
        "test_examples": summary["test_examples"],
        "test_split": config.get("test_split", "test"),
        "test_seed": config.get("test_seed", 0),
        "last_val_error": last_val_error,
        "steps": steps,
        "batch_size": batch,
        "images_seen": steps * batch,
        "epochs": round(steps * batch / TRAIN_EXAMPLES, 2),
        "overrides": budget_overrides(steps, batch) | extra_overrides(cell),
        "optimizer": config.get("optimizer"),
        "learning_rate": config.get("learning_rate"),
        "schedule": config.get("schedule"),
        "wall_time_s": round(wall_time_s, 1),
        "attempts": attempts,
        "train_images_per_s": summary.get("images_per_s"),
        "devices": summary.get("devices"),
        "xla_flags": summary.get("xla_flags"),  # absent from runs before the training command set any
        "command": command,
        "git_commit": commit,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "pictures": pictures,
    }


def _config(cell: str, steps: int, batch: int) -> dict:
    """The run's configuration, as its training command builds it from the experiment's config and ``--set``."""
    config = configs.get_config(config_name(cell), train_sets(cell, steps, batch))
    return json.loads(config.to_json())


# -- command line ------------------------------------------------------------------------------------


def experiment_runs(names: list[str]) -> list[tuple[str, int, int]]:
    """The runs of the named :data:`EXPERIMENTS`, in order, each once (experiments share runs)."""
    unknown = [name for name in names if name not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"unknown experiments {unknown}: choose from {', '.join(EXPERIMENTS)}")
    return list(dict.fromkeys(run for name in names for run in EXPERIMENTS[name].runs()))


def plan(cells: list[str], steps: int | None, batch: int | None) -> list[tuple[str, int, int]]:
    """(cell, steps, batch) per cell; a cell may carry its own budget as ``cell:steps:batch``."""
    out = []
    for spec in cells:
        cell, *budget = spec.split(":")
        parse_cell(cell)
        s, b = DEFAULT_BUDGET.get(cell, SMALL_BUDGET)
        s, b = steps or s, batch or b
        if budget:
            s = int(budget[0])
            b = int(budget[1]) if len(budget) > 1 else b
        out.append((cell, s, b))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", default=",".join(DEFAULT_ORDER), help="comma-separated cells (see --list)")
    parser.add_argument(
        "--table1",
        action="store_true",
        help=f"the cells of Table 1 at its budget {TABLE1_BUDGET} and recipe (instead of --cells)",
    )
    parser.add_argument(
        "--search",
        action="store_true",
        help=f"the recipe search: {', '.join(SEARCH_CELLS)} at {SEARCH_BUDGET}, one variant at a time",
    )
    parser.add_argument(
        "--experiments",
        nargs="?",
        const=",".join(EXPERIMENTS),
        default=None,
        help=f"the runs of these smaller experiments at their budgets, comma-separated (default when given: "
        f"{','.join(EXPERIMENTS)})",
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps of every chosen cell")
    parser.add_argument("--batch", type=int, default=None, help="batch size of every chosen cell")
    parser.add_argument("--data_dir", default=str(ROOT / "out" / "data"))
    parser.add_argument("--runs_dir", default=str(RUNS_DIR))
    parser.add_argument("--results_dir", default=str(RESULTS_DIR))
    parser.add_argument("--stop_at", default=None, help="HH:MM UTC: interrupt the running cell then (resumable)")
    parser.add_argument(
        "--pause_file",
        default=str(ROOT / "out" / "reproduce.pause"),
        help="while this file exists, wait before starting the next cell",
    )
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--list", action="store_true", help="list the cells with budgets and state")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--render", action="store_true", help="only regenerate RESULTS.md from the records")
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir)
    if args.render:
        write_results(results_dir)
        print(f"wrote {RESULTS_MD}")
        return 0
    if sum(map(bool, (args.table1, args.search, args.experiments))) > 1:
        parser.error("--table1, --search and --experiments are three plans: choose one")
    cells = [c for c in args.cells.split(",") if c]
    if args.table1:
        cells = [f"{with_recipe(c)}:{TABLE1_BUDGET[0]}:{TABLE1_BUDGET[1]}" for c in TABLE1_CELLS]
    if args.search:
        # The CNN runs each variant less its transformer-only parts: a run another variant may share, planned once.
        runs = [with_recipe(c, variant_for(c, v)) for v in ("", *SEARCH_VARIANTS) for c in SEARCH_CELLS]
        cells = [f"{c}:{SEARCH_BUDGET[0]}:{SEARCH_BUDGET[1]}" for c in dict.fromkeys(runs)]
    if args.experiments:
        cells = [f"{c}:{s}:{b}" for c, s, b in experiment_runs(args.experiments.split(","))]
    todo = plan(cells, args.steps, args.batch)
    left = set(pending(todo, results_dir))
    if args.list or args.dry_run:
        width = max((len(cell) for cell, _, _ in todo), default=0)
        for cell, steps, batch in todo:
            state = "todo" if (cell, steps, batch) in left else "done"
            workdir = Path(args.runs_dir) / run_stem(cell, steps, batch)
            print(f"{cell:{width}s} {steps:6d} × {batch:4d}  {state}  paper {paper_error(cell)}")
            if args.dry_run:
                print(
                    "   ", shlex.join(train_command(cell, steps, batch, workdir=workdir, data_dir=Path(args.data_dir)))
                )
        return 0
    failures = 0
    for cell, steps, batch in todo:
        if (cell, steps, batch) not in left:
            print(f"[reproduce] {cell}: recorded ({steps} × {batch}), skipped", flush=True)
            continue
        while Path(args.pause_file).exists():
            time.sleep(5)
        record = run_cell(
            cell,
            steps,
            batch,
            data_dir=Path(args.data_dir).absolute(),
            runs_dir=Path(args.runs_dir),
            results_dir=results_dir,
            python=args.python,
            stop_at=args.stop_at,
        )
        if record is None:
            failures += 1
            remaining = _seconds_until(args.stop_at)
            if remaining is not None and remaining <= 60:
                break
        write_results(results_dir)
    write_results(results_dir)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
