#!/usr/bin/env bash
# Runs `cargo xtask bench` and the PyTorch+peft peer (../shared/peer/bench_train_step.py) on the same
# configurations, interleaved, and prints one JSON line per run (docs/performance.md).
# Usage: scripts/bench-vs-peer.sh [THREADS] [PRESETS] [METHODS]   e.g. scripts/bench-vs-peer.sh 1 "tiny small" "mhr lora"
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-1}"
PRESETS="${2:-tiny small}"
METHODS="${3:-mhr lora}"
PY="$(bash ../shared/peer/setup.sh)"
cargo build -q -p xtask
for preset in $PRESETS; do
  for method in $METHODS; do
    "$PY" ../shared/peer/bench_train_step.py --preset "$preset" --method "$method" --threads "$THREADS" --steps 8 2>/dev/null | tail -1
    RAYON_NUM_THREADS="$THREADS" target/debug/xtask bench --preset "$preset" --method "$method" --steps 8 --warmup 2 | tail -1
  done
done
