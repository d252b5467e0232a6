"""Defaults shared by every experiment; an experiment's ``get_config()`` changes only what differs.

Fields (all overridable from the command line with ``--set key=value``):

===========================  ================================================================
``dataset``                  ``"mnist"`` or ``"svhn"`` (TFDS ``svhn_cropped``)
``distortion``               :data:`train.distortions.KINDS` (MNIST only; ``"none"`` for SVHN)
``model`` / ``model_kwargs`` :func:`stn_jax.models.build_model` name and options
``train_split``              TFDS split trained on
``val_split``                held-out split evaluated every ``eval_every`` steps; it ranks
                             checkpoints ("best" = lowest validation error)
``test_split``               evaluated once at the end (the reported test error)
``train_distortion``         ``"fresh"`` (default): the training digits distorted anew every step;
                             ``"fixed"``: distorted once (seed ``test_seed + 2``), the same
                             images every epoch, as a fixed dataset would be
``batch_size``               *global* batch (all devices of all processes)
``steps``                    optimisation steps
``optimizer``                ``"adamw"`` (default, see :mod:`train.optim`) or ``"sgd"`` (paper)
``learning_rate``            peak learning rate
``schedule``                 ``"cosine"`` (warm-up then cosine decay), ``"steps"`` (divide by
                             10 at ``lr_drops``), ``"constant"``
``lr_drops``                 fractions of ``steps`` where ``"steps"`` divides the rate by 10
``localisation_lr``          learning-rate multiplier of the localisation nets (paper: 0.1)
``nonfinite``                ``"stop"`` (exit code 3) or ``"skip"`` the step
``ema_decay``                0: off; else evaluate an exponential moving average of the
                             weights with this decay (:func:`train.optim.params_ema`)
``label_smoothing``          0: off; else train on labels smoothed by this much
                             (``optax.smooth_labels``; evaluation losses stay unsmoothed)
``profile_steps``            ``()``: off; ``(first, last)``: a ``jax.profiler`` trace of those
                             steps in ``<workdir>/profile`` (:mod:`train.profiling`)
``steps_per_dispatch``       the most steps one dispatch takes (one ``lax.scan``), fewer up to
                             the next log, evaluation or checkpoint (:mod:`train.loop`); 0: 32
                             on an accelerator, 1 on a CPU (:func:`train.step.stepwise_chunks`)
``data_source``              ``"auto"``, ``"device"`` (the training split held on the devices)
                             or ``"host"`` (batches sent every dispatch) (:mod:`train.sources`)
===========================  ================================================================
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "base"
    # Data.
    c.dataset = "mnist"
    c.distortion = "none"
    c.data_dir = ""  # else --data_dir, else $TFDS_DATA_DIR; required
    c.prepare = True  # prepare MNIST automatically (offline fallback) if data_dir lacks it
    c.train_split = "train[:92%]"
    c.val_split = "train[92%:]"
    c.test_split = "test"
    c.test_seed = 0  # the fixed distortion of the validation and test sets
    c.train_distortion = "fresh"
    c.data_source = "auto"  # device when one process and the split fits (train/sources.py)
    # Model.
    c.model = "cnn"
    c.model_kwargs = ml_collections.ConfigDict()
    # Optimisation.
    c.seed = 0
    c.batch_size = 128
    c.steps = 2000
    c.optimizer = "adamw"
    c.learning_rate = 3e-3
    c.schedule = "cosine"
    c.warmup_steps = 100
    c.lr_drops = (0.5, 0.75)
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.localisation_lr = 0.1
    c.grad_clip_norm = 0.0  # 0: off
    c.ema_decay = 0.0  # 0: off
    c.label_smoothing = 0.0  # 0: off
    c.nonfinite = "stop"
    c.steps_per_dispatch = 0  # 0: per platform (train/step.py); a chunk ends at every boundary (train/loop.py)
    # Evaluation, logging, checkpoints.
    c.eval_every = 500
    c.eval_batch_size = 512  # divisible by common device counts
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.num_show = 16  # test images in each inputs-vs-transformer PNG
    c.profile_steps = ()  # (first, last): trace those steps into <workdir>/profile
    return c


def mnist(distortion: str, model: str, **model_kwargs) -> ml_collections.ConfigDict:
    c = base_config()
    c.name = f"mnist_{distortion.lower()}_{model}"
    c.distortion = distortion
    c.model = model
    c.model_kwargs = ml_collections.ConfigDict(model_kwargs)
    return c


def paper_sgd(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's optimiser: SGD (momentum 0.9), lr 0.01 divided by 10 at fixed steps, 0.1× localisation."""
    c.optimizer = "sgd"
    c.learning_rate = 0.01
    c.schedule = "steps"
    c.warmup_steps = 0
    c.weight_decay = 0.0
    return c
