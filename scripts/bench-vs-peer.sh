#!/usr/bin/env bash
# Runs `cargo xtask bench` and the PyTorch+peft peer on the same configurations, interleaved, and prints one JSON
# line per run (docs/performance.md). WHAT=train times training steps (../shared/peer/bench_train_step.py);
# WHAT=generate times greedy generation (scripts/peer_generate.py, HF `generate`).
# Usage: scripts/bench-vs-peer.sh [THREADS] [PRESETS] [METHODS] [WHAT]
#   e.g. scripts/bench-vs-peer.sh 1 "tiny small" "mhr lora" generate
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-1}"
PRESETS="${2:-tiny small}"
METHODS="${3:-mhr lora}"
WHAT="${4:-train}"
PY="$(bash ../shared/peer/setup.sh)"
cargo build -q -p xtask
case "$WHAT" in
  train) STEPS=8; PEER=(../shared/peer/bench_train_step.py) ;;
  generate) STEPS=5; PEER=(scripts/peer_generate.py) ;;
  *) echo "WHAT must be train or generate, not $WHAT" >&2; exit 2 ;;
esac
for preset in $PRESETS; do
  for method in $METHODS; do
    "$PY" "${PEER[@]}" --steps "$STEPS" --preset "$preset" --method "$method" --threads "$THREADS" 2>/dev/null | tail -1
    RAYON_NUM_THREADS="$THREADS" target/debug/xtask bench --preset "$preset" --method "$method" --what "$WHAT" \
      --steps "$STEPS" --warmup 2 | tail -1
  done
done
