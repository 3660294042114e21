#!/usr/bin/env bash
# The candle backend on a CUDA device, as one command: builds with the `cuda`
# feature, runs the op parity tests and the tracked conformance suite on the
# GPU (LOSSLANG_CANDLE_DEVICE=cuda: the portable lowering), then the training
# example on the GPU. Needs nvcc and a CUDA driver (docs/candle.md).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvcc >/dev/null 2>&1; then
    echo "gpu-check: nvcc not found; the cuda feature needs the CUDA toolkit (docs/candle.md)" >&2
    exit 1
fi
nvidia-smi -L || true
# candle's kernels are compiled for this GPU's compute capability unless set.
if [ -z "${CUDA_COMPUTE_CAP:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '.')
    if [ -n "$cap" ]; then export CUDA_COMPUTE_CAP="$cap"; fi
fi

export LOSSLANG_CANDLE_DEVICE="${LOSSLANG_CANDLE_DEVICE:-cuda}"
cargo test --release -p losslang-candle --features cuda --test parity --test conformance_tracked -- --nocapture
cargo run --release -p losslang-candle --features cuda --example train_noisy_labels -- \
    "${TMPDIR:-/tmp}/train_noisy_labels_cuda.png" --device "$LOSSLANG_CANDLE_DEVICE"
echo "gpu-check: ok"
