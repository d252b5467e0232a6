"""Experiment (a): does a spatial transformer generalise beyond the rotations it was trained on?

The CNN and the ST-CNN (affine) are trained on RTS28 — rotations in ±45°, scale 0.7–1.3,
shift ±0.1 (normalised) on the 28×28 frame (``train.distortions``) — by the reproduce
driver (cells ``rts28_cnn`` and ``rts28_st_cnn_affine``, same budget). This script then
tests each trained model on the 10,000 MNIST test digits rotated by *exactly* 45°, 60°,
75° and 90° (half of them clockwise, half anticlockwise, alternately), and records the
accuracies in ``benchmarks/results/generalisation__<run>.json``; ``RESULTS.md`` shows them
(``reproduce.py --render``).

Run::

    PYTHONPATH=. python benchmarks/reproduce.py --cells rts28_cnn,rts28_st_cnn_affine
    PYTHONPATH=. python benchmarks/generalisation.py            # every trained rts28 run
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sys
from pathlib import Path

from cells import GENERALISATION_ANGLES, GENERALISATION_CELLS, ROOT, RUNS_DIR, run_stem
from records import RESULTS_DIR, RESULTS_MD, generalisation_path, load_records, write_results

EVAL_BATCH = 500


def rotated_test_set(images, labels, degrees: float):
    """Every test digit rotated by exactly ``degrees``, alternately clockwise and anticlockwise."""
    import jax
    import jax.numpy as jnp

    from train import distortions

    images = jnp.asarray(images, jnp.float32) / 255.0  # uint8 digits, as the training pipeline reads them
    labels = jnp.asarray(labels, jnp.int32)
    signs = jnp.where(jnp.arange(images.shape[0]) % 2 == 0, 1.0, -1.0)
    rotate = jax.jit(jax.vmap(distortions.rotate_by))
    return rotate(images, signs * degrees), labels


@functools.cache
def _count_correct():
    """One jitted counter for every angle and model (a closure per call would recompile each time)."""
    import jax.numpy as jnp
    from flax import nnx

    @nnx.jit
    def correct(model, x, y):
        return jnp.sum(jnp.argmax(model(x, train=False), -1) == y)

    return correct


def accuracy(model, images, labels) -> float:
    correct = _count_correct()
    total = sum(
        int(correct(model, images[i : i + EVAL_BATCH], labels[i : i + EVAL_BATCH]))
        for i in range(0, images.shape[0], EVAL_BATCH)
    )
    return total / images.shape[0]


def evaluate_run(record: dict, *, data_dir: Path, runs_dir: Path) -> dict:
    """Accuracy at each angle of the run that ``record`` describes (its workdir holds the checkpoints)."""
    from train import configs, input_pipeline, train

    stem = run_stem(record["cell"], record["steps"], record["batch_size"])
    config = configs.get_config(record["config"])
    model = train.restore_model(config, runs_dir / stem)
    images, labels = input_pipeline.load_split(
        "mnist",
        "test",
        data_dir=data_dir,
        shard_index=0,
        shard_count=1,
        drop_remainder=False,
        cache_dir=input_pipeline.cache_dir(data_dir),
    )
    result = {
        "cell": record["cell"],
        "label": record["label"],
        "run": stem,
        "steps": record["steps"],
        "batch_size": record["batch_size"],
        "test_examples": len(labels),
        "in_distribution_error_pct": record["test_error_pct"],
        "accuracy_pct": {},
    }
    for degrees in GENERALISATION_ANGLES:
        x, y = rotated_test_set(images, labels, degrees)
        result["accuracy_pct"][str(degrees)] = round(100 * accuracy(model, x, y), 2)
        print(f"[generalisation] {stem}: {degrees}° accuracy {result['accuracy_pct'][str(degrees)]:.2f}%", flush=True)
    result["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=str(ROOT / "out" / "data"))
    parser.add_argument("--runs_dir", default=str(RUNS_DIR))
    parser.add_argument("--results_dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir)
    records = [r for r in load_records(results_dir) if r["cell"] in GENERALISATION_CELLS]
    if not records:
        print(
            "no trained rts28 run recorded; train them first:\n  PYTHONPATH=. python benchmarks/reproduce.py "
            f"--cells {','.join(GENERALISATION_CELLS)}",
            file=sys.stderr,
        )
        return 1
    for record in records:
        stem = run_stem(record["cell"], record["steps"], record["batch_size"])
        if generalisation_path(results_dir, stem).exists():
            continue
        result = evaluate_run(record, data_dir=Path(args.data_dir), runs_dir=Path(args.runs_dir))
        generalisation_path(results_dir, stem).write_text(json.dumps(result, indent=2) + "\n")
    write_results(results_dir)
    print(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
