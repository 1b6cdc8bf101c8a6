#!/usr/bin/env bash
# Two jaxgan processes on this machine joined by jax.distributed over loopback (CPU, gloo).
#   bash scripts/multihost_demo.sh [step|train] [extra args for multihost_demo.py]
# Prints both processes' logs; both must report the same metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-step}"; shift || true
PORT="${JAXGAN_DEMO_PORT:-$((20000 + RANDOM % 20000))}"
WORKDIR="$(mktemp -d /tmp/jaxgan_multihost.XXXXXX)"
pids=()
for i in 0 1; do
  JAX_PLATFORMS=cpu JAXGAN_COORDINATOR="127.0.0.1:${PORT}" JAXGAN_NUM_PROCESSES=2 \
  JAXGAN_PROCESS_ID="$i" timeout 600 python scripts/multihost_demo.py --mode "$MODE" \
    --workdir "$WORKDIR/run" "$@" > "$WORKDIR/process_$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
for i in 0 1; do
  echo "== process $i"; grep -E '^\[[0-9]\]|Error|error' "$WORKDIR/process_$i.log" || true
done
echo "logs and workdir: $WORKDIR (exit $rc)"
exit $rc
