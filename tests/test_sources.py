"""Where the training batches come from (train/sources.py), and splits packed in one file (train/packed.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from train import config_checks, configs, input_pipeline, packed, run_data, sources
from train import step as step_lib
from train.errors import ConfigError, DataError

MESH = jax.make_mesh((1,), ("data",))
REPLICATED = jax.sharding.NamedSharding(MESH, jax.sharding.PartitionSpec())
STEPS = step_lib.chunk_sharding(jax.sharding.NamedSharding(MESH, jax.sharding.PartitionSpec("data")))


def split(n: int = 23, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8), np.arange(n, dtype=np.int32)  # label = row


@pytest.mark.parametrize("start", [0, 7])
def test_the_device_source_and_the_host_source_give_each_step_the_grain_iterators_batch(start):
    """Steps start+1 .. start+20 (over four epochs of 5 batches), fed in chunks of 1, 4, 2, 8, 5: the rows the
    device gathers and the batches the host sends are those the grain iterator yields for those steps."""
    images, labels = split()
    expected = input_pipeline.train_iterator(images, labels, batch_size=4, seed=3)  # from step 1
    for _ in range(start):
        next(expected)
    device = sources.DeviceSource(images, labels, batch_size=4, seed=3, replicated=REPLICATED, steps_sharding=STEPS)
    host = sources.make(
        "host", images, labels, batch_size=4, seed=3, start=start, replicated=REPLICATED, steps_sharding=STEPS
    )
    np.testing.assert_array_equal(np.asarray(device.dataset["image"]), images)
    first = start + 1
    for length in (1, 4, 2, 8, 5):
        rows = np.asarray(device.feed(first, length)["index"])
        sent = jax.tree.map(np.asarray, host.feed(first, length))
        assert rows.shape == (length, 4) and sent["image"].shape == (length, 4, 4, 4, 1)
        for k in range(length):
            batch = next(expected)
            np.testing.assert_array_equal(labels[rows[k]], batch["label"])
            np.testing.assert_array_equal(images[rows[k]], batch["image"])
            np.testing.assert_array_equal(sent["image"][k], batch["image"])
            np.testing.assert_array_equal(sent["label"][k], batch["label"])
        first += length


def test_the_host_source_refuses_steps_out_of_order():
    images, labels = split()
    host = sources.make(
        "host", images, labels, batch_size=4, seed=0, start=2, replicated=REPLICATED, steps_sharding=STEPS
    )
    with pytest.raises(ValueError, match="expected step 3, got 4"):
        host.feed(4, 1)


def test_auto_holds_a_split_on_the_device_only_when_it_fits(monkeypatch):
    assert sources.choose("auto", 47_000_000) == ("device", "the split (45 MiB) fits")
    assert sources.choose("host", 10)[0] == "host" and sources.choose("device", 10**12)[0] == "device"
    monkeypatch.setattr(sources, "DEVICE_LIMIT", 40 << 20)
    assert sources.choose("auto", 47_000_000) == ("host", "the split (45 MiB) exceeds 40 MiB")
    with pytest.raises(ConfigError, match="data_source must be one of"):
        sources.choose("gpu", 10)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("data_source", "'disk'", "data_source must be one of"),
        ("steps_per_dispatch", "-1", "steps_per_dispatch must be a non-neg"),
    ],
)
def test_bad_dispatch_and_source_settings_are_config_errors(key, value, message, tmp_path):
    config = configs.get_config("tiny", [f"{key}={value}"])
    config.data_dir = str(tmp_path)
    with pytest.raises(ConfigError, match=message):
        config_checks.validate(config)


def test_a_pack_reads_back_its_splits_rows_and_shards_and_names_what_it_lacks(tmp_path):
    train, test = split(23), split(6, seed=1)
    pack = tmp_path / "mnist.npz"
    packed.write(pack, "mnist", {"train[:92%]": train, "test": test}, {"git_commit": "abc"})
    assert packed.header(pack) == {"dataset": "mnist", "splits": ["train[:92%]", "test"], "git_commit": "abc"}
    images, labels = input_pipeline.load_split("mnist", "test", data_dir=pack, drop_remainder=False)
    np.testing.assert_array_equal(images, test[0])
    np.testing.assert_array_equal(labels, test[1])
    assert input_pipeline.split_size("mnist", "train[:92%]", data_dir=pack) == 23
    _, rows = input_pipeline.load_split("mnist", "train[:92%]", data_dir=pack, rows=(5, 9))
    _, shard = input_pipeline.load_split("mnist", "train[:92%]", data_dir=pack, shard_index=1, shard_count=2)
    assert list(rows) == [5, 6, 7, 8] and list(shard) == list(range(11, 22))
    with pytest.raises(ValueError, match=r"holds mnist splits \['train\[:92%\]', 'test'\], not mnist 'train\[92%:\]'"):
        input_pipeline.load_split("mnist", "train[92%:]", data_dir=pack)
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        packed.write(tmp_path / "mnist.zip", "mnist", {})

    config = configs.get_config("tiny")
    config.data_dir = str(pack)
    assert config_checks.resolve_data_dir(config) == pack  # a file, not a directory
    with pytest.raises(DataError, match=r"this run reads mnist 'train\[:92%\]', 'train\[92%:\]' and 'test'"):
        run_data.ensure_dataset(configs.unpack(config, run_data.DataSpec), pack)  # no validation split in it
    config.data_dir = str(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match=r"missing\.npz \(a pack of splits\) does not exist"):
        config_checks.resolve_data_dir(config)
