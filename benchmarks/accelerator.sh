#!/usr/bin/env bash
# The benchmarks for a few minutes on an accelerator, in one command: sampler.py, antialias.py,
# train_speed.py and loop_speed.py, each writing its table (not BENCHMARKS.md) and its log into one folder,
# plus summary.md there (machine, versions, command, exit status and wall time of each script).
#
#   OUT=runs/h200 bash benchmarks/accelerator.sh     # the full run (sized for under 5 minutes on one H200)
#   bash benchmarks/accelerator.sh --quick           # tiny sizes: a smoke run, also on a CPU (the tests run it)
#
# OUT defaults to ./out/accelerator. Needs only jax, flax, optax, chex, numpy, torch and matplotlib (no TensorFlow,
# TFDS, grain, orbax, ml_collections, dm-pix or scipy). Every script runs even when an earlier one
# failed; the exit status is then non-zero. PYTHON picks the interpreter (default: python, python3).
set -euo pipefail

quick=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "accelerator.sh: unknown argument '$arg' (the only option is --quick)" >&2; exit 2 ;;
  esac
done

out="${OUT:-out/accelerator}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts=(sampler antialias train_speed loop_speed)
for name in "${scripts[@]}"; do
  if [[ ! -f "benchmarks/$name.py" ]]; then
    echo "accelerator.sh: benchmarks/$name.py is missing" >&2
    exit 1
  fi
done
# No table or log of an earlier run may pass for this one's.
for name in "${scripts[@]}"; do
  rm -f "$out/$name.md" "$out/$name.log"
done
rm -f "$out/summary.md"

python="${PYTHON:-$(command -v python || command -v python3)}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the accelerator in each process: JAX must not take 75% of its memory up
# front (no effect on a CPU).
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"

# Extra options of the full run, sized for the time budget (the scripts' own defaults otherwise).
declare -A extra=([sampler]="--repeats 3" [antialias]="--repeats 5" [train_speed]="--repeats 5" [loop_speed]="--repeats 3 --round_s 0.5")
if [[ ${#quick[@]} -gt 0 ]]; then
  extra=([sampler]="" [antialias]="" [train_speed]="" [loop_speed]="")
fi

now() { date +%s.%N; }
started="$(now)"
results=()
failed=0
for name in "${scripts[@]}"; do
  # shellcheck disable=SC2206  # word splitting of the extra options is intended
  cmd=("$python" "benchmarks/$name.py" ${quick[@]+"${quick[@]}"} ${extra[$name]} --out "$out")
  echo "== ${cmd[*]}"
  t0="$(now)"
  rc=0
  "${cmd[@]}" 2>&1 | tee "$out/$name.log" || rc=$?
  seconds="$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
  echo "== $name: exit $rc, ${seconds} s"
  results+=("$name $rc $seconds")
  if [[ $rc -ne 0 ]]; then
    failed=1
  fi
done
total="$(awk -v a="$started" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"

gpu="nvidia-smi: not found"
if command -v nvidia-smi > /dev/null; then
  gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | paste -sd ';' -)" || true
fi

RESULTS="$(printf '%s\n' "${results[@]}")" TOTAL="$total" GPU="$gpu" OUT_DIR="$out" \
  COMMAND="OUT=$out bash benchmarks/accelerator.sh${*:+ $*}" "$python" - << 'PY'
"""Writes summary.md: the machine, the versions, the command, each script's exit status and wall time."""
import importlib.metadata
import os
import platform
from pathlib import Path

import jax


def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


out = Path(os.environ["OUT_DIR"])
try:
    import torch

    torch_line = f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}"
except Exception as e:  # noqa: BLE001 -- the summary must be written whatever happens
    torch_line = f"torch: {type(e).__name__}: {e}"
devices = jax.devices()
lines = [
    "# Accelerator benchmarks",
    "",
    f"Command: `{os.environ['COMMAND']}`  ",
    f"Total wall time: {os.environ['TOTAL']} s  ",
    f"Machine: {platform.node()}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores  ",
    f"GPU (nvidia-smi): {os.environ['GPU']}  ",
    f"jax backend: {jax.default_backend()}; devices: {', '.join(f'{d} ({d.device_kind})' for d in devices)}  ",
    "Versions: Python " + platform.python_version() + ", "
    + ", ".join(f"{n} {version(n)}" for n in ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "torch")) + "  ",
    f"{torch_line}  ",
    f"XLA_PYTHON_CLIENT_PREALLOCATE={os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE', '')}, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
    "",
    "| script | exit | wall s | table | log |",
    "| --- | ---: | ---: | --- | --- |",
]
for row in os.environ["RESULTS"].splitlines():
    name, rc, seconds = row.split()
    table = f"{name}.md" if (out / f"{name}.md").exists() else "(none)"
    lines.append(f"| benchmarks/{name}.py | {rc}{'' if rc == '0' else ' FAILED'} | {seconds} | {table} | {name}.log |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY

echo "== total ${total} s; tables, logs and summary.md in $out"
if [[ $failed -ne 0 ]]; then
  echo "accelerator.sh: at least one benchmark failed (see summary.md)" >&2
  exit 1
fi
