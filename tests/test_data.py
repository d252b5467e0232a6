"""train.input_pipeline on tiny genuine TFDS datasets prepared from synthetic raw files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import helpers

helpers.require("tensorflow_datasets")  # in CI a missing `train` extra fails, never skips

import jax

import data_fixtures as fx
from train import datasets, input_pipeline, mnist_files, prepare

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A data_dir holding tiny mnist (50 train, 21 test) and svhn_cropped (30, 10) datasets."""
    root = tmp_path_factory.mktemp("data")
    mnist = fx.mnist_arrays(50, 21)
    svhn = fx.svhn_arrays(30, 10)
    data_dir = root / "tfds"
    prepare.prepare_mnist(data_dir, source=fx.write_idx_dir(root / "idx", mnist, gzipped=True))
    prepare.prepare_svhn(data_dir, source=fx.write_svhn_dir(root / "mat", svhn))
    return data_dir, mnist, svhn


def test_load_split_shapes_dtypes_and_content(prepared):
    data_dir, mnist, svhn = prepared
    images, labels = input_pipeline.load_split("mnist", "train", data_dir=data_dir, shard_index=0, shard_count=1)
    assert images.shape == (50, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (50,) and labels.dtype == np.int32
    assert fx.as_multiset(images, labels) == fx.as_multiset(*mnist["train"])
    images, labels = input_pipeline.load_split("svhn", "test", data_dir=data_dir, shard_index=0, shard_count=1)
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
    x, y = svhn["test"]
    assert fx.as_multiset(images, labels) == fx.as_multiset(np.moveaxis(x, -1, 0), y.ravel() % 10)


def test_load_split_defaults_to_this_process(prepared):
    data_dir, _, _ = prepared
    assert jax.process_count() == 1
    images, _ = input_pipeline.load_split("mnist", "test", data_dir=data_dir)
    assert len(images) == 21


def test_per_host_shards_are_disjoint_and_cover_the_split(prepared):
    data_dir, *_ = prepared
    everything = fx.as_multiset(
        *input_pipeline.load_split("mnist", "test", data_dir=data_dir, shard_index=0, shard_count=1)
    )
    for drop_remainder, sizes in ((True, [5, 5, 5, 5]), (False, [6, 5, 5, 5])):
        shards = [
            input_pipeline.load_split(
                "mnist", "test", data_dir=data_dir, shard_index=i, shard_count=4, drop_remainder=drop_remainder
            )
            for i in range(4)
        ]
        assert [len(labels) for _, labels in shards] == sizes
        keys = [key for shard in shards for key in fx.as_multiset(*shard)]
        assert len(set(keys)) == len(keys)  # disjoint
        assert set(keys) <= set(everything)
    assert sorted(keys) == everything  # without drop_remainder: every example exactly once
    with pytest.raises(ValueError, match="shard_index"):
        input_pipeline.load_split("mnist", "test", data_dir=data_dir, shard_index=4, shard_count=4)


def test_dataset_facts_are_those_of_tfds_and_of_the_prepared_datasets(prepared):
    """What the loop and the config checks ask train.datasets agrees with TFDS's own builders and with what
    train.prepare wrote (which reads its TFDS names and versions from there too)."""
    import tensorflow_datasets as tfds

    data_dir, _, _ = prepared
    assert sorted(datasets.DATASETS) == sorted(prepare.DATASETS) == ["mnist", "svhn"]
    for dataset in datasets.DATASETS.values():
        info = tfds.builder(dataset.tfds_name, data_dir=os.fspath(data_dir)).info
        assert str(info.version) == dataset.tfds_version
        assert info.features["image"].shape == dataset.image_shape
        assert info.features["label"].num_classes == dataset.num_classes
        assert set(info.splits) <= set(dataset.splits) and {"train", "test"} <= set(info.splits)
        assert prepare.dataset_path(dataset.name, data_dir) == data_dir / dataset.tfds_name / dataset.tfds_version
        assert (
            input_pipeline.TFDS_NAMES[dataset.name] == input_pipeline.TFDS_NAMES[dataset.tfds_name] == dataset.tfds_name
        )
    assert datasets.MNIST.splits == mnist_files.SPLITS and set(datasets.SVHN.splits) == set(prepare.SVHN_FILES)
    assert datasets.SVHN.input_spec("none") == ((32, 32, 3), 10)
    assert datasets.MNIST.input_spec("addition") == ((42, 42, 2), 19)


def test_missing_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m train\.prepare svhn"):
        input_pipeline.load_split("svhn", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="name must be one of"):
        input_pipeline.load_split("cifar10", "train", data_dir=tmp_path)


def test_decoded_cache_round_trip(prepared, tmp_path):
    data_dir, _, _ = prepared
    first = input_pipeline.load_split(
        "mnist", "train", data_dir=data_dir, shard_index=1, shard_count=2, cache_dir=tmp_path
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(name.endswith(".npy") for name in files)
    second = input_pipeline.load_split(
        "mnist", "train", data_dir=data_dir, shard_index=1, shard_count=2, cache_dir=tmp_path
    )
    other_shard = input_pipeline.load_split(
        "mnist", "train", data_dir=data_dir, shard_index=0, shard_count=2, cache_dir=tmp_path
    )
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], other_shard[0]) and len(list(tmp_path.iterdir())) == 4


def _arrays(n: int = 23):
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1), np.uint8)
    return images, np.arange(n, dtype=np.int32)


def _take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


def test_train_iterator_batches_epochs_and_determinism():
    images, labels = _arrays(23)
    batches = _take(input_pipeline.train_iterator(images, labels, batch_size=5, seed=7), 9)
    assert all(b["image"].shape == (5, 2, 2, 1) and b["label"].dtype == np.int32 for b in batches)
    assert all(np.array_equal(b["image"][:, 0, 0, 0], b["label"]) for b in batches)  # rows stay paired
    for epoch in (batches[0:4], batches[4:8]):  # 23 // 5 = 4 batches an epoch, no repeats inside one
        seen = np.concatenate([b["label"] for b in epoch])
        assert len(set(seen.tolist())) == 20
    assert not np.array_equal(batches[0]["label"], batches[4]["label"])  # reshuffled each epoch
    again = _take(input_pipeline.train_iterator(images, labels, batch_size=5, seed=7), 9)
    assert all(np.array_equal(a["label"], b["label"]) for a, b in zip(batches, again))
    other = _take(input_pipeline.train_iterator(images, labels, batch_size=5, seed=8), 9)
    assert any(not np.array_equal(a["label"], b["label"]) for a, b in zip(batches, other))
    finite = list(input_pipeline.train_iterator(images, labels, batch_size=5, seed=7, num_epochs=2))
    assert len(finite) == 8


@pytest.mark.parametrize("consumed", [3, 4, 6])  # mid-epoch, at an epoch boundary, in epoch 2
def test_restored_iterator_yields_the_same_next_batches(consumed):
    images, labels = _arrays(23)
    iterator = input_pipeline.train_iterator(images, labels, batch_size=5, seed=3)
    _take(iterator, consumed)
    state = json.loads(json.dumps(iterator.get_state()))  # survives a JSON checkpoint
    expected = _take(iterator, 5)
    restored = input_pipeline.train_iterator(images, labels, batch_size=5, seed=3)
    restored.set_state(state)
    assert all(np.array_equal(a["label"], b["label"]) for a, b in zip(expected, _take(restored, 5)))


def test_iterator_state_survives_an_orbax_checkpoint(tmp_path):
    import grain
    import orbax.checkpoint as ocp

    images, labels = _arrays(23)
    iterator = input_pipeline.train_iterator(images, labels, batch_size=5, seed=4)
    _take(iterator, 6)
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(6, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        expected = _take(iterator, 3)
        restored = input_pipeline.train_iterator(images, labels, batch_size=5, seed=4)
        manager.restore(6, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointRestore(restored)))
    assert all(np.array_equal(a["label"], b["label"]) for a, b in zip(expected, _take(restored, 3)))


def test_iterator_and_eval_reject_bad_arguments():
    images, labels = _arrays(4)
    with pytest.raises(ValueError, match="batch_size"):
        input_pipeline.train_iterator(images, labels, batch_size=5, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        input_pipeline.train_iterator(images, labels, batch_size=0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        input_pipeline.train_iterator(images, labels, batch_size=2, seed=-1)
    with pytest.raises(ValueError, match="labels"):
        input_pipeline.train_iterator(images, labels[:3], batch_size=2, seed=0)
    with pytest.raises(ValueError, match="num_batches"):
        list(input_pipeline.eval_batches(images, labels, batch_size=3, num_batches=1))


def test_eval_batches_cover_every_example_once_with_a_mask():
    images, labels = _arrays(7)
    batches = list(input_pipeline.eval_batches(images, labels, batch_size=3, num_batches=4))
    assert [b["mask"].sum() for b in batches] == [3, 3, 1, 0]
    real = np.concatenate([b["label"][b["mask"]] for b in batches])
    assert np.array_equal(real, labels)
    assert all(b["image"].shape == (3, 2, 2, 1) for b in batches)
    assert not batches[2]["image"][1:].any()  # padding is zeros


def test_global_batch_single_process():
    sharding = input_pipeline.data_sharding()
    local = {"image": np.ones((4 * jax.device_count(), 2, 2, 1), np.uint8), "label": np.arange(4 * jax.device_count())}
    batch = input_pipeline.global_batch(local, sharding)
    assert isinstance(batch["label"], jax.Array) and batch["label"].sharding == sharding
    assert np.array_equal(np.asarray(batch["label"]), local["label"])
    with pytest.raises(ValueError, match="axis 'batch'"):
        input_pipeline.data_sharding(jax.make_mesh((jax.device_count(),), ("data",)), axis="batch")


_WORKER = textwrap.dedent(
    """
    import sys, json
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 2)
    process_id, port, data_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    import numpy as np
    from train import input_pipeline
    images, labels = input_pipeline.load_split("mnist", "train", data_dir=data_dir)  # this process's shard
    local = next(input_pipeline.train_iterator(images, labels, batch_size=4, seed=11))
    batch = input_pipeline.global_batch(local, input_pipeline.data_sharding())
    # Reductions over the global array need both processes' rows.
    sums = jax.jit(lambda b: (b["label"].sum(), b["image"].astype("int32").sum()))(batch)
    print(json.dumps({"shape": list(batch["image"].shape), "devices": len(batch["label"].sharding.device_set),
                      "local": sorted(local["label"].tolist()), "sums": [int(x) for x in sums]}))
    jax.distributed.shutdown()
    """
)


def test_two_processes_read_their_own_shards_into_one_global_batch(prepared, tmp_path):
    data_dir, _, _ = prepared
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    port = str(helpers.free_port())
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), port, str(data_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:  # never leave a worker behind (e.g. one blocked on its peer)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # The reference: each shard's first local batch, computed here in one process.
    expected = np.zeros(2, np.int64)
    for i, result in enumerate(outputs):
        images, labels = input_pipeline.load_split("mnist", "train", data_dir=data_dir, shard_index=i, shard_count=2)
        local = next(input_pipeline.train_iterator(images, labels, batch_size=4, seed=11))
        assert result["local"] == sorted(local["label"].tolist())
        expected += [local["label"].sum(), local["image"].astype(np.int64).sum()]
    for result in outputs:
        assert result["shape"] == [8, 28, 28, 1] and result["devices"] == 4
        assert result["sums"] == expected.tolist()


def test_show_data_writes_one_png_per_distortion(prepared, tmp_path, monkeypatch):
    """The plumbing of show_data; the distortions themselves are tested in test_distortions.py
    (here a NumPy stand-in avoids compiling all seven kinds again for another batch shape)."""
    from PIL import Image

    from train import distortions, show_data

    calls = []

    def padded(kind, key, images, labels):
        calls.append((kind, images.shape))
        h, w, c = distortions.OUTPUT_SHAPES[kind]
        x = np.pad(np.asarray(images, np.float32) / 255, ((0, 0), (0, h - 28), (0, w - 28), (0, 0)))
        return np.repeat(x, c, axis=-1), labels

    monkeypatch.setattr(distortions, "distort", padded)
    data_dir, _, _ = prepared
    assert show_data.main(["--data_dir", str(data_dir), "--out", str(tmp_path), "--count", "6"]) == 0
    assert calls == [(kind, (6, 28, 28, 1)) for kind in distortions.KINDS]
    for kind in distortions.KINDS:
        with Image.open(tmp_path / f"{kind}.png") as png:
            assert png.format == "PNG" and png.width > 200 and png.height > 200
            assert len(np.unique(np.asarray(png.convert("L")))) > 10  # an image, not a blank page
