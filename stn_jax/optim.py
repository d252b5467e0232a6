"""Optax helpers for spatial transformers: a smaller learning rate for the localisation nets.

The paper trained the localisation networks at a tenth of the learning rate.
:func:`localisation_labels` labels every parameter ``"localisation"`` or ``"default"`` for
``optax.multi_transform``; :func:`with_localisation_lr` wraps an optimiser that way.

Parameter naming convention (the NNX and Linen modules alike): inside a spatial transformer
the localisation network is the submodule ``localisation`` and the regression layer is
``localisation_head``; a parameter is the localisation net's when a key of its path starts
with ``"localisation"`` (:func:`is_localisation_path`).

Example — a 0.1× learning rate for the localisation net of a Linen model:

  >>> import jax, jax.numpy as jnp, optax
  >>> from stn_jax import linen as stn_linen
  >>> from stn_jax.optim import localisation_labels, with_localisation_lr
  >>> st = stn_linen.SpatialTransformer(hidden=(8,))
  >>> params = st.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))["params"]
  >>> sorted(set(jax.tree.leaves(localisation_labels(params))))
  ['localisation']
  >>> tx = optax.multi_transform(
  ...     {"default": optax.sgd(1.0), "localisation": optax.sgd(0.1)}, localisation_labels)
  >>> state = tx.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, _ = tx.update(grads, state, params)
  >>> float(updates["localisation_head"]["bias"][0])
  -0.1
  >>> updates2, _ = with_localisation_lr(optax.sgd(1.0), multiplier=0.1).update(
  ...     grads, with_localisation_lr(optax.sgd(1.0)).init(params), params)
  >>> float(updates2["localisation_head"]["bias"][0])
  -0.1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from stn_jax import _checks

try:
    import optax
except ModuleNotFoundError as _error:  # the core install, without the flax extra
    raise _checks.missing_extra(__name__, _error) from _error

__all__ = ["is_localisation_path", "localisation_labels", "with_localisation_lr"]

# Prefix of the attribute names that hold the localisation network and its regression layer.
_PREFIX = "localisation"


def _key_name(key) -> str | None:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            value = getattr(key, attr)
            return value if isinstance(value, str) else None
    return key if isinstance(key, str) else None


def is_localisation_path(path: Sequence[Any]) -> bool:
    """Whether a pytree path (of ``jax.tree_util`` keys or strings) lies in a localisation net."""
    return any((name := _key_name(k)) is not None and name.startswith(_PREFIX) for k in path)


def localisation_labels(params: Any) -> Any:
    """Labels ``"localisation"`` / ``"default"`` for every leaf of ``params``.

    Works on Linen parameter dicts and on NNX ``State`` objects (``nnx.state(model,
    nnx.Param)``, which is what ``nnx.Optimizer`` hands to optax), so it can be given as
    ``param_labels`` to ``optax.multi_transform`` directly. A leaf is in the localisation
    group when a key of its path starts with ``"localisation"`` (the attribute names of
    the localisation net and its regression layer in both modules).

    Args:
      params: any pytree of parameters.

    Returns:
      the same tree structure with a string per leaf.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _PREFIX if is_localisation_path(path) else "default", params
    )


def with_localisation_lr(tx: optax.GradientTransformation, *, multiplier: float = 0.1) -> optax.GradientTransformation:
    """``tx`` for every parameter, with the localisation net's updates scaled by ``multiplier``.

    For optimizers whose update is proportional to the learning rate (SGD, momentum,
    Adam, AdamW, ...) scaling the update equals scaling the learning rate; the two
    groups keep separate optimizer states, as ``optax.multi_transform`` does.

    Args:
      tx: the optimizer of the whole model.
      multiplier: learning-rate factor of the localisation nets (the paper: 0.1).

    Returns:
      an ``optax.GradientTransformation`` to use in place of ``tx``.
    """
    multiplier = _checks.check_finite_scalar("multiplier", multiplier)
    return optax.multi_transform(
        {"default": tx, _PREFIX: optax.chain(tx, optax.scale(multiplier))}, localisation_labels
    )
