"""What a ``gs://`` workdir costs the training loop: checkpoints, digests and metrics on a GCS server
against the same on local disk.

The state saved is the README model's (``mnist_rts_st_cnn_affine``: parameters, AdamW state, the
meta), through the run's own :class:`train.checkpoints.Checkpoints`:

* **save** — ``save`` and ``wait`` (Orbax writes and finalises the step; the process's digest
  is written after): what a checkpoint boundary costs the loop at most;
* **restore** — ``restore_newest`` on a fresh manager: the digest verified (every file read
  back and hashed), then the state read: what a (re)start costs;
* the requests each boundary sends through gcsfs (digests, ``metrics.jsonl``) and through
  google-cloud-storage (TensorBoard's event file), counted on the client.

The GCS server is fake-gcs-server on 127.0.0.1 (``tests/gcs_server.py``): loopback, no TLS, no
latency, no throughput limit. Its times say what our code and the clients add, not what GCS
takes; the request counts carry over (each costs a round trip, ~10-50 ms on real GCS from a VM).

Run: ``PYTHONPATH=.:tests python benchmarks/checkpoint_storage.py`` (writes its section of
BENCHMARKS.md); ``--no-write`` only prints; ``--repeats N``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gcs_server  # the tests' GCS server: run with tests/ on PYTHONPATH
import report

BEGIN = "<!-- BEGIN benchmarks/checkpoint_storage.py (generated, do not edit by hand) -->"
END = "<!-- END benchmarks/checkpoint_storage.py -->"
CONFIG = "mnist_rts_st_cnn_affine"


class Requests:
    """Counts HTTP requests of gcsfs (every one goes through ``_request``) and uploads of google-cloud-storage."""

    def __init__(self):
        import gcsfs
        from google.cloud.storage import blob

        self.gcsfs = self.gcs = 0
        request, upload = gcsfs.GCSFileSystem._request, blob.Blob.upload_from_string

        async def counted_request(fs, *args, **kwargs):
            self.gcsfs += 1
            return await request(fs, *args, **kwargs)

        def counted_upload(b, *args, **kwargs):
            self.gcs += 1
            return upload(b, *args, **kwargs)

        gcsfs.GCSFileSystem._request = counted_request
        blob.Blob.upload_from_string = counted_upload

    def during(self, fn) -> tuple[int, int]:
        before = (self.gcsfs, self.gcs)
        fn()
        return self.gcsfs - before[0], self.gcs - before[1]


def model_state():
    import jax

    from train import compiled, configs, optimizer

    config = configs.get_config(CONFIG)
    fns = compiled.functions(
        lambda: compiled.build(config),
        configs.unpack(config, optimizer.Recipe),
        seed=config.seed,
        preprocess=None,
        label_smoothing=0.0,
    )
    state = fns.init()
    return state, jax.eval_shape(fns.init)


def time_checkpoints(directory: str, state, abstract, repeats: int) -> dict:
    from train import checkpoints, storage

    save_s, restore_s = [], []
    for step in range(1, repeats + 2):  # the first round warms up
        ckpt = checkpoints.Checkpoints(directory, keep=2)
        t = time.perf_counter()
        ckpt.save(step, state=state, meta={"step": step})
        ckpt.wait()
        saved = time.perf_counter() - t
        ckpt.close()
        t = time.perf_counter()
        reader = checkpoints.Checkpoints(directory, keep=2)
        restored = reader.restore_newest(abstract_state=abstract)
        loaded = time.perf_counter() - t
        reader.close()
        assert restored is not None and restored[0] == step and restored[3]
        if step > 1:
            save_s.append(saved)
            restore_s.append(loaded)
    step_dir = storage.path(directory) / str(repeats + 1)
    size = sum(storage.files(step_dir).values())
    return {"save": statistics.median(save_s), "restore": statistics.median(restore_s), "bytes": size}


def count_boundary(workdir: str, requests: Requests) -> dict:
    """Requests of one boundary's parts on ``workdir`` (gs://)."""
    from train import checkpoints, digests, metrics

    state, _ = model_state()
    ckpt = checkpoints.Checkpoints(f"{workdir}/checkpoints", keep=2, async_save=False)
    ckpt.save(1, state=state, meta={"step": 1})
    ckpt.manager.wait_until_finished()
    ckpt._undigested.append(1)
    step_dir = f"{workdir}/checkpoints/1"
    digests.path(step_dir, 0).unlink()
    digest_write = requests.during(ckpt.write_digests)
    digest_check = requests.during(lambda: digests.check(step_dir, 0))
    ckpt.close()
    writer = metrics.MetricWriter(workdir)
    for step in range(1, 11):  # a history of ten records first: the file is rewritten whole
        writer.write(step, "train", loss=1.0)
    record = requests.during(lambda: writer.write(11, "train", loss=1.0, accuracy=0.5))
    writer.close()
    writer = None  # tensorboardX's writer uploads its file again when collected: let it, while the server runs
    gc.collect()
    return {
        "digest_write": digest_write,
        "digest_check": digest_check,
        "record": record,
        "files": len(digests._part(digests.storage.path(step_dir), 0)),
    }


def render(rows: dict, counts: dict, args, load_before: float, load_after: float) -> str:
    local, remote = rows["local disk"], rows["gs:// (fake-gcs-server, loopback)"]
    lines = [
        f"Command: `PYTHONPATH=.:tests python benchmarks/checkpoint_storage.py --repeats {args.repeats}`  ",
        f"Machine: {report.cpu_name()}; load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}  ",
        f"State: `{CONFIG}`'s parameters, AdamW state and meta, {local['bytes'] / 1e6:.2f} MB on disk; "
        f"medians of {args.repeats} rounds after one warm-up.",
        "",
        "| where | save + finalise + digest (s) | restore + verify (s) |",
        "| --- | --- | --- |",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['save']:.3f} | {row['restore']:.3f} |")
    lines += [
        "",
        f"gs:// / local: save {remote['save'] / local['save']:.1f}×, restore {remote['restore'] / local['restore']:.1f}× "
        "(loopback: no network latency; on real GCS each request below adds a round trip).",
        "",
        "Requests the training loop's own code sends to `gs://` per boundary (counted on the client; Orbax's "
        "TensorStore requests not included):",
        "",
        "| what | gcsfs requests | google-cloud-storage uploads |",
        "| --- | --- | --- |",
        f"| digest of one checkpoint, written ({counts['files']} files listed, read, hashed) | "
        f"{counts['digest_write'][0]} | {counts['digest_write'][1]} |",
        f"| digest verified at a restart | {counts['digest_check'][0]} | {counts['digest_check'][1]} |",
        f"| one `metrics.jsonl` record (file rewritten whole) and its TensorBoard flush | {counts['record'][0]} | "
        f"{counts['record'][1]} |",
        "",
        "A log boundary writes one record (a train record; an evaluation adds a val record); the lease "
        "lock adds one conditional upload every 30 s whatever the boundaries.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args()
    server = gcs_server.GCSServer()
    os.environ.update(server.env)
    try:
        requests = Requests()
        load_before = os.getloadavg()[0]
        state, abstract = model_state()
        rows = {}
        with tempfile.TemporaryDirectory() as local:
            rows["local disk"] = time_checkpoints(f"{local}/checkpoints", state, abstract, args.repeats)
        rows["gs:// (fake-gcs-server, loopback)"] = time_checkpoints(
            f"gs://{server.bucket()}/checkpoints", state, abstract, args.repeats
        )
        counts = count_boundary(f"gs://{server.bucket()}/run", requests)
        table = render(rows, counts, args, load_before, os.getloadavg()[0])
    finally:
        server.stop()
    print(table)
    if not args.no_write:
        report.write_section(args.output, table, begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
