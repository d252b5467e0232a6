"""The datasets a run trains on, MNIST and SVHN, and what the training package needs to know about each.

One :class:`Dataset` per dataset holds its facts — TFDS name and version (what :mod:`train.prepare` writes and
:mod:`train.input_pipeline` reads), splits, raw images, classes, whether a run may prepare it itself — and answers the
questions the loop and the config checks ask, so that no other module branches on a dataset's name:

* :meth:`Dataset.input_spec` — the model's input shape and number of classes. MNIST's depend on the
  distortion (:data:`train.distortions.OUTPUT_SHAPES`, :data:`train.distortions.NUM_CLASSES`); SVHN's
  are its raw images' and its 10 digits.
* :meth:`Dataset.preprocess` — on the device, inside the train step: a raw uint8 batch → float32 model
  input in [0, 1] and int32 labels; MNIST's distorted afresh with the step's key
  (:func:`train.distortions.distort`).
* :meth:`Dataset.fixed_input` — on the host: a whole split as model input, MNIST's distorted once with a
  seed (:func:`train.distortions.test_set`), identical on every host.

Imports only the standard library: :mod:`train.prepare` (no JAX) reads the TFDS names from here; the
distortions, which are JAX, are imported when a distortable dataset first needs them.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str  # ``config.dataset``, and ``python -m train.prepare NAME``
    tfds_name: str
    tfds_version: str  # the version train.prepare writes
    splits: tuple[str, ...]  # TFDS's splits; configs train and evaluate on slices of them ("train[:92%]")
    image_shape: tuple[int, int, int]  # raw images as stored: uint8 (H, W, C)
    num_classes: int  # without a distortion
    distortable: bool  # MNIST's distortions (train.distortions) apply; without: distortion="none" only
    auto_prepare: bool  # a run with ``config.prepare`` prepares it when missing (TFDS download, else offline copy)

    def input_spec(self, distortion: str) -> tuple[tuple[int, ...], int]:
        """(the model's input shape (H, W, C), number of classes) with ``distortion``."""
        if not self.distortable:
            return self.image_shape, self.num_classes
        distortions = _distortions()
        return distortions.OUTPUT_SHAPES[distortion], distortions.NUM_CLASSES[distortion]

    def preprocess(self, distortion: str, key: Any, images: Any, labels: Any) -> tuple[Any, Any]:
        """A raw batch on the device → (model input float32 in [0, 1], labels int32); traceable."""
        if self.distortable:
            return _distortions().distort(distortion, key, images, labels)
        return scaled(images, labels)

    def fixed_input(
        self, distortion: str, images: Any, labels: Any, *, seed: int, first_row: int = 0
    ) -> tuple[Any, Any]:
        """A raw split on the host → (model input np.float32, labels), distorted once with ``seed``.

        ``images`` are the split's rows from ``first_row`` on, a multiple of :attr:`fixed_chunk`, up to a
        multiple of it or the split's end: they come out as they do when the whole split is distorted."""
        if self.distortable:
            return _distortions().test_set(
                distortion, images, labels, seed=seed, first_chunk=first_row // self.fixed_chunk
            )
        return images.astype("float32") / 255.0, labels

    @property
    def fixed_chunk(self) -> int:
        """Rows distorted together by :meth:`fixed_input` (1: each row on its own)."""
        return _distortions().TEST_CHUNK if self.distortable else 1


def scaled(images: Any, labels: Any) -> tuple[Any, Any]:
    """uint8 images → float32 in [0, 1], labels → int32, undistorted (NumPy or JAX arrays, traceable)."""
    return images.astype("float32") / 255.0, labels.astype("int32")


MNIST = Dataset(
    "mnist",
    tfds_name="mnist",
    tfds_version="3.0.1",
    splits=("train", "test"),
    image_shape=(28, 28, 1),
    num_classes=10,
    distortable=True,
    auto_prepare=True,
)
SVHN = Dataset(
    "svhn",
    tfds_name="svhn_cropped",
    tfds_version="3.1.0",
    splits=("train", "test", "extra"),
    image_shape=(32, 32, 3),
    num_classes=10,
    distortable=False,
    auto_prepare=False,
)
DATASETS = {d.name: d for d in (MNIST, SVHN)}
NAMES = tuple(DATASETS)


def _distortions():
    from train import distortions  # JAX and stn_jax: only once a run asks

    return distortions
