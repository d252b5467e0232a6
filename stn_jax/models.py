"""The networks of the paper's experiments (and two popular extras), as Flax NNX modules.

Why NNX: models are plain Python objects holding their parameters, so the uniform
API below (``model(x, train=...)``, ``model.transform(x)``, attributes such as
``model.has_transformer``) needs no ``apply``/``variables`` plumbing, shapes are
explicit at construction (the parameter counts below are known before any data),
and ``nnx.Optimizer`` + ``optax`` train them directly. The transformers inside are
:class:`stn_jax.nnx.SpatialTransformer`; the same layer exists for Linen users in
:mod:`stn_jax.linen`.

Uniform API (every model)::

    model = build_model(name, *, num_classes, input_shape, rngs, **kw)
    logits = model(x, train=False)      # x: (B, *input_shape) -> (B, num_classes)
    warped, theta = model.transform(x)  # what the (first) transformer produces
    model.has_transformer               # False for the baselines (transform raises)
    count_params(model)                 # {"total", "localisation", "classifier"}

``input_shape`` is one example's shape without the batch, e.g. ``(28, 28, 1)``.
SVHN models built with ``max_digits=N`` return a dict instead of an array:
``{"length": (B, N + 2), "digits": (B, N, num_classes)}`` (length classes 0..N and
">N", as in Goodfellow et al. 2013); :func:`sequence_loss` is their loss.
``transform`` returns the warped input before any pooling, channels of parallel
transformers concatenated, and θ as ``(B, *theta_shape)`` — or ``(B, n, *theta_shape)``
for models with ``n`` parallel transformers. Train the localisation nets at 0.1× the
learning rate with ``stn_jax.optim.with_localisation_lr(tx)``.

Models (``MODEL_NAMES``):

======================== ===================================================================
name                     network
======================== ===================================================================
``fcn``                  2 hidden fully connected layers (``hidden=(128, 128)``)
``cnn``                  conv 9×9 → max-pool 2 → conv 7×7 → max-pool 2 → linear
                         (``channels=(32, 32)``, SAME padding; ``hidden=(h, ...)`` puts
                         FC layers before the output)
``st_fcn_<t>``           ST (localisation: FC 32-32 on the input) → FCN (matched widths)
``st_cnn_<t>``           ST (localisation: input avg-pooled 2×, conv 5×5 20 → pool → conv
                         5×5 20 → pool → FC 50) → CNN (matched widths)
``st_fcn_addition``      2×ST-FCN: two transformers over the 2-channel input, outputs
                         concatenated (4 channels) → FCN; ``num_classes=19`` (sums 0..18)
``svhn_cnn``             Goodfellow et al.'s 8 conv layers (48, 64, 128, 160, 192×4)×``width``
                         with alternating max-pool strides 2/1, 2 FC layers of
                         3072×``width``, dropout; single or ``max_digits`` heads
``svhn_st_cnn_single``   ST at the input (localisation: conv 5×5 32 → pool → conv 5×5 32
                         → pool → FC 32 → FC 32) → ``svhn_cnn``
``svhn_st_cnn_multi``    ``svhn_cnn`` with an ST before each of the first 4 conv layers
                         (localisation: FC 32-32 on that feature map)
``colour_stn``           the tutorial model for 32×32×3 (see the issue): localisation conv
                         7×7 64 → pool → conv 5×5 128 → pool → FC 256 → 6; classifier
                         conv 5×5 16 → pool → conv 5×5 32 (dropout) → pool → FC 1024 → 10
``colour_cnn``           the same classifier without the transformer
``st_1d``                1-D affine ST (localisation: conv1d 7 16 → pool → conv1d 5 16 →
                         pool → FC 32) → ``cnn_1d``
``cnn_1d``               conv1d 7 32 → pool → conv1d 5 64 → pool → global average → linear
======================== ===================================================================

``<t>`` is ``affine``, ``projective`` or ``tps`` (4×4 control points); any
:data:`stn_jax.TRANSFORMS` name works through ``transform=`` of the ``st_*`` builders.
ST models whose input side exceeds 32 pixels (the paper's 42×42 RTS and 60×60
cluttered MNIST) average-pool the transformer's output by 2 (``output_pool``).

Parameter counts (``count_params(build_model(name, ...))["total"]``, 10 classes),
baselines and ST variants kept comparable as in the paper:

===================== ========== ========== ==========
name                  28×28×1    42×42×1    60×60×1
===================== ========== ========== ==========
fcn                   118,282    243,722    478,730
st_fcn_affine         117,980    243,124    478,585
st_fcn_projective     118,046    243,190    478,651
st_fcn_tps            117,839    243,010    477,934
cnn                   68,522     84,842     124,842
st_cnn_affine         67,928     83,646     124,758
st_cnn_projective     68,030     83,748     121,298
st_cnn_tps            66,182     81,944     122,522
===================== ========== ========== ==========

The ST variants' classifier widths are chosen at construction (``hidden=None`` /
``channels=None``, the default) as the largest equal widths keeping the whole model
within the baseline's count on the same input; pass explicit widths to override.
Of those totals the localisation nets hold (28×28) 26,374 (affine), 26,440
(projective), 27,232 (TPS) in ST-FCN and 19,896 / 19,998 / 21,222 in ST-CNN.
``st_fcn_addition`` on 42×42×2 with 19 classes: 469,169 (FCN baseline 470,675).

SVHN at the default ``width=0.25`` (``width=1.0`` is the paper's size) on 64×64×3 with
``max_digits=5``: ``svhn_cnn`` 1,496,609, ``svhn_st_cnn_single`` 1,788,103,
``svhn_st_cnn_multi`` 3,074,617; on ``svhn_cropped`` 32×32×3 with one head: 1,018,098,
1,112,984 and 1,416,458. ``colour_stn`` on 32×32×3: 1,585,008 (``colour_cnn``
844,522); ``st_1d`` on (128, 1): 29,116 (``cnn_1d`` 11,210).
:func:`param_count_table` recomputes any of these.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from stn_jax.models import build_model, count_params
  >>> model = build_model("st_fcn_affine", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
  >>> model(jnp.zeros((2, 28, 28, 1)), train=False).shape
  (2, 10)
  >>> warped, theta = model.transform(jnp.zeros((2, 28, 28, 1)))
  >>> warped.shape, theta.shape
  ((2, 28, 28, 1), (2, 2, 3))
  >>> count_params(model)
  {'total': 117980, 'localisation': 26374, 'classifier': 91606}
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from stn_jax import _checks

try:
    import optax
    from flax import nnx
except ModuleNotFoundError as _error:  # the core install, without the flax extra
    raise _checks.missing_extra(__name__, _error) from _error

from stn_jax.nnx import MLP, SpatialTransformer
from stn_jax.optim import is_localisation_path

__all__ = [
    "MODEL_NAMES",
    "Classifier",
    "ConvFeatures",
    "STClassifier",
    "SVHNNet",
    "build_model",
    "count_params",
    "param_count_table",
    "sequence_accuracy",
    "sequence_loss",
]


def _flat_size(module: Callable, input_shape: tuple[int, ...]) -> int:
    out = nnx.eval_shape(lambda m, x: m(x), module, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    return math.prod(out.shape[1:])


def _pool(x: jax.Array, size: int, *, kind: str = "max", stride: int | None = None) -> jax.Array:
    """Pools the spatial axes of ``(B, *spatial, C)`` (1-D or 2-D) by ``size``.

    Non-overlapping windows (``stride == size``, VALID: trailing rows that do not fill a
    window are dropped) are a crop, a reshape and a max/mean over the window axes:
    the same values as ``nnx.max_pool``/``nnx.avg_pool``, but a much cheaper backward
    pass on XLA CPU, where ``reduce_window``'s gradient (select-and-scatter) is lowered to
    iota/scatter fusions that took a third of the CNN's training step (BENCHMARKS.md,
    "Training step: what we tried"). The max's gradient splits evenly between tied
    maxima (select-and-scatter gives it to one of them); both are valid subgradients.
    """
    n = x.ndim - 2
    stride = size if stride is None else stride
    if stride == size and size > 1 and all(s >= size for s in x.shape[1:-1]):
        crop = tuple(s - s % size for s in x.shape[1:-1])
        x = x[(slice(None), *(slice(0, c) for c in crop))]
        windows = [d for c in crop for d in (c // size, size)]
        x = x.reshape(x.shape[0], *windows, x.shape[-1])
        axes = tuple(2 + 2 * i for i in range(n))
        return jnp.max(x, axis=axes) if kind == "max" else jnp.mean(x, axis=axes)
    pool = nnx.max_pool if kind == "max" else nnx.avg_pool
    padding = "SAME" if stride == 1 else "VALID"
    return pool(x, (size,) * n, strides=(stride,) * n, padding=padding)


class ConvFeatures(nnx.Module):
    """``[conv → (dropout) → max-pool 2 → ReLU]`` per ``(features, kernel)`` in ``convs``, flattened.

    Args:
      input_shape: one example's shape ``(W, C)`` or ``(H, W, C)``.
      convs: ``(features, kernel_size)`` per layer (may be empty: only flattens).
      padding: ``"SAME"`` or ``"VALID"`` for the convolutions.
      downsample: average-pool the input by this factor first (the paper's 2×
        downsampled input of the ST-CNN localisation net).
      dropout: rate of channel dropout after the convolutions listed in ``dropout_layers``.
      global_pool: average over the spatial axes instead of flattening them.
      rngs: random streams (parameters and dropout).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        convs: Sequence[tuple[int, int]] = (),
        *,
        padding: str = "SAME",
        downsample: int = 1,
        dropout: float = 0.0,
        dropout_layers: Sequence[int] = (),
        global_pool: bool = False,
        rngs: nnx.Rngs,
    ):
        input_shape = _checks.check_shape_tuple("input_shape", input_shape, ranks=(2, 3))
        n = len(input_shape) - 1
        self.downsample = downsample
        self.global_pool = global_pool
        self.num_layers: int = len(convs)
        self.dropout_layers: tuple[int, ...] = tuple(dropout_layers)
        channels = input_shape[-1]
        for i, (features, kernel) in enumerate(convs):
            conv = nnx.Conv(channels, features, (kernel,) * n, padding=padding, rngs=rngs)
            setattr(self, f"conv_{i}", conv)
            channels = features
        # Channel dropout (the same mask over the spatial axes), as PyTorch's Dropout2d.
        self.dropout: nnx.Dropout = nnx.Dropout(dropout, broadcast_dims=tuple(range(1, n + 1)), rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.downsample > 1:
            x = _pool(x, self.downsample, kind="avg")
        for i in range(self.num_layers):
            x = getattr(self, f"conv_{i}")(x)
            if i in self.dropout_layers:
                x = self.dropout(x, deterministic=not train)
            x = nnx.relu(_pool(x, 2))
        if self.global_pool:
            return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        return x.reshape(x.shape[0], -1)


class _ConvLocalisation(nnx.Module):
    """Conv features then hidden FC layers: a localisation net's feature extractor."""

    def __init__(self, input_shape, convs, hidden, *, padding="SAME", downsample=1, rngs):
        self.features = ConvFeatures(input_shape, convs, padding=padding, downsample=downsample, rngs=rngs)
        # A dropout layer even at rate 0: the key it takes from rngs keeps the models' initial parameters.
        self.mlp = MLP(_flat_size(self.features, tuple(input_shape)), hidden=hidden, dropout=0.0, rngs=rngs)

    def __call__(self, x):
        return self.mlp(self.features(x))


class Classifier(nnx.Module):
    """A baseline: :class:`ConvFeatures` then an :class:`~stn_jax.nnx.MLP` head. No transformer."""

    has_transformer = False

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        convs: Sequence[tuple[int, int]] = (),
        hidden: Sequence[int] = (),
        padding: str = "SAME",
        dropout: float = 0.0,
        conv_dropout_layers: Sequence[int] = (),
        global_pool: bool = False,
        rngs: nnx.Rngs,
    ):
        self.input_shape: tuple[int, ...] = tuple(input_shape)
        self.features: ConvFeatures = ConvFeatures(
            input_shape,
            convs,
            padding=padding,
            dropout=dropout,
            dropout_layers=conv_dropout_layers,
            global_pool=global_pool,
            rngs=rngs,
        )
        flat = _flat_size(self.features, self.input_shape)
        self.head: MLP = MLP(flat, hidden=hidden, out_features=num_classes, dropout=dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.head(self.features(x, train=train), train=train)

    def transform(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        raise TypeError(f"{type(self).__name__} has no spatial transformer (model.has_transformer is False)")


class STClassifier(nnx.Module):
    """Spatial transformers on the input, outputs concatenated on channels, then a classifier.

    Args:
      transformers: ``SpatialTransformer`` layers applied to the same input.
      classifier: a model with the uniform call ``classifier(x, train=...)``, built for
        the (pooled) transformer output's shape.
      output_pool: average-pool the transformer output by this factor first.
    """

    has_transformer = True

    def __init__(self, transformers: Sequence[SpatialTransformer], classifier: nnx.Module, *, output_pool: int = 1):
        self.transformers: nnx.List[SpatialTransformer] = nnx.List(list(transformers))
        self.classifier = classifier
        self.output_pool = output_pool

    def transform(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        warped, thetas = [], []
        for st in self.transformers:
            out, theta = st(x)
            warped.append(out)
            thetas.append(theta)
        theta = thetas[0] if len(thetas) == 1 else jnp.stack(thetas, axis=1)
        return jnp.concatenate(warped, axis=-1), theta

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        warped, _ = self.transform(x)
        if self.output_pool > 1:
            warped = _pool(warped, self.output_pool, kind="avg")
        return self.classifier(warped, train=train)


_SVHN_CHANNELS = (48, 64, 128, 160, 192, 192, 192, 192)


class SVHNNet(nnx.Module):
    """Goodfellow et al.'s SVHN network, optionally with transformers before the first convs.

    Eight 5×5 conv layers (``_SVHN_CHANNELS × width``, ReLU, max-pool 2 with strides
    alternating 2 and 1), two FC layers (``3072 × width``) with dropout, and either one
    head of ``num_classes`` or, with ``max_digits``, a length head and ``max_digits``
    digit heads. ``multi_st_layers > 0`` puts a :class:`~stn_jax.nnx.SpatialTransformer` (affine,
    localisation FC 32-32) before each of the first ``multi_st_layers`` conv layers
    (the paper's ST-CNN Multi).
    """

    st_0: SpatialTransformer  # the first transformer, set (as st_1, ...) when multi_st_layers > 0

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        width: float = 0.25,
        max_digits: int | None = None,
        dropout: float = 0.5,
        multi_st_layers: int = 0,
        transform: str = "affine",
        rngs: nnx.Rngs,
    ):
        input_shape = _checks.check_shape_tuple("input_shape", input_shape, ranks=(3,))
        if not (isinstance(width, (int, float)) and width > 0):
            raise ValueError(f"width must be a positive number, got {width!r}")
        if max_digits is not None and (not isinstance(max_digits, int) or max_digits < 1):
            raise ValueError(f"max_digits must be None or a positive int, got {max_digits!r}")
        if not 0 <= multi_st_layers <= len(_SVHN_CHANNELS):
            raise ValueError(f"multi_st_layers must be in 0..{len(_SVHN_CHANNELS)}, got {multi_st_layers!r}")
        self.has_transformer: bool = multi_st_layers > 0
        self.max_digits = max_digits
        self.num_convs: int = len(_SVHN_CHANNELS)
        self.multi_st_layers = multi_st_layers
        shape = input_shape
        for i, c in enumerate(_SVHN_CHANNELS):
            if i < multi_st_layers:
                st = SpatialTransformer(shape, transform=transform, hidden=(32, 32), return_theta=True, rngs=rngs)
                setattr(self, f"st_{i}", st)
            features = max(4, round(c * width))
            setattr(self, f"conv_{i}", nnx.Conv(shape[-1], features, (5, 5), rngs=rngs))
            stride = 2 if i % 2 == 0 else 1
            shape = (shape[0] // stride, shape[1] // stride, features)
        fc = max(16, round(3072 * width))
        self.mlp: MLP = MLP(math.prod(shape), hidden=(fc, fc), dropout=dropout, rngs=rngs)
        if max_digits is None:
            self.head: nnx.Linear = nnx.Linear(fc, num_classes, rngs=rngs)
        else:
            self.length_head: nnx.Linear = nnx.Linear(fc, max_digits + 2, rngs=rngs)
            self.digit_heads: nnx.Linear = nnx.Linear(fc, max_digits * num_classes, rngs=rngs)
        self.num_classes = num_classes

    def transform(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if not self.has_transformer:
            raise TypeError("this SVHNNet has no spatial transformer (multi_st_layers=0)")
        warped, theta = self.st_0(x)
        return warped, theta

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array | dict[str, jax.Array]:
        for i in range(self.num_convs):
            if i < self.multi_st_layers:
                x, _ = getattr(self, f"st_{i}")(x)
            x = nnx.relu(getattr(self, f"conv_{i}")(x))
            x = _pool(x, 2, stride=2 if i % 2 == 0 else 1)
        x = self.mlp(x, train=train)
        if self.max_digits is None:
            return self.head(x)
        digits = self.digit_heads(x).reshape(x.shape[0], self.max_digits, self.num_classes)
        return {"length": self.length_head(x), "digits": digits}


def sequence_loss(outputs: dict[str, jax.Array], labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of the length head plus the digit heads up to each true length.

    Args:
      outputs: ``{"length": (B, N + 2), "digits": (B, N, K)}`` from a model built with
        ``max_digits=N``.
      labels: ``(B, 1 + N)`` integers: the length (``N + 1`` for "more than N"), then the
        digits (entries past the length are ignored).

    Returns:
      scalar loss.

    Example:
      >>> import jax.numpy as jnp
      >>> from stn_jax.models import sequence_loss
      >>> outputs = {"length": jnp.zeros((1, 4)), "digits": jnp.zeros((1, 2, 10))}
      >>> round(float(sequence_loss(outputs, jnp.array([[1, 7, 0]]))), 4)  # log 4 + log 10
      3.6889
    """
    length, digits = labels[:, 0], labels[:, 1:]
    n = outputs["digits"].shape[1]
    loss = optax.softmax_cross_entropy_with_integer_labels(outputs["length"], length)
    per_digit = optax.softmax_cross_entropy_with_integer_labels(outputs["digits"], digits)
    mask = jnp.arange(n)[None, :] < length[:, None]
    return jnp.mean(loss + jnp.sum(per_digit * mask, axis=1))


def sequence_accuracy(outputs: dict[str, jax.Array], labels: jax.Array) -> jax.Array:
    """Fraction of sequences whose length and every digit up to it are right."""
    length, digits = labels[:, 0], labels[:, 1:]
    n = outputs["digits"].shape[1]
    mask = jnp.arange(n)[None, :] < length[:, None]
    digits_ok = jnp.all((jnp.argmax(outputs["digits"], -1) == digits) | ~mask, axis=1)
    return jnp.mean((jnp.argmax(outputs["length"], -1) == length) & digits_ok)


# -- builders -------------------------------------------------------------------------------


def _downsampled(input_shape: tuple[int, ...], factor: int) -> tuple[int, ...]:
    return (*(s // factor for s in input_shape[:-1]), input_shape[-1])


def _auto_pool(input_shape: tuple[int, ...], output_pool: int | None) -> int:
    if output_pool is None:
        return 2 if max(input_shape[:-1]) > 32 else 1
    return output_pool


def _fcn(input_shape, num_classes, *, rngs, hidden=(128, 128), dropout=0.0):
    return Classifier(input_shape, num_classes, hidden=hidden, dropout=dropout, rngs=rngs)


# Kernel sizes of the CNN baseline's two convolutions (the paper's 9×9 and 7×7).
_CNN_KERNELS = (9, 7)


def _cnn(input_shape, num_classes, *, rngs, channels=(32, 32), hidden=(), dropout=0.0):
    convs = tuple(zip(channels, _CNN_KERNELS, strict=True))
    return Classifier(input_shape, num_classes, convs=convs, hidden=hidden, dropout=dropout, rngs=rngs)


def _fcn_params(input_shape, num_classes, hidden) -> int:
    widths = (math.prod(input_shape), *hidden, num_classes)
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def _cnn_params(input_shape, num_classes, channels) -> int:
    """Parameters of ``_cnn(input_shape, num_classes, channels=channels)`` (SAME convs, each pooled by 2)."""
    *spatial, c = input_shape
    total = 0
    for features, kernel in zip(channels, _CNN_KERNELS, strict=True):
        total += (kernel ** len(spatial) * c + 1) * features
        spatial, c = [s // 2 for s in spatial], features
    return total + (math.prod(spatial) * c + 1) * num_classes


def _matched_width(count: Callable[[int], int], budget: int) -> int:
    """The largest width >= 4 whose classifier keeps the model within ``budget`` parameters."""
    width = 4
    while count(width + 1) <= budget:
        width += 1
    return width


def _warped_shape(input_shape, st_kw) -> tuple[int, ...]:
    """The transformer's output shape: its ``out_shape`` (default: the input's) with the input's channels."""
    return (*st_kw.get("out_shape", input_shape[:-1]), input_shape[-1])


def _st_count(st: SpatialTransformer) -> int:
    return count_params(st)["total"]


def _st_fcn(input_shape, num_classes, *, rngs, transform="affine", hidden=None, output_pool=None, **st_kw):
    """ST-FCN; ``hidden=None`` matches the FCN baseline's parameter count (2 equal hidden layers)."""
    pool = _auto_pool(input_shape, output_pool)
    st = SpatialTransformer(input_shape, transform=transform, hidden=(32, 32), return_theta=True, rngs=rngs, **st_kw)
    shape = _downsampled(_warped_shape(input_shape, st_kw), pool)
    if hidden is None:
        budget = _fcn_params(input_shape, num_classes, (128, 128)) - _st_count(st)
        h = _matched_width(lambda h: _fcn_params(shape, num_classes, (h, h)), budget)
        hidden = (h, h)
    return STClassifier([st], _fcn(shape, num_classes, hidden=hidden, rngs=rngs), output_pool=pool)


def _st_cnn(input_shape, num_classes, *, rngs, transform="affine", channels=None, output_pool=None, **st_kw):
    """ST-CNN; ``channels=None`` matches the CNN baseline's parameter count (equal widths)."""
    pool = _auto_pool(input_shape, output_pool)
    loc = _ConvLocalisation(input_shape, ((20, 5), (20, 5)), (50,), downsample=2, rngs=rngs)
    st = SpatialTransformer(input_shape, transform=transform, localisation=loc, return_theta=True, rngs=rngs, **st_kw)
    shape = _downsampled(_warped_shape(input_shape, st_kw), pool)
    if channels is None:
        budget = _cnn_params(input_shape, num_classes, (32, 32)) - _st_count(st)
        c = _matched_width(lambda c: _cnn_params(shape, num_classes, (c, c)), budget)
        channels = (c, c)
    classifier = _cnn(shape, num_classes, channels=channels, rngs=rngs)
    return STClassifier([st], classifier, output_pool=pool)


def _st_fcn_addition(input_shape, num_classes, *, rngs, transform="affine", hidden=None, output_pool=None, **st_kw):
    """2×ST-FCN; ``hidden=None`` matches an FCN baseline (hidden 128-128) on the same input."""
    pool = _auto_pool(input_shape, output_pool)
    sts = [
        SpatialTransformer(input_shape, transform=transform, hidden=(32, 32), return_theta=True, rngs=rngs, **st_kw)
        for _ in range(2)
    ]
    out_shape = _downsampled((*input_shape[:-1], 2 * input_shape[-1]), pool)
    if hidden is None:
        budget = _fcn_params(input_shape, num_classes, (128, 128)) - sum(_st_count(st) for st in sts)
        h = _matched_width(lambda h: _fcn_params(out_shape, num_classes, (h, h)), budget)
        hidden = (h, h)
    return STClassifier(sts, _fcn(out_shape, num_classes, hidden=hidden, rngs=rngs), output_pool=pool)


def _svhn_cnn(input_shape, num_classes, *, rngs, **kw):
    return SVHNNet(input_shape, num_classes, rngs=rngs, **kw)


def _svhn_st_cnn_single(input_shape, num_classes, *, rngs, transform="affine", **kw):
    loc = _ConvLocalisation(input_shape, ((32, 5), (32, 5)), (32, 32), rngs=rngs)
    st = SpatialTransformer(input_shape, transform=transform, localisation=loc, return_theta=True, rngs=rngs)
    return STClassifier([st], SVHNNet(input_shape, num_classes, rngs=rngs, **kw))


def _svhn_st_cnn_multi(input_shape, num_classes, *, rngs, **kw):
    return SVHNNet(input_shape, num_classes, multi_st_layers=4, rngs=rngs, **kw)


def _colour_cnn(input_shape, num_classes, *, rngs, dropout=0.5):
    convs = ((16, 5), (32, 5))
    return Classifier(
        input_shape,
        num_classes,
        convs=convs,
        hidden=(1024,),
        padding="VALID",
        dropout=dropout,
        conv_dropout_layers=(1,),
        rngs=rngs,
    )


def _colour_stn(input_shape, num_classes, *, rngs, transform="affine", dropout=0.5):
    loc = _ConvLocalisation(input_shape, ((64, 7), (128, 5)), (256,), padding="VALID", rngs=rngs)
    st = SpatialTransformer(input_shape, transform=transform, localisation=loc, return_theta=True, rngs=rngs)
    return STClassifier([st], _colour_cnn(input_shape, num_classes, dropout=dropout, rngs=rngs))


def _cnn_1d(input_shape, num_classes, *, rngs, channels=(32, 64)):
    convs = ((channels[0], 7), (channels[1], 5))
    return Classifier(input_shape, num_classes, convs=convs, global_pool=True, rngs=rngs)


def _st_1d(input_shape, num_classes, *, rngs, transform="affine", channels=(32, 64)):
    loc = _ConvLocalisation(input_shape, ((16, 7), (16, 5)), (32,), rngs=rngs)
    st = SpatialTransformer(input_shape, transform=transform, localisation=loc, return_theta=True, rngs=rngs)
    return STClassifier([st], _cnn_1d(input_shape, num_classes, channels=channels, rngs=rngs))


def _with_transform(builder, transform):
    def build(input_shape, num_classes, *, rngs, **kw):
        return builder(input_shape, num_classes, rngs=rngs, transform=transform, **kw)

    return build


_BUILDERS: dict[str, Callable[..., nnx.Module]] = {
    "fcn": _fcn,
    "cnn": _cnn,
    **{f"st_fcn_{t}": _with_transform(_st_fcn, t) for t in ("affine", "projective", "tps")},
    **{f"st_cnn_{t}": _with_transform(_st_cnn, t) for t in ("affine", "projective", "tps")},
    "st_fcn_addition": _st_fcn_addition,
    "svhn_cnn": _svhn_cnn,
    "svhn_st_cnn_single": _svhn_st_cnn_single,
    "svhn_st_cnn_multi": _svhn_st_cnn_multi,
    "colour_cnn": _colour_cnn,
    "colour_stn": _colour_stn,
    "cnn_1d": _cnn_1d,
    "st_1d": _st_1d,
}

#: Every name :func:`build_model` accepts.
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(
    name: str, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs, **kwargs: Any
) -> nnx.Module:
    """Builds a model of :data:`MODEL_NAMES` (see the module docstring for the table).

    Args:
      name: model name.
      num_classes: classes of the (single, or per-digit) output head.
      input_shape: one example's shape: ``(H, W, C)``, or ``(W, C)`` for the 1-D models.
      rngs: ``nnx.Rngs`` for parameters (and a ``dropout`` stream for models with dropout;
        ``nnx.Rngs(0)`` serves both).
      **kwargs: options of that model, e.g. ``hidden=``/``channels=`` widths,
        ``output_pool=``, ``num_control_points=`` (``st_fcn_*``/``st_cnn_*``),
        ``width=``/``max_digits=``/``dropout=`` (SVHN), ``transform=`` (``st_fcn_addition``,
        SVHN, ``colour_stn``, ``st_1d``).

    Returns:
      an NNX module with ``__call__(x, *, train=False)``, ``transform(x)`` and
      ``has_transformer``.

    Raises:
      ValueError: unknown ``name``, bad ``num_classes`` or ``input_shape`` of the wrong rank.
      TypeError: an option that model does not take.

    Example:
      >>> from flax import nnx
      >>> from stn_jax.models import build_model
      >>> build_model("resnet", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
      Traceback (most recent call last):
      ...
      ValueError: name must be one of [...], got 'resnet'
    """
    _checks.check_option("name", name, MODEL_NAMES)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    ranks = (2,) if name in ("st_1d", "cnn_1d") else (3,)
    input_shape = _checks.check_shape_tuple("input_shape", input_shape, ranks=ranks)
    return _BUILDERS[name](input_shape, num_classes, rngs=rngs, **kwargs)


def count_params(model: nnx.Module) -> dict[str, int]:
    """Scalars in the model's ``nnx.Param`` variables: total, localisation nets, the rest.

    Example:
      >>> from flax import nnx
      >>> from stn_jax.models import build_model, count_params
      >>> model = nnx.eval_shape(  # abstract: shapes only, nothing allocated
      ...     lambda: build_model("cnn", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0)))
      >>> count_params(model)
      {'total': 68522, 'localisation': 0, 'classifier': 68522}
    """
    counts = {"total": 0, "localisation": 0, "classifier": 0}
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    for path, leaf in leaves:
        size = int(math.prod(leaf.shape))
        counts["total"] += size
        counts["localisation" if is_localisation_path(path) else "classifier"] += size
    return counts


def param_count_table(
    names: Sequence[str], *, input_shape: Sequence[int], num_classes: int = 10, **kwargs: Any
) -> dict[str, dict[str, int]]:
    """``{name: count_params(...)}`` for models built abstractly (no parameters allocated).

    Example:
      >>> from stn_jax.models import param_count_table
      >>> param_count_table(["fcn", "st_fcn_tps"], input_shape=(28, 28, 1))["st_fcn_tps"]["total"]
      117839
    """
    table = {}
    for name in names:
        model = nnx.eval_shape(
            lambda name=name: build_model(
                name, num_classes=num_classes, input_shape=input_shape, rngs=nnx.Rngs(0), **kwargs
            )
        )
        table[name] = count_params(model)
    return table
