"""The run's optimiser and learning-rate schedule, from a :class:`Recipe`.

Two recipes:

* ``optimizer="sgd", schedule="steps"`` — the paper's: SGD with momentum, learning rate
  0.01 divided by 10 at fixed steps (``lr_drops``, fractions of ``steps``).
* ``optimizer="adamw", schedule="cosine"`` — the default: AdamW (decoupled weight decay
  1e-4), linear warm-up for ``warmup_steps`` then cosine decay to 0, peak 3e-3.

Why the default: measured on RTS MNIST (ST-CNN affine, 1000 steps of 64, real MNIST,
test set distorted with seed 0, this 2-core CPU; ``python -m train --config
mnist_rts_st_cnn_affine`` with and without ``--set optimizer=sgd schedule=steps
learning_rate=0.01 warmup_steps=0 weight_decay=0.0``):

=================================  =====  =====  =====  =====  ==========
validation error at step            250    500    750   1000   test error
=================================  =====  =====  =====  =====  ==========
AdamW 3e-3, warm-up + cosine        10.2%  5.9%   4.0%   3.3%   3.69%
paper: SGD 0.01 ÷10 at 50%/75%      26.1%  13.1%  7.9%   7.8%   7.55%
=================================  =====  =====  =====  =====  ==========

Same cost per step (the update is negligible next to forward and backward); AdamW reaches at step 500 what SGD has not reached at 1000, so a
few-minute CPU run is worth running. (The paper's SGD is tuned for ~100× longer runs:
``mnist_rts_st_cnn_affine_paper``.) Adam's per-parameter scaling also copes with the very
different gradient scales of the localisation head (zero-initialised, identity bias)
and the classifier.

Both train the localisation nets at ``localisation_lr`` × the rate (paper: 0.1) through
:func:`stn_jax.optim.with_localisation_lr` (``optax.multi_transform`` on the
``localisation*`` parameter labels).

With ``ema_decay > 0`` the optimiser also keeps an exponential moving average of the
parameters (:func:`params_ema`, in the optimiser state, so checkpoints and exact resume
carry it); evaluation, pictures and :func:`train.train.restore_model` then use the average
(:func:`eval_params`), training keeps updating the raw parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stn_jax.optim import with_localisation_lr

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "steps", "constant")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The optimisation keys of a config (:data:`train.configs.base.KEYS` has their docs and checks)."""

    optimizer: str
    learning_rate: float
    schedule: str
    steps: int
    warmup_steps: int
    lr_drops: tuple[float, ...]
    momentum: float
    weight_decay: float
    localisation_lr: float
    grad_clip_norm: float
    ema_decay: float


def schedule(recipe: Recipe) -> optax.Schedule:
    """Learning rate as a function of the step."""
    lr, steps = recipe.learning_rate, recipe.steps
    if recipe.schedule == "constant":
        return optax.constant_schedule(lr)
    if recipe.schedule == "steps":
        boundaries = {max(1, round(f * steps)): 0.1 for f in recipe.lr_drops}
        return optax.piecewise_constant_schedule(lr, boundaries)
    if recipe.schedule == "cosine":
        warmup = min(recipe.warmup_steps, max(steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=0.0)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {recipe.schedule!r}")


def chain(recipe: Recipe) -> optax.GradientTransformation:
    """The optimiser, localisation nets at ``recipe.localisation_lr`` × the rate, the weights' average last."""
    lr = schedule(recipe)
    if recipe.optimizer == "adamw":
        tx = optax.adamw(lr, weight_decay=recipe.weight_decay)
    elif recipe.optimizer == "sgd":
        tx = optax.sgd(lr, momentum=recipe.momentum or None)
        if recipe.weight_decay:
            tx = optax.chain(optax.add_decayed_weights(recipe.weight_decay), tx)
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {recipe.optimizer!r}")
    if recipe.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(recipe.grad_clip_norm), tx)
    tx = with_localisation_lr(tx, multiplier=recipe.localisation_lr)
    return optax.chain(tx, params_ema(recipe.ema_decay)) if recipe.ema_decay else tx


class ParamsEMAState(NamedTuple):
    count: jax.Array  # updates averaged so far
    ema: Any  # biased average (starts at zero); see eval_params for the debiased one


def params_ema(decay: float) -> optax.GradientTransformation:
    """Leaves the updates unchanged; its state averages the parameters they lead to.

    Last in a chain, so it sees the final updates: ``ema = decay·ema + (1 − decay)·(params + updates)``.
    """

    def init(params):
        return ParamsEMAState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("params_ema needs the parameters: call update(updates, state, params)")
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, new)
        return updates, ParamsEMAState(state.count + 1, ema)

    return optax.GradientTransformation(init, update)


def debiased(state: ParamsEMAState, decay: float) -> Any:
    """The average with its zero start divided out (Adam's correction): a true weighted mean of the parameters."""
    correction = 1 - decay ** state.count.astype(jnp.float32)
    return jax.tree.map(lambda e: (e / jnp.maximum(correction, 1e-12)).astype(e.dtype), state.ema)


def ema_state(opt_state: Any) -> ParamsEMAState:
    """The :func:`params_ema` state inside an optimiser state, found by its type wherever the chain holds it."""
    is_ema = lambda x: isinstance(x, ParamsEMAState)
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_ema) if is_ema(x)]
    if len(found) != 1:
        raise ValueError(f"opt_state must hold exactly one params_ema state, found {len(found)}")
    return found[0]


def eval_params(ema_decay: float, params: Any, opt_state: Any) -> Any:
    """The parameters to evaluate: the debiased average with ``ema_decay > 0`` (once a step was taken), else ``params``."""
    if not ema_decay:
        return params
    state = ema_state(opt_state)
    return jax.lax.cond(state.count > 0, lambda: debiased(state, ema_decay), lambda: params)
