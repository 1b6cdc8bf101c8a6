#!/usr/bin/env bash
# Issue 5's GPU checks as one prepared run on a lent GPU machine: the HW6 benchmarks the GPU
# goals are measured by (bf16 batch 512 MFU, with the variants that may raise it; batch 64
# against PyTorch eager + AMP), the GPU tests, then f32 and torch.compile if time is left, each
# under the time still left. Session 22's run on an H200 is in BUILD_NOTES ("Speed and scale").
#
#   bash scripts/device_check.sh                # on the GPU machine, from the repo root
#
# The lent machines' image has JAX (CUDA), Flax, Optax, Orbax and PyTorch but no internet and
# no ml_collections. Carry it as a wheel, made on a machine with pip access:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       ml_collections==1.1.0
# then: run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=590).
#
# Output under $OUT (the device tool's folder; default /tmp/jaxgan-device), 7 files: check.log
# (everything, in order), and per benchmark bench_<dtype>_b<batch>.json and its workers' stderr.
# Knobs (environment): BUDGET_S (540: seconds for the whole script), DEVICE (gpu; `cpu` dry-runs
# the script's plumbing here), BENCH_ARGS (extra benchmark.py arguments), PEAK_BF16_TFLOPS /
# PEAK_F32_TFLOPS (dense peaks for MFU; default: H100/H200 SXM, 989 and 495 with TF32).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/jaxgan-device}
mkdir -p "$OUT"
LOG="$OUT/check.log"
DEVICE=${DEVICE:-gpu}
PY=${PYTHON:-python3}
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
read -r -a EXTRA <<< "${BENCH_ARGS:-}"

say() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT_S COMMAND...: runs COMMAND if a minute is left, under min(LIMIT_S, time left)
step() {
  local name=$1 limit=$2
  shift 2
  local left=$(( deadline - $(date +%s) ))
  if (( left < 60 )); then
    say "== $name: skipped, $left s of the budget left"
    return 0
  fi
  (( limit > left )) && limit=$left
  say "== $name (limit $limit s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  say "== $name: exit ${PIPESTATUS[0]} after $(( SECONDS - t0 )) s"
}

if [[ -d .whl ]] && ls .whl/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/jaxgan-site .whl/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH=/tmp/jaxgan-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

say "# jaxgan device check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null)"
if [[ $DEVICE == gpu ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  case "$gpu" in
    *H100*|*H200*) bf16_peak=989; f32_peak=495 ;;
    *) bf16_peak=0; f32_peak=0 ;;
  esac
  export JAX_PLATFORMS=cuda
else
  bf16_peak=0; f32_peak=0
  export JAX_PLATFORMS=cpu
fi
bf16_peak=${PEAK_BF16_TFLOPS:-$bf16_peak}
f32_peak=${PEAK_F32_TFLOPS:-$f32_peak}
"$PY" -c "import jax, flax, optax, ml_collections; print('jax', jax.__version__, 'flax',
flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$LOG"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$LOG"

# bench DTYPE BATCH PEAK LIMIT_S IMPLS [ARGS...]: one benchmark.py run, both losses
bench() {
  local dtype=$1 batch=$2 peak=$3 limit=$4 impls=$5
  shift 5
  step "benchmark $dtype batch $batch" "$limit" "$PY" scripts/benchmark.py --device "$DEVICE" \
      --losses gan,wgan-gp --impls "$impls" --dtype "$dtype" --batch "$batch" \
      --peak_tflops "$peak" --gemm_peak --repeats 3 --steps 10 --warmup 3 \
      --json "$OUT/bench_${dtype}_b${batch}.json" --log "$OUT/workers_${dtype}_b${batch}.log" \
      "$@" "${EXTRA[@]}"
}

# goal: >= 35% MFU (session 22: 20.4% gan, 15.7% WGAN-GP). Transposed convs as cuDNN's own
# (sub-pixel multiplies 9 taps where 6.25 touch data) and the critic loop unrolled are the
# first candidates.
bench bfloat16 512 "$bf16_peak" 240 jaxgan,torch-eager \
    --variants "jaxgan:upsample=transpose,jaxgan:critic_loop=unrolled"
bench bfloat16 64 "$bf16_peak" 120 jaxgan,torch-eager      # goal: >= 2x torch eager + AMP
step "GPU tests" 200 env JAXGAN_GPU_TESTS_ON_CPU="$([[ $DEVICE == cpu ]] && echo 1)" \
    "$PY" -m pytest -p no:xdist -p no:cacheprovider -q -o addopts="" tests/test_gpu.py
bench float32 64 "$f32_peak" 200 jaxgan,torch-eager,torch-compile
say "# done, $(( deadline - $(date +%s) )) s of the budget left"
