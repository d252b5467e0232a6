#!/usr/bin/env bash
# The training loop on a lent accelerator in one command, sized for under 5 minutes on one H100 or H200:
#
#   1. benchmarks/loop_speed.py: bare step, real step, scanned real step, and the loop at K = 1, 8, 32 and "to
#      the next boundary" for both data sources (the split on the device, batches from the host);
#   2. the README's main command (python -m train --config mnist_rts_st_cnn_affine) on the pack: its wall time
#      and test error (summary.json);
#   3. the RTS pair of Table 1 at 15000x128 with +ls_01+lr_6e3 (the next recipe step RESULTS.md names) through
#      benchmarks/reproduce_on_device.py: records in $OUT/table1/records.json (import them back here).
#
#   PACK=out/device/mnist.npz OUT=runs/h100 bash benchmarks/loop_on_device.sh
#   PACK=... bash benchmarks/loop_on_device.sh --quick    # tiny budgets: a smoke run, also on a CPU (tested)
#
# The pack comes from `benchmarks/reproduce_on_device.py pack` (here, with TFDS). Needs jax, flax, optax, orbax,
# ml_collections, numpy and matplotlib (no TFDS, grain or TensorFlow). Writes summary.md into $OUT: each part's
# command, exit status and wall time. Every part runs even when an earlier one failed; the exit status is then 1.
set -euo pipefail

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "loop_on_device.sh: unknown argument '$arg' (the only option is --quick)" >&2; exit 2 ;;
  esac
done
if [[ -z "${PACK:-}" || ! -f "$PACK" ]]; then
  echo "loop_on_device.sh: set PACK to a pack of the MNIST splits (benchmarks/reproduce_on_device.py pack)" >&2
  exit 2
fi
pack="$(cd "$(dirname "$PACK")" && pwd)/$(basename "$PACK")"
out="${OUT:-out/loop_on_device}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf "$out/readme" "$out/table1" "$out/summary.md" "$out/loop_speed.md"  # nothing of an earlier run passes for this one's

python="${PYTHON:-$(command -v python || command -v python3)}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"  # two training runs share the device

if [[ $quick -eq 1 ]]; then
  speed=(--quick)
  readme_sets=(--set steps=4 batch_size=8 eval_batch_size=8 eval_every=4 checkpoint_every=4 log_every=2 num_show=2)
  pair="rts_fcn+ls_01+lr_6e3:3:8,rts_cnn+ls_01+lr_6e3:2:8"
  seconds=300
else
  speed=(--repeats 3 --round_s 0.5)
  readme_sets=()
  pair="rts_st_cnn_affine+ls_01+lr_6e3:15000:128,rts_cnn+ls_01+lr_6e3:15000:128"
  seconds=150
fi

rows=()
failed=0
part() {  # part NAME COMMAND...: runs it, its output into $out/NAME.log, its exit status and wall time into rows
  local name="$1"
  shift
  echo "== $*"
  local t0 rc=0
  t0="$(date +%s.%N)"
  "$@" 2>&1 | tee "$out/$name.log" || rc=$?
  local seconds_taken
  seconds_taken="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
  echo "== $name: exit $rc, $seconds_taken s"
  rows+=("| $name | \`$*\` | $rc | $seconds_taken |")
  if [[ $rc -ne 0 ]]; then failed=1; fi
}

part loop_speed "$python" benchmarks/loop_speed.py "${speed[@]}" --out "$out"
part readme "$python" -m train --config mnist_rts_st_cnn_affine --workdir "$out/readme" --data_dir "$pack" \
  ${readme_sets[@]+"${readme_sets[@]}"}
part table1 "$python" benchmarks/reproduce_on_device.py run --pack "$pack" --cells "$pair" --workers 2 \
  --seconds "$seconds" --out "$out/table1"

{
  echo "# The training loop on $("$python" -c 'import jax; d = jax.devices()[0]; print(f"{d.device_kind} ({d.platform}, jax {jax.__version__})")')"
  echo
  echo "| part | command | exit | wall s |"
  echo "| --- | --- | ---: | ---: |"
  printf '%s\n' "${rows[@]}"
  echo
  if [[ -f "$out/readme/summary.json" ]]; then
    "$python" - "$out/readme/summary.json" << 'PY'
import json
import sys

s = json.load(open(sys.argv[1]))
print(f"README main command: test error {100 * s['test_error']:.2f}%, {s['steps']} steps, "
      f"wall time {s['wall_time_s']:.0f} s, {s['images_per_s']:.0f} img/s")
PY
  fi
} > "$out/summary.md"
cat "$out/summary.md"
exit $failed
