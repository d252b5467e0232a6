"""The training loop end to end: every config built, every model and distortion trained, devices, hosts,
kill-and-resume, NaN, bad configs, real MNIST.

Runs that need their own JAX set-up (fake devices, several processes, SIGKILL) are
subprocesses; the rest call the loop in this process on tiny prepared datasets.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import helpers

helpers.require("tensorflow_datasets")  # in CI a missing `train` extra fails, never skips

import jax
import jax.numpy as jnp
from flax import nnx

import data_fixtures as fx
from train import __main__ as cli
from train import (
    checkpoints,
    compiled,
    config_checks,
    configs,
    datasets,
    distortions,
    errors,
    evaluation,
    input_pipeline,
    optimizer,
    prepare,
    run_data,
    xla_cpu,
)
from train import run as run_lib
from train import step as step_lib
from train import train as train_lib

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "train_worker.py"

# Narrow versions of every model, so that a smoke run compiles and steps quickly.
TINY_MODEL_KWARGS = {
    "cnn": {"channels": (4, 4)},
    "st_cnn_affine": {"channels": (4, 4)},
    "st_cnn_projective": {"channels": (4, 4)},
    "st_cnn_tps": {"channels": (4, 4)},
    "fcn": {"hidden": (8, 8)},
    "st_fcn_affine": {"hidden": (8, 8)},
    "st_fcn_projective": {"hidden": (8, 8)},
    "st_fcn_tps": {"hidden": (8, 8)},
    "st_fcn_addition": {"hidden": (8, 8)},
    "svhn_cnn": {"width": 0.03},
    "svhn_st_cnn_multi": {"width": 0.03},
    "colour_stn": {},
}
TINY = helpers.TINY_RUN


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Tiny genuine TFDS datasets: mnist (100 train, 8 test: validation and test of equal size, so the
    fixed distortion compiles once) and svhn_cropped (40, 20)."""
    root = tmp_path_factory.mktemp("train_data")
    prepare.prepare_mnist_arrays(fx.mnist_arrays(100, 8), data_dir=root / "tfds")
    prepare.prepare_svhn(root / "tfds", source=fx.write_svhn_dir(root / "mat", fx.svhn_arrays(40, 20)))
    return root / "tfds"


def tiny_config(name: str, data_dir: Path, *overrides: str):
    config = configs.get_config(name)
    cli.apply_overrides(config, cli.parse_overrides([*TINY, *overrides]))
    config.model_kwargs = TINY_MODEL_KWARGS[config.model]
    config.data_dir = str(data_dir)
    return config


def run_cli(args: list[str], *, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "train", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def flat_params(workdir: Path) -> list[np.ndarray]:
    return jax.tree.leaves(train_lib.final_params(workdir))


def assert_same_params(a: list[np.ndarray], b: list[np.ndarray], **tol) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, **tol)


# -- every config ---------------------------------------------------------------------------------


# One tiny training run per model and per distortion (13 of the 47 configs): the other configs pair the
# same models and distortions differently, which adds no code path to the loop; each of them is still
# validated and built (shapes only) below.
TRAINED = [
    "mnist_cnn",
    "mnist_rts_fcn",
    "mnist_r_st_fcn_affine",
    "mnist_p_st_fcn_projective",
    "mnist_e_st_fcn_tps",
    "mnist_p_st_cnn_projective",
    "mnist_e_st_cnn_tps",
    "mnist_tc_st_cnn_affine",
    "mnist_rts28_cnn",
    "mnist_addition_2st_fcn",
    "svhn_cnn",
    "svhn_colour_stn",
    "svhn_st_cnn_multi",
]


def test_the_trained_configs_train_every_model_and_every_distortion_once():
    every = [configs.get_config(n) for n in configs.NAMES]
    trained = [configs.get_config(n) for n in TRAINED]
    assert len(set(TRAINED)) == len(TRAINED)
    assert sorted({c.model for c in trained}) == sorted({c.model for c in every}) == sorted(TINY_MODEL_KWARGS)
    assert sorted({(c.dataset, c.distortion) for c in trained}) == sorted({(c.dataset, c.distortion) for c in every})
    assert {c.distortion for c in every} == set(distortions.KINDS)


@pytest.mark.parametrize("name", configs.NAMES)
def test_every_config_validates_and_builds_its_model_for_its_data(name, data_dir):
    """Full size, shapes only (nothing compiled or trained): the model takes what the data pipeline gives it."""
    config = configs.get_config(name)
    config.data_dir = str(data_dir)
    config_checks.validate(config)
    shape, classes = datasets.DATASETS[config.dataset].input_spec(config.distortion)
    raw = jax.ShapeDtypeStruct((4, *((32, 32, 3) if config.dataset == "svhn" else (28, 28, 1))), jnp.uint8)
    labels = jax.ShapeDtypeStruct((4,), jnp.int32)
    preprocess = compiled.training_input(configs.unpack(config, compiled.ModelSpec))
    images, out_labels = jax.eval_shape(lambda x, y: preprocess(jax.random.key(0), x, y), raw, labels)
    assert images.shape == (4, *shape) and images.dtype == jnp.float32 and out_labels.shape == (4,)
    model = nnx.eval_shape(lambda: compiled.build(config))
    logits = nnx.eval_shape(lambda m, x: m(x, train=False), model, images)
    assert logits.shape == (4, classes)


@pytest.mark.parametrize("name", TRAINED)
def test_config_trains_at_tiny_size_and_its_checkpoint_restores(name, data_dir, tmp_path):
    train_restore_and_recompute_the_test_error(tiny_config(name, data_dir), data_dir, tmp_path)


def test_weight_average_is_what_the_run_evaluates_and_restore_model_returns(data_dir, tmp_path):
    """With ``ema_decay`` the reported errors, the returned params and ``restore_model`` are the average's."""
    config = tiny_config("mnist_rts_st_cnn_affine", data_dir, "ema_decay=0.5", "label_smoothing=0.2")
    params = train_restore_and_recompute_the_test_error(config, data_dir, tmp_path)
    raw = jax.tree.leaves(train_lib.final_params(tmp_path))
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(raw, jax.tree.leaves(params))) > 1e-4
    with pytest.raises(errors.CheckpointError, match="no average of the weights"):
        train_lib.final_params(tiny_trained(data_dir, tmp_path / "plain"), ema_decay=0.5)


def tiny_trained(data_dir: Path, workdir: Path) -> Path:
    train_lib.train_and_evaluate(tiny_config("tiny", data_dir), workdir)
    return workdir


def train_restore_and_recompute_the_test_error(config, data_dir: Path, tmp_path: Path):
    """Trains ``config``; checks its files, ``restore_model`` against the returned params and the reported test
    error and loss against that model's on the test set. Returns the params."""
    summary, params = train_lib.train_and_evaluate(config, tmp_path, return_params=True)
    assert summary["steps"] == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "val"] == [2, 4]
    assert json.loads((tmp_path / "summary.json").read_text())["test_error"] == summary["test_error"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert checkpoints.Checkpoints(tmp_path / "checkpoints", keep=2).latest_step() == 4

    # The restored model holds the parameters the run ended with (in memory, not read back from the checkpoint).
    model = train_lib.restore_model(config, tmp_path)
    assert_same_params(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(params), rtol=0, atol=0)
    samples = sorted(p.name for p in (tmp_path / "samples").glob("*.png")) if (tmp_path / "samples").exists() else []
    assert samples == (["step_000002.png", "step_000004.png"] if model.has_transformer else [])

    # The reported test error and loss, recomputed from that model on the test split, distorted with the test seed.
    images, labels = input_pipeline.load_split(
        config.dataset, config.test_split, data_dir=data_dir, shard_index=0, shard_count=1, drop_remainder=False
    )
    if config.dataset == "svhn":
        images = images / np.float32(255)
    else:
        images, labels = distortions.test_set(config.distortion, images, labels, seed=config.test_seed)
    assert summary["test_examples"] == len(labels) == {"test": 8, "test[20%:]": 16}[config.test_split]
    logits = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(model, images), np.float64)
    log_softmax = logits - logits.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    wrong = int(np.sum(logits.argmax(-1) != labels))
    assert round(summary["test_error"] * len(labels)) == wrong, (summary, wrong)
    np.testing.assert_allclose(summary["test_loss"], -log_softmax[np.arange(len(labels)), labels].mean(), rtol=1e-4)
    return params


def test_fixed_train_distortion_is_the_split_distorted_once_and_trains(data_dir, tmp_path, monkeypatch):
    config = tiny_config("mnist_tc_cnn", data_dir, "train_distortion=fixed")
    images, labels = run_data.train_arrays(configs.unpack(config, run_data.DataSpec), data_dir)
    raw, raw_labels = input_pipeline.load_split(
        "mnist", config.train_split, data_dir=data_dir, shard_index=0, shard_count=1
    )
    expected, expected_labels = distortions.test_set("TC", raw, raw_labels, seed=config.test_seed + 2)
    assert images.dtype == np.uint8 and images.shape == (92, 60, 60, 1)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(images / 255.0, expected, rtol=0, atol=0.5 / 255 + 1e-6)  # uint8 rounding only
    test_distortion = distortions.test_set("TC", raw, raw_labels, seed=config.test_seed)[0]
    assert np.abs(expected - test_distortion).max() > 0.5  # its own seed, not the test set's

    # The step uses the stored images as they are, whatever its key.
    preprocess = compiled.training_input(configs.unpack(config, compiled.ModelSpec))
    x1, y1 = preprocess(jax.random.key(1), images[:4], labels[:4])
    x2, _ = preprocess(jax.random.key(2), images[:4], labels[:4])
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_allclose(x1, images[:4] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y1, labels[:4])

    # With two processes, each holds its contiguous half of the same fixed set.
    with monkeypatch.context() as m:
        m.setattr(jax, "process_count", lambda: 2)
        halves = []
        for index in range(2):
            m.setattr(jax, "process_index", lambda index=index: index)
            halves.append(run_data.train_arrays(configs.unpack(config, run_data.DataSpec), data_dir))
    np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), images)
    np.testing.assert_array_equal(np.concatenate([h[1] for h in halves]), labels)

    summary = train_lib.train_and_evaluate(config, tmp_path)
    assert summary["steps"] == 4 and np.isfinite(summary["test_loss"])


def test_each_process_reads_only_the_rows_it_evaluates_distorted_as_in_the_whole_split(data_dir, monkeypatch):
    config = tiny_config("mnist_rts28_cnn", data_dir)
    monkeypatch.setattr(distortions, "TEST_CHUNK", 16)  # chunks smaller than the split: reads cross chunk edges
    raw, raw_labels = input_pipeline.load_split(
        "mnist", config.train_split, data_dir=data_dir, shard_index=0, shard_count=1
    )
    whole, whole_labels = distortions.test_set(config.distortion, raw, raw_labels, seed=5)
    assert len(whole_labels) == 92
    reads, load_split = [], input_pipeline.load_split
    monkeypatch.setattr(input_pipeline, "load_split", lambda *a, **k: reads.append(k["rows"]) or load_split(*a, **k))
    for start, stop in [(0, 3), (13, 37), (40, 92), (90, 92), (50, 50)]:
        reads.clear()
        images, labels = run_data.eval_arrays(
            configs.unpack(config, run_data.DataSpec), data_dir, config.train_split, 5, (start, stop), 92
        )
        np.testing.assert_array_equal(images, whole[start:stop])
        np.testing.assert_array_equal(labels, whole_labels[start:stop])
        # Read: from the first chunk the rows touch to the end of the last, nothing else.
        assert reads == [(start // 16 * 16, min(92, -(-stop // 16) * 16) if stop > start else start // 16 * 16)]
    # Two processes: contiguous rows, together the whole split, each evaluating in as many batches.
    with monkeypatch.context() as m:
        m.setattr(jax, "process_count", lambda: 2)
        parts = []
        for index in range(2):
            m.setattr(jax, "process_index", lambda index=index: index)
            parts.append(evaluation.rows(93))
            size = parts[-1][1] - parts[-1][0]
            assert evaluation.EvalSet(whole[:size], whole_labels[:size], size=93, global_batch=8).num_batches == 12
        with pytest.raises(ValueError, match=r"evaluates rows \[47, 93\) of 93, got 47 examples"):
            evaluation.EvalSet(whole[:47], whole_labels[:47], size=93, global_batch=8)
    assert parts == [(0, 47), (47, 93)]


def test_every_table1_cell_has_a_config_and_modules_take_precedence():
    for distortion in ("R", "RTS", "P", "E"):
        for model in ("fcn", "cnn", "st_fcn_tps", "st_cnn_projective"):
            config = configs.get_config(f"mnist_{distortion.lower()}_{model}")
            assert (config.distortion, config.model, config.dataset) == (distortion, model, "mnist")
    # mnist_rts_st_cnn_affine is a module with its own (smaller) batch.
    assert configs.get_config("mnist_rts_st_cnn_affine").batch_size == 64
    assert configs.get_config("mnist_r_st_cnn_affine").batch_size == 128


def test_unknown_config_names_the_known_ones():
    with pytest.raises(configs.UnknownConfigError, match="mnist_rts_st_cnn_affine"):
        configs.get_config("mnist_rts_resnet")


def test_paper_schedule_and_localisation_rate():
    from train import optimizer

    config = configs.get_config("mnist_rts_st_cnn_affine_paper")
    lr = optimizer.schedule(configs.unpack(config, optimizer.Recipe))
    half, three_quarters = config.steps // 2, 3 * config.steps // 4
    np.testing.assert_allclose(
        [lr(0), lr(half - 1), lr(half), lr(three_quarters)], [0.01, 0.01, 0.001, 0.0001], rtol=1e-6
    )
    model = train_lib.build(configs.get_config("tiny"))
    params = nnx.state(model, nnx.Param)
    tx = optimizer.chain(configs.unpack(config, optimizer.Recipe))
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(updates)}
    loc = [v for k, v in flat.items() if "localisation" in k]
    rest = [v for k, v in flat.items() if "localisation" not in k]
    assert loc and rest
    np.testing.assert_allclose(np.concatenate([v.ravel() for v in loc]), -0.001, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([v.ravel() for v in rest]), -0.01, rtol=1e-6)


# -- devices and hosts -------------------------------------------------------------------------------


def test_one_and_eight_devices_reach_the_same_parameters(data_dir, tmp_path):
    args = ["--config", "tiny", "--data_dir", str(data_dir), "--set", "steps=5", "eval_every=5"]
    one = run_cli([*args, "--workdir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    eight = run_cli([*args, "--workdir", str(tmp_path / "eight"), "--num_cpu_devices", "8"])
    assert eight.returncode == 0, eight.stderr[-3000:]
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "eight")]
    assert [s["devices"] for s in summaries] == [1, 8]
    assert_same_params(flat_params(tmp_path / "one"), flat_params(tmp_path / "eight"), rtol=2e-4, atol=2e-6)
    initial = jax.tree.leaves(nnx.state(train_lib.build(configs.get_config("tiny")), nnx.Param))
    moved = sum(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(initial, flat_params(tmp_path / "one")))
    assert moved > 1e-3  # the comparison above is about trained parameters


def _two_processes(data_dir: Path, workdir: Path, out: Path, steps: int) -> list:
    port = helpers.free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    procs = []
    for i in range(2):
        argv = ["--config", "tiny", "--data_dir", str(data_dir), "--workdir", str(workdir), "--coordinator",
                f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i), "--set", f"steps={steps}",
                "eval_every=3", "checkpoint_every=3"]  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(out / f"p{i}.npz"), *argv],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    except subprocess.TimeoutExpired:  # one process failed and the other waits for it: show both
        for p in procs:
            p.kill()
        stderrs = [p.communicate()[1] for p in procs]
        raise AssertionError("".join(f"process {i}:\n{e[-3000:]}\n" for i, e in enumerate(stderrs))) from None
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return [dict(np.load(out / f"p{i}.npz")) for i in range(2)]


def test_two_processes_end_with_identical_parameters_and_both_restore(data_dir, tmp_path):
    workdir = tmp_path / "run"
    first = _two_processes(data_dir, workdir, tmp_path, steps=3)
    assert [int(r["resumed_from"]) for r in first] == [0, 0]
    # A second launch: each process restores the step-3 checkpoint (and its own data shard's state).
    results = _two_processes(data_dir, workdir, tmp_path, steps=5)
    assert [int(r["process_index"]) for r in results] == [0, 1]
    assert all(int(r["process_count"]) == 2 and int(r["devices"]) == 2 for r in results)
    assert [int(r["resumed_from"]) for r in results] == [3, 3]
    leaves = [[r[f"arr_{k}"] for k in range(len(r) - 5)] for r in results]
    assert len(leaves[0]) > 0
    for a, b in zip(*leaves):
        np.testing.assert_array_equal(a, b)
    assert float(results[0]["test_error"]) == float(results[1]["test_error"])
    # Written once, by process 0; the checkpoint holds the same parameters.
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "val"] == [3, 5]
    assert [r["step"] for r in records if r["split"] == "test"] == [3, 5]
    assert_same_params(flat_params(workdir), leaves[0], rtol=0, atol=0)
    moved = max(
        float(np.abs(a - b).max()) for a, b in zip(leaves[0], [first[0][f"arr_{k}"] for k in range(len(leaves[0]))])
    )
    assert moved > 0  # steps 4 and 5 really ran after the restore


def test_xla_cpu_flag_is_added_once_and_never_overrides_the_user():
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert xla_cpu.use_xla_convolutions(env)
    assert env["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {xla_cpu.YNN_FLAG}={xla_cpu.YNN_OFF}"
    assert not xla_cpu.use_xla_convolutions(env)  # already there: unchanged
    assert env["XLA_FLAGS"].count(xla_cpu.YNN_FLAG) == 1
    user = {"XLA_FLAGS": f"{xla_cpu.YNN_FLAG}=LIBRARY_FUSION_TYPE_DOT"}
    assert not xla_cpu.use_xla_convolutions(user)
    assert user["XLA_FLAGS"] == f"{xla_cpu.YNN_FLAG}=LIBRARY_FUSION_TYPE_DOT"


CONV_GRAD = """
import jax, jax.numpy as jnp, numpy as np
x = jnp.asarray(np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32))
w = jnp.asarray(np.random.default_rng(1).standard_normal((9, 9, 1, 8), dtype=np.float32))
def loss(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.sin(y).mean(axis=-1))
gx, gw = jax.grad(loss, argnums=(0, 1))(x, w)
print(float(jnp.sum(gx ** 2)), float(jnp.sum(gw ** 2)))
"""


def test_xla_cpu_flag_is_known_to_this_jaxlib_and_keeps_the_numbers():
    """XLA aborts on a flag it does not know: this fails if a JAX upgrade drops it."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    runs = []
    for tuned in (False, True):
        run_env = dict(env)
        if tuned:
            assert xla_cpu.use_xla_convolutions(run_env)
        out = subprocess.run(
            [sys.executable, "-c", CONV_GRAD], env=run_env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append([float(v) for v in out.stdout.split()])
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5)


# -- reliability ---------------------------------------------------------------------------------------


def test_sigkill_mid_run_then_rerun_resumes_and_matches_an_uninterrupted_run(data_dir, tmp_path):
    args = ["--config", "tiny", "--data_dir", str(data_dir), "--set", "steps=600", "checkpoint_every=20",
            "eval_every=1000", "log_every=100"]  # fmt: skip
    reference = run_cli([*args, "--workdir", str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr[-3000:]

    workdir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *args, "--workdir", str(workdir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Killed once step 100 is checkpointed, 500 steps before the end. No deadline shorter than the run
    # itself: under load everything is slower alike, so only the run's end can pre-empt the kill.
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            steps = [int(p.name) for p in (workdir / "checkpoints").glob("[0-9]*") if p.name.isdigit()]
            if steps and max(steps) >= 100:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "summary.json").exists()
    manager = checkpoints.Checkpoints(workdir / "checkpoints", keep=2)
    killed_at = manager.latest_step()
    manager.close()
    assert killed_at is not None and 100 <= killed_at < 600

    resumed = run_cli([*args, "--workdir", str(workdir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from the checkpoint of step {killed_at}" in resumed.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from"] == killed_at
    assert_same_params(flat_params(workdir), flat_params(tmp_path / "reference"), rtol=0, atol=0)
    # The metrics file describes one history: no step logged twice.
    train_steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [
        s
        for s, line in zip(train_steps, (workdir / "metrics.jsonl").read_text().splitlines())
        if json.loads(line)["split"] == "train"
    ]
    assert train_steps == sorted(set(train_steps))


def test_nan_loss_stops_with_exit_code_3_and_the_last_good_checkpoint_restores(data_dir, tmp_path, capsys):
    # SGD at 1e30 after a zero-rate first step: step 1 is finite, the loss blows up afterwards.
    code = cli.main(
        ["--config", "tiny", "--data_dir", str(data_dir), "--workdir", str(tmp_path), "--set", "optimizer=sgd",
         "schedule=cosine", "warmup_steps=3", "learning_rate=1e30", "steps=20", "checkpoint_every=1",
         "eval_every=100"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == errors.EXIT_NONFINITE == 3
    assert "non-finite loss" in err and "last good checkpoint is step" in err
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    bad_step = int(err.split("gradients at step ")[1].split(":")[0])
    manager = checkpoints.Checkpoints(tmp_path / "checkpoints", keep=2)
    assert manager.latest_step() == bad_step - 1 >= 1
    manager.close()
    params = flat_params(tmp_path)
    assert all(np.isfinite(p).all() for p in params)
    assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")
    assert not (tmp_path / "summary.json").exists()


def test_nan_loss_skip_mode_skips_steps_and_finishes(data_dir, tmp_path):
    config = tiny_config(
        "tiny", data_dir, "optimizer=sgd", "schedule=constant", "learning_rate=1e30", "steps=6", "nonfinite=skip"
    )
    summary = train_lib.train_and_evaluate(config, tmp_path)
    assert summary["skipped_steps"] >= 1
    assert all(np.isfinite(p).all() for p in flat_params(tmp_path))


def poison_steps(monkeypatch, bad_steps, *, interrupt_at=None, dispatched=None, made=None):
    """Makes the loop's step non-finite at ``bad_steps`` (1-based; params and optimiser state kept, as the
    real step keeps them), and raise KeyboardInterrupt when the chunk holding step ``interrupt_at`` is about
    to be dispatched; each dispatched chunk's ``(first step, length)`` is appended to ``dispatched``, each
    jitted chunk function made to ``made``."""
    real_step, real_chunk = step_lib.make_train_step, step_lib.make_train_chunk
    bad = sorted(s - 1 for s in bad_steps) or [-1]

    def make_step(*args, **kwargs):
        step = real_step(*args, **kwargs)

        def poisoned(params, opt_state, other, images, labels, index):
            new_params, new_opt_state, out = step(params, opt_state, other, images, labels, index)
            hit = jnp.any(index == jnp.asarray(bad, jnp.int32))
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(hit, b, a), new, old)
            out = dict(out, loss=jnp.where(hit, jnp.nan, out["loss"]), finite=out["finite"] & ~hit)
            return keep(new_params, params), keep(new_opt_state, opt_state), out

        return poisoned

    def make_chunk(*args, **kwargs):
        chunk = real_chunk(*args, **kwargs)

        def counted(params, opt_state, other, dataset, xs, first):
            length = jax.tree.leaves(xs)[0].shape[0]
            if interrupt_at is not None and first + 1 <= interrupt_at <= first + length:
                raise KeyboardInterrupt
            if dispatched is not None:
                dispatched.append((int(first) + 1, length))
            return chunk(params, opt_state, other, dataset, xs, first)

        if made is not None:
            made.append(chunk)
        return counted

    monkeypatch.setattr(step_lib, "make_train_step", make_step)
    monkeypatch.setattr(step_lib, "make_train_chunk", make_chunk)


@pytest.mark.parametrize(
    "every, bad, found_at, last_good", [(("4", "3"), 6, 6, 3), (("4", "3"), 7, 8, 6), (("12", "6"), 9, 12, 6)]
)
def test_nan_stop_lands_at_the_next_boundary_and_no_checkpoint_follows_it(
    every, bad, found_at, last_good, data_dir, tmp_path, monkeypatch
):
    # log_every=4, checkpoint_every=3: metrics fetched at steps 1, 3, 4, 6, 8, 9, 12 (first step, log, checkpoint).
    # log_every=12, checkpoint_every=6: steps 7-12 run as chunks of 4 and 2, step 9 inside the first.
    log_every, checkpoint_every = every
    dispatched = []
    poison_steps(monkeypatch, {bad}, dispatched=dispatched)
    config = tiny_config(
        "tiny",
        data_dir,
        "steps=12",
        f"log_every={log_every}",
        f"checkpoint_every={checkpoint_every}",
        "eval_every=100",
        "steps_per_dispatch=32",
    )
    with pytest.raises(errors.NonFiniteLossError) as info:
        train_lib.train_and_evaluate(config, tmp_path)
    message = str(info.value)
    assert f"or gradients at step {bad}: stopped" in message
    assert (f"(seen at step {found_at}, where the metrics were fetched)" in message) == (found_at != bad)
    assert f"The last good checkpoint is step {last_good} in {tmp_path / 'checkpoints'}" in message
    manager = checkpoints.Checkpoints(tmp_path / "checkpoints", keep=2)
    saves = range(int(checkpoint_every), 13, int(checkpoint_every))
    assert manager.all_steps() == [s for s in saves if s < bad]  # no checkpoint at or after the bad step
    manager.close()
    logged = tmp_path / "metrics.jsonl"  # none before the first log
    records = [json.loads(line) for line in logged.read_text().splitlines()] if logged.exists() else []
    assert [r["step"] for r in records if r["split"] == "train"] == [4] * (log_every == "4")
    if log_every == "12":
        assert dispatched == [(1, 1), (2, 4), (6, 1), (7, 4), (11, 2)]
    assert all(np.isfinite(p).all() for p in flat_params(tmp_path))


def test_nan_skip_counts_skipped_steps_and_stops_after_too_many_in_a_row(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_lib, "MAX_SKIPPED_IN_A_ROW", 2)
    config = tiny_config(
        "tiny",
        data_dir,
        "steps=8",
        "log_every=4",
        "checkpoint_every=100",
        "eval_every=100",
        "nonfinite=skip",
        "steps_per_dispatch=4",
    )  # (chunks 1, 2, 1, 4)
    poison_steps(monkeypatch, {2, 3, 6})  # never more than 2 in a row
    summary = train_lib.train_and_evaluate(config, tmp_path / "finishes")
    assert summary["skipped_steps"] == 3
    err = capsys.readouterr().err
    assert all(f"step {s}: non-finite loss, step skipped ({n} so far)" in err for s, n in ((2, 1), (3, 2), (6, 3)))
    records = [json.loads(line) for line in (tmp_path / "finishes" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [4, 8] and all(np.isfinite(r["loss"]) for r in train)

    poison_steps(monkeypatch, {3, 5, 6, 7})  # the third in a row (7) is one too many; seen at step 8
    with pytest.raises(errors.NonFiniteLossError, match=r"or gradients at step 7: stopped \(seen at step 8"):
        train_lib.train_and_evaluate(config, tmp_path / "stops")


@pytest.mark.parametrize("source", ["device", "host"])
def test_interrupted_run_resumes_bit_exactly_from_its_checkpoint(source, data_dir, tmp_path, monkeypatch):
    """The batches after a resume are those of an uninterrupted run although the loop reads ahead (in-process)."""
    config = tiny_config(
        "tiny",
        data_dir,
        "steps=20",
        "log_every=20",
        "checkpoint_every=7",
        "eval_every=100",
        "async_checkpoints=False",
        f"data_source={source!r}",
        "steps_per_dispatch=32",
    )
    train_lib.train_and_evaluate(config, tmp_path / "reference")
    with monkeypatch.context() as m:
        poison_steps(m, set(), interrupt_at=16)  # steps 1-14 dispatched, the checkpoints of steps 7 and 14 saved
        with pytest.raises(KeyboardInterrupt):
            train_lib.train_and_evaluate(config, tmp_path / "interrupted")
    assert checkpoints.Checkpoints(tmp_path / "interrupted" / "checkpoints", keep=2).latest_step() == 14
    summary = train_lib.train_and_evaluate(config, tmp_path / "interrupted")
    assert summary["resumed_from"] == 14
    assert_same_params(flat_params(tmp_path / "interrupted"), flat_params(tmp_path / "reference"), rtol=0, atol=0)


@pytest.mark.parametrize("stepwise", [False, True], ids=["scanned", "stepwise"])
def test_every_chunking_and_both_sources_end_with_identical_parameters_and_losses(
    stepwise, data_dir, tmp_path, monkeypatch
):
    """One step per dispatch, chunks of up to 3 or 32 (ragged spans cut into powers of two), the split on the
    device or batches from the host, the steps of a chunk scanned (accelerators) or dispatched one at a time
    (CPUs): the same parameters and logged losses, bit for bit. A run dispatches one chunk per planned piece
    and compiles one chunk length per distinct piece (one program, stepwise)."""
    monkeypatch.setattr(step_lib, "stepwise_chunks", lambda platform: stepwise)
    every = ("steps=21", "log_every=5", "eval_every=21", "checkpoint_every=10")
    runs = {}
    for name, overrides in [
        ("k32_device", ("steps_per_dispatch=32", "data_source='device'")),
        ("k1", ("steps_per_dispatch=1",)),
        ("k32_host", ("steps_per_dispatch=32", "data_source='host'")),
        ("k3_device", ("steps_per_dispatch=3", "data_source='device'")),
    ]:
        dispatched, made = [], []
        with monkeypatch.context() as m:
            poison_steps(m, set(), dispatched=dispatched, made=made)
            config = tiny_config("mnist_rts_st_cnn_affine", data_dir, *every, *overrides)
            _, params = train_lib.train_and_evaluate(config, tmp_path / name, return_params=True)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = params, [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
        schedule = optimizer.schedule(
            configs.unpack(config, optimizer.Recipe)
        )  # step s takes the rate (and keys) of its 0-based index s - 1
        for r in (r for r in records if r["split"] == "train"):
            np.testing.assert_allclose(r["learning_rate"], float(schedule(r["step"] - 1)), rtol=1e-5)
        assert [d[0] for d in dispatched] == list(np.cumsum([1] + [n for _, n in dispatched][:-1]))  # consecutive
        assert sum(n for _, n in dispatched) == 21
        compiled_lengths = 1 if stepwise else len({n for _, n in dispatched})  # one compile per chunk length
        assert made[0].jitted._cache_size() == compiled_lengths
        runs[name] += (dispatched,)
    assert runs["k32_host"][2] == runs["k32_device"][2]
    # Boundaries 1, 5, 10, 15, 20, 21: spans of 1, 4, 5, 5, 5, 1 steps.
    assert runs["k32_device"][2] == [(1, 1), (2, 4), (6, 4), (10, 1), (11, 4), (15, 1), (16, 4), (20, 1), (21, 1)]
    assert runs["k1"][2] == [(s, 1) for s in range(1, 22)]
    assert runs["k3_device"][2] == [
        (1, 1),
        (2, 2),
        (4, 1),
        (5, 1),
        (6, 2),
        (8, 1),
        (9, 2),
        (11, 2),
        (13, 1),
        (14, 2),
        (16, 2),
        (18, 1),
        (19, 2),
        (21, 1),
    ]
    reference_params, reference_losses, _ = runs["k1"]
    assert [s for s, _ in reference_losses] == [5, 10, 15, 20, 21]
    for name, (params, losses, _) in runs.items():
        assert losses == reference_losses, name
        assert_same_params(jax.tree.leaves(params), jax.tree.leaves(reference_params), rtol=0, atol=0)


# -- the loop's driver ------------------------------------------------------------------------------------


def _device_driver():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import reproduce_on_device

    return reproduce_on_device


ABSENT_ON_ACCELERATOR = ("tensorflow", "tensorflow_datasets", "grain", "tensorboardX")  # a lent GPU machine lacks them


def test_a_run_on_a_pack_without_tfds_or_grain_matches_the_run_on_tfds_with_host_batches(data_dir, tmp_path):
    """Where TFDS, grain, TensorFlow and tensorboardX are missing (made unimportable here), ``python -m train``
    reads a pack (benchmarks/reproduce_on_device.py), holds its training split on the device, and ends with the
    parameters, losses and test error of the same run on the TFDS data_dir with batches from the host (grain)."""
    device = _device_driver()
    sizes = device.pack(data_dir, tmp_path / "pack.npz", ["rts_st_cnn_affine", "e_cnn"])
    assert sizes == {"dataset": "mnist", "train[:92%]": 92, "train[92%:]": 8, "test": 8}
    sets = [
        "model_kwargs.channels=(4,4)",
        "batch_size=8",
        "eval_batch_size=8",
        "steps=14",
        "log_every=5",
        "eval_every=7",
        "checkpoint_every=7",
        "num_show=2",
        "warmup_steps=1",
    ]
    block = f"import sys; sys.modules.update(dict.fromkeys({ABSENT_ON_ACCELERATOR!r})); import train.__main__ as m; "
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            block + "sys.exit(m.main())",
            "--config",
            "mnist_rts_st_cnn_affine",
            "--data_dir",
            str(tmp_path / "pack.npz"),
            "--workdir",
            str(tmp_path / "pack_run"),
            "--set",
            *sets,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training batches: device (the split (0 MiB) fits)" in result.stderr
    assert "tensorboardX is not installed" in result.stderr and not (tmp_path / "pack_run" / "tensorboard").exists()
    reference = run_cli(
        [
            "--config",
            "mnist_rts_st_cnn_affine",
            "--data_dir",
            str(data_dir),
            "--workdir",
            str(tmp_path / "tfds_run"),
            "--set",
            *sets,
            "data_source='host'",
        ]
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    summary = json.loads((tmp_path / "tfds_run" / "summary.json").read_text())
    on_pack = json.loads((tmp_path / "pack_run" / "summary.json").read_text())
    assert (on_pack["test_error"], on_pack["test_loss"]) == (summary["test_error"], summary["test_loss"])
    lines = lambda run: [
        {k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "time")}
        for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(lines("pack_run")) > 3 and lines("pack_run") == lines("tfds_run")
    assert_same_params(flat_params(tmp_path / "pack_run"), flat_params(tmp_path / "tfds_run"), rtol=0, atol=0)


def test_device_driver_trains_cells_with_the_training_command_on_a_pack_and_records_them(data_dir, tmp_path):
    device = _device_driver()
    device.pack(data_dir, tmp_path / "pack.npz", ["rts_fcn"])
    out = tmp_path / "out"
    specs = [("rts_fcn", 3, 8), ("r_fcn+seed_1", 2, 4)]
    recorded = device.run(specs, tmp_path / "pack.npz", out, workers=2, seconds=600)
    assert recorded == 2, (out / "run.log").read_text()
    record = json.loads((out / "results" / "rts_fcn__s3_b8.json").read_text())
    assert (record["cell"], record["steps"], record["batch_size"], record["test_examples"]) == ("rts_fcn", 3, 8, 8)
    assert record["machine"].startswith("cpu") and record["last_val_error"] is not None  # validated as any run
    assert "-m train --config mnist_rts_fcn" in record["command"] and "pack.npz" in record["command"]
    assert (out / "runs" / "rts_fcn__s3_b8" / "checkpoints").is_dir()
    assert json.loads((out / "results" / "r_fcn+seed_1__s2_b4.json").read_text())["variant"] == "seed_1"
    imported = tmp_path / "imported"
    (imported / "rts_fcn__s3_b8.json").parent.mkdir()
    (imported / "rts_fcn__s3_b8.json").write_text('{"recorded": "before"}')
    written, kept = device.import_records(out / "records.json", imported)  # the bundle a device hands back
    assert [p.name for p in written] == ["r_fcn+seed_1__s2_b4.json"] and [p.name for p in kept] == [
        "rts_fcn__s3_b8.json"
    ]
    assert json.loads(written[0].read_text()) == json.loads((out / "results" / written[0].name).read_text())
    assert json.loads(kept[0].read_text()) == {"recorded": "before"}  # an existing record is never replaced
    late = tmp_path / "late"
    assert device.run([("p_fcn", 3, 8)], tmp_path / "pack.npz", late, workers=1, seconds=1) == 0
    assert "not started, out of time" in (late / "run.log").read_text()
    assert not list((late / "results").iterdir())


def test_device_driver_runs_the_experiments_not_yet_recorded(tmp_path, monkeypatch):
    device = _device_driver()
    results = tmp_path / "results"
    results.mkdir()
    first = device.EXPERIMENTS["tc"].runs()[0]
    (results / f"{device.run_stem(*first)}.json").write_text("{}")  # recorded already: left out
    monkeypatch.setattr(device, "RESULTS_DIR", results)
    planned = []
    monkeypatch.setattr(device, "run", lambda specs, *args, **kwargs: planned.extend(specs) or 0)
    argv = ["run", "--pack", str(tmp_path / "pack.npz"), "--out", str(tmp_path / "out"), "--experiments", "tc,init"]
    assert device.main(argv) == 0
    expected = list(dict.fromkeys([*device.EXPERIMENTS["tc"].runs(), *device.EXPERIMENTS["init"].runs()]))
    assert planned == expected[1:] and first not in planned
    with pytest.raises(SystemExit):
        device.main([*argv, "--table1"])  # one plan at a time


def _imported_in_a_fresh_process(imports: str, absent: tuple[str, ...], extra: str = "") -> list[str]:
    """What ``import <imports>`` pulls in of the packages ``absent`` (then ``extra``'s output), in a new process."""
    code = f"import sys, {imports}; {extra}print(sorted(m for m in sys.modules if m.split('.')[0] in {absent!r}))"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'benchmarks'}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_device_driver_and_the_training_command_import_nothing_a_lent_accelerator_lacks():
    imports = "reproduce_on_device, train.train, train.__main__"
    assert _imported_in_a_fresh_process(imports, ABSENT_ON_ACCELERATOR) == ["[]"]


def test_loop_step_and_loop_benchmark_import_nothing_a_bare_accelerator_machine_lacks():
    """A GPU box with only jax, flax, optax, chex, numpy and torch runs the loop's inner part and its benchmark."""
    absent = ("tensorflow", "tensorflow_datasets", "grain", "orbax", "ml_collections")
    backends = "from jax._src import xla_bridge; print(sorted(xla_bridge._backends)); "
    out = _imported_in_a_fresh_process("train.loop, train.step, loop_speed", absent, backends)
    assert out == ["[]", "[]"], out  # no backend started; nothing absent there imported


@pytest.mark.parametrize("start, max_steps", [(0, 100), (4, 100), (0, 3), (2, 1)])
def test_drive_runs_spans_to_each_boundary_in_power_of_two_chunks_and_reads_metrics_only_there(
    start, max_steps, monkeypatch
):
    from train import loop

    events, stop = [], start + 22

    def boundary(s):
        events.append(("ask", s))
        return s % 7 == 0

    def feed(first, length):
        events.append(("feed", first, length))
        return {"x": jnp.arange(first, first + length)}

    def run_chunk(carry, xs, first):
        assert isinstance(xs["x"], jax.Array)  # already sent
        events.append(("chunk", first, len(xs["x"])))
        return carry + [int(v) for v in xs["x"]], {"loss": xs["x"] * 10, "finite": xs["x"] % 2 == 0}

    real_device_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: (events.append(("device_get",)), real_device_get(x))[1])
    got = []
    for s, carry, fetched in loop.drive(
        run_chunk, [], feed, start=start, stop=stop, boundary=boundary, max_steps=max_steps
    ):
        events.append(("yield", s))
        got.append((s, list(carry), [(int(m["loss"]), bool(m["finite"])) for m in fetched]))

    # The expected order, step by step: a span's steps are asked about before its first chunk is fed; each chunk
    # is the largest power of two left in its span; the next chunk is fed only after the previous was dispatched
    # (and after its boundary was handled); metrics are read only at a boundary.
    expected, s, boundaries = [], start, []
    while s < stop:
        first = s + 1
        while True:
            s += 1
            hit = s == stop or s % 7 == 0
            if s != stop:
                expected.append(("ask", s))
            if hit or s - first + 1 == max_steps:
                break
        left = s - first + 1
        while left:
            length = 2 ** int(np.log2(left))
            expected += [("feed", first, length), ("chunk", first, length)]
            first, left = first + length, left - length
        if hit:
            expected += [("device_get",), ("yield", s)]
            boundaries.append(s)
    assert events == expected
    assert [g[0] for g in got] == boundaries
    assert got[-1][1] == list(range(start + 1, stop + 1))
    assert [m for g in got for m in g[2]] == [(10 * s, s % 2 == 0) for s in range(start + 1, stop + 1)]


def test_pieces_are_the_binary_digits_largest_first():
    from train import loop

    assert loop.pieces(1) == [1] and loop.pieces(50) == [32, 16, 2] and loop.pieces(64) == [64]
    assert all(sum(loop.pieces(n)) == n and len(set(loop.pieces(n))) == len(loop.pieces(n)) for n in range(1, 300))
    assert {p for n in range(1, 33) for p in loop.pieces(n)} == {1, 2, 4, 8, 16, 32}  # at most 6 chunk lengths


def test_run_returns_every_steps_metrics_of_a_jitted_chunk():
    from train import loop

    sharding = jax.sharding.NamedSharding(jax.make_mesh((1,), ("data",)), jax.sharding.PartitionSpec(None, "data"))
    rng = np.random.default_rng(0)
    host = rng.integers(0, 255, (7, 4, 3), dtype=np.uint8)

    @jax.jit
    def chunk(c, xs):
        def one(c, x):
            total = c + x.astype(jnp.int32).sum()
            return total, {"sum": x.astype(jnp.int32).sum(), "total": total}

        return jax.lax.scan(one, c, xs)

    feed = lambda first, n: loop.global_batch(host[first - 1 : first - 1 + n], sharding)
    carry, metrics = loop.run(
        lambda c, xs, first: chunk(c, xs), jnp.int32(0), feed, steps=7, fetch_every=3, max_steps=2
    )
    sums = [int(b.astype(np.int64).sum()) for b in host]
    assert [int(m["sum"]) for m in metrics] == sums
    assert [int(m["total"]) for m in metrics] == list(np.cumsum(sums))
    assert int(carry) == sum(sums)


def test_progress_shows_the_logged_mean_loss_and_draws_only_when_called():
    import io

    from train import metrics

    stream = io.StringIO()
    progress = metrics.Progress(total=8, start=0, batch_size=4, log_every=4, stream=stream)
    progress.update(1)  # a boundary that is no log step: starts the clock, draws nothing (not a TTY)
    progress.update(3)
    assert stream.getvalue() == ""
    progress.update(4, 0.25, mean_of=4)
    progress.update(6)
    progress.update(8, 0.125, mean_of=1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "step 4/8  loss 0.2500 (mean of last 4 steps)" in lines[0]
    assert "step 8/8  loss 0.1250 (mean of last step)" in lines[1]
    assert progress.rate(8) > 0


@pytest.fixture
def compilations():
    """Counts XLA compilations while the test runs."""
    events = []

    def listener(name, *args, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "mnist_rts_resnet"], "unknown experiment 'mnist_rts_resnet'"),
        (["--config", "tiny", "--set", "batch_sise=8"], "unknown config key 'batch_sise'"),
        (["--config", "tiny", "--set", "steps=many"], "steps"),
        (["--config", "tiny", "--set", "model=resnet"], "model must be one of"),
        (["--config", "tiny", "--set", "distortion=swirl"], "distortion must be one of"),
        (["--config", "tiny", "--set", "train_distortion=once"], "train_distortion must be one of"),
        (["--config", "tiny", "--set", "train_distortion=fixed"], "needs an MNIST distortion"),
        (["--config", "svhn_cnn", "--set", "distortion=R"], "dataset='svhn' needs distortion='none'"),
        (["--config", "tiny", "--set", "optimizer=adagrad"], "optimizer must be one of"),
        (["--config", "tiny", "--set", "steps=0"], "steps must be a positive int"),
        (["--config", "tiny", "--set", "ema_decay=1.0"], "ema_decay must be a number in [0, 1)"),
        (["--config", "tiny", "--set", "label_smoothing=-0.1"], "label_smoothing must be a number in [0, 1)"),
        (["--config", "tiny", "--set", "model_kwargs.depth=3"], "model_kwargs"),
        (["--config", "tiny", "--set", "profile_steps=(5,2)"], "profile_steps must be () or (first, last)"),
        (["--config", "tiny", "--set", "steps=10", "profile_steps=(5,20)"], "last <= steps=10"),
        (["--config", "tiny", "--data_dir", "/nonexistent/stn/data"], "data_dir /nonexistent/stn/data does not exist"),
        (["--config", "svhn_cnn", "--data_dir", "{tmp}/absent"], "does not exist"),
        (["--config", "tiny", "--data_dir", ""], "no data_dir"),
    ],
)
def test_bad_configuration_fails_at_start_with_exit_code_2(
    argv, message, data_dir, tmp_path, capsys, compilations, monkeypatch
):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--data_dir" not in argv:
        argv += ["--data_dir", str(data_dir)]
    code = cli.main([*argv, "--workdir", str(tmp_path / "w")])
    assert code == errors.EXIT_CONFIG == 2
    assert message in capsys.readouterr().err
    assert compilations == []
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_batch_not_divisible_by_device_count_fails_before_compiling(data_dir, tmp_path):
    result = run_cli(
        ["--config", "tiny", "--data_dir", str(data_dir), "--workdir", str(tmp_path), "--num_cpu_devices", "8",
         "--set", "batch_size=12"]
    )  # fmt: skip
    assert result.returncode == 2
    assert "batch_size=12 must be divisible by the number of devices (8)" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_svhn_without_prepared_data_exits_4(tmp_path, capsys):
    code = cli.main(["--config", "svhn_cnn", "--data_dir", str(tmp_path), "--workdir", str(tmp_path / "w")])
    assert code == errors.EXIT_DATA == 4
    assert "python -m train.prepare svhn" in capsys.readouterr().err


# -- real data ------------------------------------------------------------------------------------------


def test_real_mnist_reaches_well_under_5_percent_test_error(tmp_path, real_mnist):
    """Real MNIST (the session's one preparation, conftest.py's ``real_mnist``) through the CLI."""
    started = time.monotonic()
    result = run_cli(
        ["--config", "mnist_cnn", "--data_dir", str(real_mnist), "--workdir", str(tmp_path), "--set",
         "steps=400", "eval_every=400", "log_every=100", "checkpoint_every=400"],
        timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_examples"] == 10_000
    assert summary["test_error"] < 0.03, summary
    print(f"real MNIST: {summary}, {time.monotonic() - started:.0f} s")


def test_the_loop_on_device_script_runs_its_three_parts_on_a_pack(data_dir, tmp_path):
    """benchmarks/loop_on_device.sh --quick (what a lent GPU runs, tiny budgets): the loop's speed table, the
    README's main command on the pack, and the RTS pair through reproduce_on_device.py, each part recorded."""
    _device_driver().pack(data_dir, tmp_path / "pack.npz", ["rts_fcn"])
    env = {**os.environ, "PACK": str(tmp_path / "pack.npz"), "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "loop_on_device.sh"), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.md").read_text()
    for part in ("loop_speed", "readme", "table1"):
        assert re.search(rf"^\| {part} \| `.+` \| 0 \| \d+\.\d \|$", summary, re.M), summary
    assert re.search(r"README main command: test error \d+\.\d\d%, 4 steps, wall time \d+ s", summary), summary
    assert "| device K=1 | device K=8 | host K=1 | host K=8 |" in (tmp_path / "out" / "loop_speed.md").read_text()
    records = json.loads((tmp_path / "out" / "table1" / "records.json").read_text())
    assert sorted(r["cell"] for r in records) == ["rts_cnn+ls_01+lr_6e3", "rts_fcn+ls_01+lr_6e3"]
