#!/usr/bin/env bash
# Our training step on `cuda` and `wgpu` against PyTorch eager (scripts/peer_train_step_gpu.py, float32 with and
# without TF32) on the same GPU, one JSON line per run (docs/performance.md). Meant for a GPU machine: build the
# bench with `CUDARC_CUDA_VERSION=<the driver's, e.g. 13000> cargo build --release -p xtask --features cuda,wgpu`
# and name the binary (or several builds, to compare them) in XTASKS; MHR_PEER_DIR names the folder of
# bench_train_step.py where ../shared is absent. `wgpu` needs a Vulkan loader (libvulkan1, with libglvnd for NVIDIA's
# ICD); a backend that cannot start prints one error line and the script goes on.
# Usage: scripts/bench-gpu.sh [XTASKS] [PRESETS] [METHODS] [STEPS] [DEVICES] [PRECISIONS]
#   e.g. scripts/bench-gpu.sh target/release/xtask "tiny small" "mhr lora" 20 "cuda wgpu"
#   the paper's T0 shapes in bf16 (wgpu has no bf16; MFU against the H100 SXM's bf16 peak):
#   PEAK=h100-sxm scripts/bench-gpu.sh target/release/xtask "base xl" "mhr lora" 10 cuda bf16
set -uo pipefail
cd "$(dirname "$0")/.."
XTASKS="${1:-target/release/xtask}"
PRESETS="${2:-tiny small}"
METHODS="${3:-mhr lora}"
STEPS="${4:-20}"
DEVICES="${5:-cuda wgpu}"
PRECISIONS="${6:-f32}"
PEAK="${PEAK:+--peak-tflops $PEAK}"
PY="${PYTHON:-python3}"
# cudarc opens libnvrtc by name: add the toolkit's or the PyTorch wheel's folder when the loader cannot find it.
if ! ldconfig -p | grep -q libnvrtc; then
  nvrtc="$(find /usr/local/cuda*/ /opt -name 'libnvrtc.so*' 2>/dev/null | head -1)"
  [ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
timeout 900 "$PY" scripts/peer_train_step_gpu.py --presets "${PRESETS// /,}" --methods "${METHODS// /,}" \
  --dtypes "${PRECISIONS// /,}" --steps "$STEPS" --warmup 5 2>&1 | grep -E '^\{|Error' || echo "peer exit ${PIPESTATUS[0]}"
for device in $DEVICES; do
  for xtask in $XTASKS; do
    for preset in $PRESETS; do
      for method in $METHODS; do
        for precision in $PRECISIONS; do
          echo "# $xtask"
          # shellcheck disable=SC2086
          timeout 300 "$xtask" bench --device "$device" --preset "$preset" --method "$method" --steps "$STEPS" \
            --warmup 5 --precision "$precision" $PEAK 2>&1 | tail -3 \
            || echo "# $device $preset $method $precision: exit ${PIPESTATUS[0]} (124: over 300 s)"
        done
      done
    done
  done
done
