#!/usr/bin/env bash
# Builds a CUDA `lossc` (and the candle training example) on a machine without a GPU
# and without a system CUDA toolkit: the compiler and the link-time libraries come
# from pinned PyPI wheels, installed under target/cuda-toolkit; the build goes to
# target/cuda so the normal build in target/release is left alone.
#
#   scripts/build-cuda.sh            # -> target/cuda/release/lossc (stripped)
#                                    #    target/cuda/release/examples/train_noisy_labels
#                                    #    target/cuda/release/candle-parity (the op parity test)
#
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200), CUDA_TARGET_DIR (default
# target/cuda), CUDA_BUILD_EXAMPLE=0 to build lossc only, PYTHON (default python3).
# See docs/candle.md ("Building with CUDA") for the pins and the driver they need.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# CUDA 13.0, every component from the same release (13.0 update 2). 13.0 and not a
# later 13.x: the kernels ship as PTX that the driver compiles when loaded, and a
# driver accepts PTX only up to the ISA of its own CUDA version. CUDA 13.0 writes
# PTX ISA 9.0, which needs a 13.0 driver (R580 or newer); 13.1+ would need a newer
# driver for no gain here. cudarc 0.19 (candle 0.9.2) knows CUDA up to 13.4.
# nvcc/nvvm/crt/cccl/runtime build the kernels; cublas/curand/nvrtc/runtime are only
# linked against (candle links cudarc with `dynamic-linking`): at run time the
# device's own CUDA 13 libraries are used.
pins=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)
toolkit="$root/target/cuda-toolkit"
cuda="$toolkit/nvidia/cu13"
python="${PYTHON:-python3}"

if [ ! -f "$toolkit/.pins" ] || [ "$(cat "$toolkit/.pins")" != "${pins[*]}" ]; then
    echo "build-cuda: installing the CUDA 13.0 wheels into target/cuda-toolkit" >&2
    rm -rf "$toolkit"
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$toolkit" "${pins[@]}"
    echo "${pins[*]}" >"$toolkit/.pins"
fi

# The wheels ship versioned libraries only (libcublas.so.13); the linker's `-lcublas`
# wants the plain name, as a toolkit's lib64 has it.
for lib in cublas cublasLt curand nvrtc cudart; do
    real=("$cuda/lib/lib$lib.so."[0-9]*)
    ln -sfn "$(basename "${real[0]}")" "$cuda/lib/lib$lib.so"
done

# libcuda belongs to the driver, which no wheel ships: link against a stub with the
# driver's soname that defines every driver entry point cudarc declares. At run
# time the loader finds the device's real libcuda.so.1.
stub="$cuda/lib/stubs"
cargo fetch --quiet # the cudarc sources, read below, on a fresh machine
driver_rs=$(cargo metadata --format-version 1 --features losslang-runtime/cuda |
    "$python" -c 'import json, sys, os
pkgs = json.load(sys.stdin)["packages"]
cudarc = [p for p in pkgs if p["name"] == "cudarc" and p["version"].startswith("0.19.")]
print(os.path.join(os.path.dirname(cudarc[0]["manifest_path"]), "src/driver/sys/mod.rs"))')
if [ ! -f "$stub/libcuda.so" ] || [ "$driver_rs" -nt "$stub/libcuda.so" ]; then
    mkdir -p "$stub"
    sed -n 's/^pub unsafe fn \(cu[A-Za-z0-9_]*\)(.*/void \1(void) {}/p' "$driver_rs" |
        sort -u >"$stub/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/libcuda_stub.c"
fi

export PATH="$cuda/bin:$PATH"
# cudarc's and candle-kernels' build scripts look for headers and libraries here.
export CUDA_ROOT="$cuda"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# bindgen_cuda runs one nvcc per kernel file on this many threads.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
# Stripped: the binary is carried to the device (docs/candle.md, the GPU check).
export CARGO_PROFILE_RELEASE_STRIP=symbols
target_dir="${CUDA_TARGET_DIR:-$root/target/cuda}"

nvcc --version | tail -n2 >&2
cargo build --release --target-dir "$target_dir" -p losslang-runtime --features cuda --bin lossc
if [ "${CUDA_BUILD_EXAMPLE:-1}" != 0 ]; then
    cargo build --release --target-dir "$target_dir" -p losslang-candle --features cuda \
        --example train_noisy_labels
    # The op parity test (every op against the interpreter) as a program to carry:
    # with LOSSLANG_CANDLE_DEVICE=cuda it runs on the GPU.
    parity=$(cargo test --release --target-dir "$target_dir" -p losslang-candle --features cuda \
        --test parity --no-run --message-format=json |
        "$python" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "parity" and m.get("executable"):
        print(m["executable"])')
    cp "$parity" "$target_dir/release/candle-parity"
fi
ls -l "$target_dir/release/lossc" >&2
