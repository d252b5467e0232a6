"""Recipe options of the training step: the weights' moving average (``ema_decay``) and label smoothing,
each against a NumPy computation of its own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from train import optimizer
from train import step as step_lib


def test_params_ema_is_the_debiased_average_of_the_parameters_a_numpy_loop_computes():
    decay, lr, target = 0.8, 0.3, np.array([1.0, -2.0, 0.5])
    tx = optax.chain(optax.sgd(lr), optimizer.params_ema(decay))
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    w, history = np.zeros(3), []
    for _ in range(7):
        grads = jax.grad(lambda p: jnp.sum((p["w"] - target) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        assert np.array_equal(updates["w"], -lr * grads["w"])  # the updates pass through unchanged
        params = optax.apply_updates(params, updates)
        w = w - lr * 2 * (w - target)
        history.append(w)
    weights = decay ** np.arange(len(history))[::-1]  # newest weighs most
    expected = (weights[:, None] * np.array(history)).sum(0) / weights.sum()
    np.testing.assert_allclose(optimizer.eval_params(decay, params, state)["w"], expected, rtol=1e-5)
    np.testing.assert_allclose(params["w"], history[-1], rtol=1e-5)
    assert optimizer.eval_params(0.0, params, state) is params
    fresh = tx.init(params)  # before any step the average is undefined: the parameters themselves
    np.testing.assert_array_equal(optimizer.eval_params(decay, params, fresh)["w"], params["w"])


class _Linear(nnx.Module):
    def __init__(self):
        self.dense = nnx.Linear(3, 4, rngs=nnx.Rngs(0))

    def __call__(self, x, train=False):
        return self.dense(x)


def test_label_smoothing_trains_on_the_smoothed_cross_entropy():
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    y = np.array([0, 3, 1, 1, 2])
    model = _Linear()
    graphdef, params, rng_state, other = nnx.split(model, nnx.Param, nnx.RngState, ...)
    logits = np.asarray(model(x), np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    for alpha in (0.0, 0.3):
        targets = np.full((5, 4), alpha / 4)
        targets[np.arange(5), y] += 1 - alpha
        expected = -(targets * log_p).sum(-1).mean()
        tx = optax.sgd(0.0)
        step = step_lib.make_train_step(
            graphdef,
            rng_state,
            tx,
            seed=0,
            preprocess=lambda k, a, b: (a, b),
            schedule=optax.constant_schedule(0.0),
            label_smoothing=alpha,
        )
        _, _, out = jax.jit(step)(params, tx.init(params), other, jnp.asarray(x), jnp.asarray(y), jnp.int32(0))
        np.testing.assert_allclose(float(out["loss"]), expected, rtol=1e-5)


def test_the_average_is_found_by_name_wherever_the_chain_holds_it(tmp_path):
    """Evaluation and a checkpoint's reader find params_ema's state by what it is, not by its place in the chain:
    last (as runs build it), followed by another transformation, or nested; both give the NumPy average."""
    from train import checkpoints

    decay, lr = 0.5, 0.1
    params = {"w": jnp.arange(3.0)}
    history = [np.arange(3.0) - lr * k for k in range(1, 4)]  # three SGD steps on a gradient of ones
    weights = decay ** np.arange(3)[::-1]
    expected = (weights[:, None] * np.array(history)).sum(0) / weights.sum()
    chains = [
        optax.chain(optax.sgd(lr), optimizer.params_ema(decay)),
        optax.chain(optax.sgd(lr), optimizer.params_ema(decay), optax.identity()),
        optax.chain(optax.chain(optax.sgd(lr), optimizer.params_ema(decay)), optax.scale(1.0)),
    ]
    for i, tx in enumerate(chains):
        state, p = tx.init(params), params
        for _ in range(3):
            updates, state = tx.update({"w": jnp.ones(3)}, state, p)
            p = optax.apply_updates(p, updates)
        np.testing.assert_allclose(optimizer.eval_params(decay, p, state)["w"], expected, rtol=1e-6)
        ckpt = checkpoints.Checkpoints(tmp_path / str(i), keep=1, async_save=False)
        ckpt.save(3, state={"params": p, "opt_state": state}, meta={"step": 3})
        ckpt.close()
        read = checkpoints.read_params(tmp_path / str(i), ema_decay=decay)
        np.testing.assert_allclose(checkpoints.pure_dict(read)["w"], expected, rtol=1e-6)
    twice = optax.chain(optimizer.params_ema(decay), optimizer.params_ema(decay)).init(params)
    with pytest.raises(ValueError, match="exactly one params_ema state, found 2"):
        optimizer.eval_params(decay, params, twice)
