"""One process of the two-process checkpoint test (tests/test_checkpoints.py).

Usage: ``python tests/checkpoint_worker.py OUT.json PORT PROCESS_ID CHECKPOINT_DIR``. The two
processes save steps 1 and 2 together (``train.checkpoints``, set up like ``python -m train``
with ``--coordinator``); then process 1 edits its own part of step 2 (its data iterator's
position: valid JSON, wrong value, so only the digest can tell) and both restore. Writes
the step each restored, its parameter and the batch its iterator gives next.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from train import __main__ as cli


def main() -> int:
    out, port, process_id, directory = sys.argv[1:]
    cli.init_jax(
        cli.make_parser().parse_args(
            ["--coordinator", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", process_id]
        )
    )
    import jax
    from jax.experimental import multihost_utils

    from train import checkpoints, input_pipeline

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def state(value: float) -> dict:
        host = np.full((64,), value, np.float32)
        return {"params": {"w": jax.make_array_from_callback(host.shape, replicated, lambda index: host[index])}}

    def iterator():  # this process's own shard: 8 images whose labels say which process and row
        labels = np.arange(8, dtype=np.int32) + 100 * jax.process_index()
        return input_pipeline.train_iterator(np.zeros((8, 28, 28, 1), np.uint8), labels, batch_size=2, seed=0)

    it = iterator()
    ckpt = checkpoints.Checkpoints(directory, keep=5, iterators=True)
    for step in (1, 2):
        next(it)
        ckpt.save(step, state=state(step), iterator=it, meta={"step": step})
    ckpt.close()
    multihost_utils.sync_global_devices("saved")
    if jax.process_index() == 1:
        own = f"{directory}/2/data/process_1-of-2.json"
        text = Path(own).read_text()
        Path(own).write_text(text.replace("2", "3"))  # the iterator position of step 3
    multihost_utils.sync_global_devices("damaged")

    it = iterator()
    ckpt = checkpoints.Checkpoints(directory, keep=5, iterators=True)
    abstract = {"params": {"w": jax.ShapeDtypeStruct((64,), np.float32, sharding=replicated)}}
    step, restored, _, verified = ckpt.restore_newest(abstract_state=abstract, iterator=it)
    ckpt.close()
    result = {
        "step": step,
        "verified": verified,
        "w": np.asarray(restored["params"]["w"].addressable_data(0)).tolist(),
        "next_labels": np.asarray(next(it)["label"]).tolist(),
    }
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
