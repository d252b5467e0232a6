"""Training jobs on Cloud Storage, against a real GCS server on 127.0.0.1 (``tests/gcs_server.py``).

A workdir and a TFDS data_dir on ``gs://`` (prepared and uploaded by ``train.prepare``): a run writes
everything there and nothing locally, and resumes; a run killed with SIGKILL in the middle of a save
resumes and ends where an uninterrupted run ends; every kind of checkpoint damage of
``test_checkpoints.py`` is found on ``gs://`` and the checkpoint set aside; the lease lock refuses a
second run and lets an expired lease be taken over; SIGTERM to a single process, and to one of two
``--coordinator`` processes, stops with a checkpoint (exit 7), and the rerun equals the
uninterrupted run. The server's variables reach only these tests' subprocesses and clients.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import tensorflow_datasets  # noqa: F401  (in CI a missing `train` extra fails, never skips)
else:
    pytest.importorskip("tensorflow_datasets")

import jax
from etils import epath

import data_fixtures
import gcs_server
import helpers
import test_checkpoints as local  # the damage kinds and small checkpoints of the local suite
from train import checkpoints, digests, errors, storage, workdir_lock
from train import train as train_lib

REPO = Path(__file__).resolve().parents[1]
KILLER = Path(__file__).resolve().parent / "gcs_kill_worker.py"
RUN = [*helpers.TINY_RUN, "keep_checkpoints=1"]
# Long enough to be signalled half-way: no evaluation or checkpoint before the end but the preemption's.
LONG = [
    "steps=300",
    "batch_size=8",
    "eval_batch_size=8",
    "eval_every=1000",
    "checkpoint_every=1000",
    "log_every=10",
    "warmup_steps=1",
    "num_show=2",
    "steps_per_dispatch=8",
]  # (chunks of 8 and 2)


@pytest.fixture(scope="module")
def server():
    gcs = gcs_server.GCSServer()
    yield gcs
    gcs.stop()


@pytest.fixture
def gs(server, monkeypatch):
    """A fresh bucket's URL, with this process's clients pointed at the server for this test only."""
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    storage.forget_listings("gs://goog-any")  # listings cached by an earlier test, of its own bucket
    return f"gs://{server.bucket()}"


def env(server) -> dict[str, str]:
    return {**gcs_server.environ(server), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}


def run_cli(server, *argv: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train", *argv],
        cwd=REPO,
        env={**env(server), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def tree(url: str) -> dict[str, bytes]:
    """Every object under ``url``: relative name -> content."""
    root = storage.path(url)
    return {rel: (root / rel).read_bytes() for rel in storage.files(root)}


def params(workdir: str) -> list[np.ndarray]:
    return jax.tree.leaves(train_lib.final_params(workdir))


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def train_losses(workdir: str) -> list[tuple[int, float]]:
    lines = storage.path(f"{workdir}/metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.fixture(scope="module")
def data(server, tmp_path_factory):
    """A tiny genuine TFDS MNIST prepared by ``python -m train.prepare`` straight into ``gs://`` (the README's
    command, from local IDX files)."""
    url = f"gs://{server.bucket()}/tfds"
    idx = data_fixtures.write_idx_dir(tmp_path_factory.mktemp("idx"), data_fixtures.mnist_arrays(100, 8))
    cwd = tmp_path_factory.mktemp("cwd")
    result = subprocess.run(
        [sys.executable, "-m", "train.prepare", "mnist", "--data_dir", url, "--from", str(idx)],
        cwd=cwd,
        env=env(server),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"{url}/mnist/3.0.1"
    assert list(cwd.iterdir()) == []  # nothing local but the temporary build, removed
    return url


@pytest.fixture(scope="module")
def finished(server, data, tmp_path_factory):
    """The tiny run on ``gs://``, started from an empty local directory, then the same command again."""
    workdir, cwd = f"gs://{server.bucket()}/run", tmp_path_factory.mktemp("cwd")
    argv = ["--config", "tiny", "--workdir", workdir, "--data_dir", data, "--set", *RUN, "profile_steps=(2,3)"]
    first = subprocess.run(
        [sys.executable, "-m", "train", *argv], cwd=cwd, env=env(server), capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stderr[-3000:]
    with pytest.MonkeyPatch.context() as m:
        for name, value in server.env.items():
            m.setenv(name, value)
        objects = tree(workdir)
    again = run_cli(server, *argv)
    return {"workdir": workdir, "cwd": cwd, "objects": objects, "again": again}


def test_a_run_on_gs_writes_everything_there_and_nothing_locally(finished, gs):
    objects = finished["objects"]
    assert list(finished["cwd"].iterdir()) == []
    summary = json.loads(objects["summary.json"])
    assert summary["steps"] == 4 and summary["resumed_from"] == 0 and summary["best_checkpoint"] in (2, 4)
    records = [json.loads(line) for line in objects["metrics.jsonl"].decode().splitlines()]
    # Written whole at each record: every record of the run is there, once, in order (an append would keep one).
    assert [(r["step"], r["split"]) for r in records] == [
        (1, "train"),
        (2, "train"),
        (2, "val"),
        (3, "train"),
        (4, "train"),
        (4, "val"),
        (4, "test"),
    ]
    for name in ("curves.png", "samples/step_000002.png", "samples/step_000004.png"):
        assert objects[name].startswith(b"\x89PNG")
    assert [n for n in objects if n.startswith("tensorboard/events.out.tfevents.")]
    assert "run.lock" not in objects  # released at the end
    # --set profile_steps=(2,3): a jax.profiler trace, made locally and uploaded.
    assert [n for n in objects if re.fullmatch(r"profile/plugins/profile/[^/]+/[^/]+\.xplane\.pb", n)]
    # Checkpoints finished by Orbax, then digested; the reader restores them from gs://.
    steps = sorted({int(n.split("/")[1]) for n in objects if n.startswith("checkpoints/")})
    assert steps == [2, 4] or steps == [4]
    for step in steps:
        assert f"checkpoints/{step}/commit_success.txt" in objects
        assert digests.check_all(f"{finished['workdir']}/checkpoints/{step}") == (digests.VERIFIED, "")
    assert len(params(finished["workdir"])) > 0


def test_rerunning_the_finished_command_on_gs_resumes_from_its_last_checkpoint(finished, gs):
    again = finished["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from the checkpoint of step 4 in {finished['workdir']}/checkpoints (verified)" in again.stderr
    summary = json.loads(storage.path(f"{finished['workdir']}/summary.json").read_text())
    assert summary["resumed_from"] == 4
    assert json.loads(finished["objects"]["summary.json"])["test_error"] == summary["test_error"]


def test_sigkill_in_the_middle_of_a_save_on_gs_then_rerun_ends_like_the_uninterrupted_run(server, data, finished, gs):
    workdir = f"{gs}/killed"
    argv = ["--config", "tiny", "--workdir", workdir, "--data_dir", data, "--set", *RUN]
    # The worker kills itself with SIGKILL just after the step-4 save is started (asynchronous: still in flight).
    killed = subprocess.run(
        [sys.executable, str(KILLER), "4", *argv],
        cwd=REPO,
        env={**env(server), "STN_JAX_LOCK_LEASE_S": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    time.sleep(1.5)  # its lease has ended: the rerun takes the lock over
    rerun = run_cli(server, *argv)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert re.search(r"took over the lock of pid [0-9]+ on ", rerun.stderr)
    resumed = json.loads(storage.path(f"{workdir}/summary.json").read_text())["resumed_from"]
    assert resumed in (2, 4)  # 4 only if Orbax finished that save before the kill
    assert f"resumed from the checkpoint of step {resumed} " in rerun.stderr
    assert_same(params(workdir), params(finished["workdir"]))
    assert train_losses(workdir) == train_losses(finished["workdir"])


@pytest.mark.parametrize("kind", local.DAMAGE)
def test_damaged_checkpoint_on_gs_is_set_aside_whole_and_the_previous_one_restores(kind, gs, tmp_path, caplog):
    directory = f"{gs}/checkpoints"
    local.save(directory, [1, 2])  # digests written on gs://
    # The same damage as on a local disk: done to a downloaded copy, the objects then made to match it.
    copy = tmp_path / "2"
    for rel, content in tree(f"{directory}/2").items():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes(content)
    local.DAMAGE[kind](copy)
    damaged = {str(p.relative_to(copy)): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    for rel in tree(f"{directory}/2"):
        if rel not in damaged:
            storage.path(f"{directory}/2/{rel}").unlink()
    for rel, content in damaged.items():
        storage.path(f"{directory}/2/{rel}").write_bytes(content)

    (step, restored, meta, verified), next_labels = local.restore(directory)
    assert (step, meta["step"], verified) == (1, 1, True)
    local.assert_tree_equal(restored, local.state(1))
    np.testing.assert_array_equal(next_labels, local.batch_after(1))
    assert tree(f"{directory}/2.corrupt") == damaged and not storage.path(f"{directory}/2").exists()  # copied, deleted
    [line] = local.warnings_of(caplog)
    assert re.fullmatch(
        rf"checkpoint step 2 is damaged \({local.REASON[kind]}\): moved aside to "
        rf"{re.escape(directory)}/2\.corrupt",
        line,
    ), line


def test_on_gs_a_save_is_digested_only_once_orbax_has_finalised_it_and_restored_only_then(gs, monkeypatch):
    directory = f"{gs}/checkpoints"
    local.save(directory, [1])
    ckpt = checkpoints.Checkpoints(directory, keep=10)
    # Step 2 as Orbax leaves it on GCS while a save is in flight: every object but the commit markers.
    for rel, content in tree(f"{directory}/1").items():
        if not rel.endswith("commit_success.txt") and not rel.startswith(digests.PREFIX):
            storage.path(f"{directory}/2/{rel}").write_bytes(content)
    with monkeypatch.context() as m:
        m.setattr(ckpt.manager, "all_steps", lambda: [1, 2])  # Orbax counts a save it has started
        ckpt._undigested.append(2)
        ckpt.write_digests()
        assert not digests.path(f"{directory}/2", 0).exists()  # its directory exists, but it is not finished
        storage.path(f"{directory}/2/commit_success.txt").write_text("done")
        ckpt.write_digests()
        assert digests.path(f"{directory}/2", 0).exists()
    ckpt.close()
    # A save killed before its end is never restored (Orbax removes it when the next run opens the directory).
    storage.path(f"{directory}/2/commit_success.txt").unlink()
    (step, restored, _, verified), _ = local.restore(directory)
    assert (step, verified) == (1, True)
    local.assert_tree_equal(restored, local.state(1))


def test_when_no_checkpoint_on_gs_verifies_the_run_exits_5_and_nothing_moves(server, data, finished, gs):
    workdir = f"{gs}/run"
    for rel, content in finished["objects"].items():
        if rel.startswith("checkpoints/"):
            storage.path(f"{workdir}/{rel}").write_bytes(content)
    steps = sorted({int(n.split("/")[1]) for n in finished["objects"] if n.startswith("checkpoints/")})
    for step in steps:
        storage.path(f"{workdir}/checkpoints/{step}/state/_METADATA").write_text("{garbage")
    last = steps[-1]
    before = tree(f"{workdir}/checkpoints")
    result = run_cli(server, "--config", "tiny", "--workdir", workdir, "--data_dir", data, "--set", *RUN)
    assert result.returncode == errors.EXIT_CHECKPOINT == 5
    assert len(result.stderr.splitlines()) == 1, result.stderr[-3000:]
    assert result.stderr.startswith(f"error: no checkpoint in {workdir}/checkpoints verifies (step {last}: ")
    assert tree(f"{workdir}/checkpoints") == before


def hold(server, workdir: str, lease_s: float) -> subprocess.Popen:
    code = (
        "import sys, time; from train import workdir_lock; workdir_lock.WorkdirLock(sys.argv[1]); "
        "print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, workdir],
        env={**env(server), "STN_JAX_LOCK_LEASE_S": str(lease_s)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def test_the_gs_lock_refuses_a_second_run_and_is_taken_over_once_its_lease_ends(server, data, gs, monkeypatch, caplog):
    workdir = f"{gs}/run"
    holder = hold(server, workdir, lease_s=2.0)
    try:
        time.sleep(3.0)  # past one lease: only its renewals keep it
        busy = run_cli(server, "--config", "tiny", "--workdir", workdir, "--data_dir", data, "--set", *RUN)
        assert busy.returncode == errors.EXIT_BUSY == 6
        assert busy.stderr.startswith(f"error: workdir {workdir} is in use by another run (pid {holder.pid} ")
        assert len(busy.stderr.splitlines()) == 1 and "lease ends in" in busy.stderr
        assert "checkpoints/" not in "".join(tree(workdir))
    finally:
        holder.kill()  # SIGKILL: the lease is neither renewed nor released
        holder.wait(timeout=30)
    monkeypatch.setattr(workdir_lock, "LEASE_S", 2.0)
    with pytest.raises(errors.WorkdirBusyError, match=f"pid {holder.pid} "):
        workdir_lock.WorkdirLock(workdir)  # killed, but its lease has not ended yet
    time.sleep(2.5)
    lock = workdir_lock.WorkdirLock(workdir)
    [note] = [r.getMessage() for r in caplog.records if r.name == "train.workdir_lock"]
    assert note.startswith(f"workdir {workdir}: took over the lock of pid {holder.pid} ") and "ended" in note
    storage.forget_listings(workdir)  # gcsfs would read as many bytes as the holder's lock had
    held = json.loads(storage.path(f"{workdir}/run.lock").read_text())
    assert held["holder"].startswith(f"pid {os.getpid()} ")
    lock.release()
    assert not storage.path(f"{workdir}/run.lock").exists()


def test_a_run_whose_lease_another_run_took_over_stops_before_its_next_checkpoint(server, data, gs):
    workdir = f"{gs}/run"
    argv = ["--config", "tiny", "--workdir", workdir, "--data_dir", data, "--set", *LONG, "checkpoint_every=20"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *argv],
        cwd=REPO,
        env={**env(server), "STN_JAX_LOCK_LEASE_S": "0.4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in proc.stderr:  # once step 50 is logged: another run's lock replaces this one's (as a takeover does)
        lines.append(line)
        if "step 50/300" in line:
            storage.path(f"{workdir}/run.lock").write_text(
                json.dumps({"holder": "pid 1 on elsewhere", "lease_ends": 0})
            )
            break
    err = "".join(lines) + proc.stderr.read()
    assert proc.wait(timeout=300) == errors.EXIT_BUSY == 6, err[-3000:]
    [stopped] = re.findall(
        r"another run took this run's lock on \S+ over .*: stopped at step (\d+) without saving it", err
    )
    saved = checkpoints.Checkpoints(f"{workdir}/checkpoints", keep=3).all_steps()
    assert 50 < int(stopped) < 300 and saved and max(saved) < int(stopped)
    storage.forget_listings(workdir)
    assert json.loads(storage.path(f"{workdir}/run.lock").read_text())["holder"] == "pid 1 on elsewhere"  # left as is


def signal_when(proc: subprocess.Popen, pattern: str, sig: int, target: subprocess.Popen | None = None) -> str:
    """Reads ``proc``'s stderr until a line matches ``pattern``, then sends ``sig`` to ``target`` (default
    ``proc``); returns all that ``proc`` wrote to stderr."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if re.search(pattern, line):
            (target or proc).send_signal(sig)
            break
    return "".join(lines) + proc.stderr.read()


def popen(server, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "train", *argv],
        cwd=REPO,
        env=env(server),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


STOPPED = re.compile(
    r"preempted: stopped at step (\d+) of 300 with a checkpoint of it in (\S+); rerun the same "
    r"command to resume from step \1"
)


def test_sigterm_saves_the_step_it_lands_on_exits_7_and_the_rerun_equals_the_uninterrupted_run(server, data, gs):
    reference = f"{gs}/reference"
    done = run_cli(server, "--config", "tiny", "--workdir", reference, "--data_dir", data, "--set", *LONG)
    assert done.returncode == 0, done.stderr[-3000:]

    workdir = f"{gs}/preempted"
    argv = ["--config", "tiny", "--workdir", workdir, "--data_dir", data, "--set", *LONG]
    proc = popen(server, *argv)
    err = signal_when(proc, r"step 50/300", signal.SIGTERM)
    assert proc.wait(timeout=300) == errors.EXIT_PREEMPTED == 7, err[-3000:]
    [(step, where)] = STOPPED.findall(err)
    step = int(step)
    assert 50 <= step < 300 and where == f"{workdir}/checkpoints"
    assert checkpoints.Checkpoints(f"{workdir}/checkpoints", keep=3).all_steps() == [step]
    assert digests.check_all(f"{workdir}/checkpoints/{step}") == (digests.VERIFIED, "")
    assert not storage.path(f"{workdir}/run.lock").exists()

    rerun = run_cli(server, *argv)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from the checkpoint of step {step} " in rerun.stderr
    assert_same(params(workdir), params(reference))
    assert train_losses(workdir) == train_losses(reference)  # every logged mean, the one across the stop too


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_and_the_rerun_equals_the_uninterrupted_run(
    server, data, gs
):
    def launch(workdir: str) -> list[subprocess.Popen]:
        port = helpers.free_port()
        return [
            popen(
                server,
                "--config",
                "tiny",
                "--workdir",
                workdir,
                "--data_dir",
                data,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
                "--set",
                *LONG,
            )
            for i in range(2)
        ]

    reference = launch(f"{gs}/reference")
    outputs = [p.communicate(timeout=600)[1] for p in reference]
    assert [p.returncode for p in reference] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]

    workdir = f"{gs}/preempted"
    procs = launch(workdir)
    first = signal_when(procs[0], r"step 50/300", signal.SIGTERM, target=procs[1])  # the notice reaches host 1
    outputs = [first, procs[1].communicate(timeout=300)[1]]
    procs[0].wait(timeout=300)
    assert [p.returncode for p in procs] == [7, 7], outputs[0][-2000:] + outputs[1][-2000:]
    stopped = [STOPPED.findall(out) for out in outputs]
    assert stopped[0] == stopped[1] and len(stopped[0]) == 1
    step = int(stopped[0][0][0])
    assert 50 <= step < 300
    assert digests.check_all(f"{workdir}/checkpoints/{step}") == (digests.VERIFIED, "")

    procs = launch(workdir)
    outputs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert f"resumed from the checkpoint of step {step} " in outputs[0]
    assert_same(params(workdir), params(f"{gs}/reference"))
    assert train_losses(workdir) == train_losses(f"{gs}/reference")


def test_a_local_workdir_keeps_its_lock_file_and_a_gs_url_is_never_a_local_path(tmp_path):
    assert storage.is_remote("gs://goog-x/run") and not storage.is_remote(tmp_path / "run")
    assert os.fspath(storage.path("gs://goog-x/run")) == "gs://goog-x/run"
    assert os.fspath(storage.path("runs/x")) == os.path.join(os.getcwd(), "runs", "x")
    with tempfile.TemporaryDirectory() as d:
        lock = workdir_lock.WorkdirLock(d)
        assert (Path(d) / "run.lock").read_text().startswith(f"pid {os.getpid()} ")
        lock.release()
    assert isinstance(storage.path("gs://goog-x/run"), epath.Path)
