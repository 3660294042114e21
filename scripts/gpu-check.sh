#!/usr/bin/env bash
# The candle backend on a CUDA device, in two halves (docs/candle.md, "The GPU check").
#
#   scripts/gpu-check.sh build    here, with Rust and no GPU: builds the CUDA lossc and the
#                                 training example (scripts/build-cuda.sh) and lays out the
#                                 bundle target/gpu-check (under 64 MiB): binaries, cuRAND,
#                                 stdlib, conformance cases, benchmark losses, the Python
#                                 driver and a copy of this script
#   scripts/gpu-check.sh device   there, with the NVIDIA driver, Python 3 + numpy (and torch
#                                 for the PyTorch columns), no Rust: every conformance case
#                                 through `lossc run --backend candle --device cuda`, the
#                                 training example, exported torch modules if built, and a
#                                 benchmark against PyTorch eager and torch.compile; one
#                                 summary table; exit 0 only when nothing failed
#
# The device half runs from the repository (bundle at target/gpu-check) or from the
# bundle's own copy (target/gpu-check/gpu-check.sh device). Environment:
#   GPU_CHECK_BUNDLE   the bundle directory
#   GPU_CHECK_DEVICE   cuda (default), cuda:N, or cpu to try the driver on a machine without
#                      a GPU (then with small benchmark sizes)
#   GPU_CHECK_LOSSC    another lossc (e.g. target/release/lossc for GPU_CHECK_DEVICE=cpu)
#   GPU_CHECK_PARTS    parity,conformance,train,export,bench (the default: all)
#   GPU_CHECK_ARGS     more options for check.py (--jobs J, --iters K, --sizes small|device,
#                      --work DIR: where the binaries are unpacked, default $TMPDIR/losslang-gpu-check)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

build() {
    cd "$here/.."
    scripts/build-cuda.sh
    local out=target/gpu-check rel=target/cuda/release
    rm -rf "$out"
    mkdir -p "$out/bin" "$out/cases" "$out/bench" "$out/stdlib"
    # The three stripped binaries are about 64 MB together, mostly candle's kernels as PTX
    # text: xz makes them about 7 MB, and check.py unpacks them on the device (Python's
    # lzma, no other tool needed).
    local bin
    for bin in "$rel/lossc" "$rel/examples/train_noisy_labels" "$rel/candle-parity"; do
        if [ -f "$bin" ]; then
            "${PYTHON:-python3}" -c 'import lzma, shutil, sys
with open(sys.argv[1], "rb") as i, lzma.open(sys.argv[2], "wb", preset=6) as o:
    shutil.copyfileobj(i, o)' "$bin" "$out/bin/$(basename "$bin").xz"
        fi
    done
    # cuRAND (candle opens a generator with every CUDA device) is the one CUDA library a
    # CUDA 13 PyTorch does not install: carry it (42.5 MB as xz) for a device whose toolkit
    # lacks it too; the device half prefers the device's own. GPU_CHECK_CURAND=0 leaves it out.
    if [ "${GPU_CHECK_CURAND:-1}" != 0 ]; then
        local curand=target/cuda-toolkit/nvidia/cu13/lib/libcurand.so.10
        if [ ! -f "$curand.xz" ] || [ "$curand" -nt "$curand.xz" ]; then
            "${PYTHON:-python3}" -c 'import lzma, shutil, sys
with open(sys.argv[1], "rb") as i, lzma.open(sys.argv[2] + ".tmp", "wb", preset=6) as o:
    shutil.copyfileobj(i, o)' "$curand" "$curand.xz"
            mv "$curand.xz.tmp" "$curand.xz"
        fi
        mkdir -p "$out/lib"
        cp "$curand.xz" "$out/lib/"
    fi
    cp -r tests/conformance/cases/public "$out/cases/"
    cp stdlib/*.loss "$out/stdlib/"
    cp scripts/gpu-check/bench/*.loss stdlib/infonce.loss "$out/bench/"
    cp scripts/gpu-check/check.py scripts/gpu-check.sh "$out/"

    # The CUDA lossc must load (every library resolved, every symbol bound) before it is
    # carried anywhere: run it here against the link-time libraries and the libcuda stub
    # (a libcuda.so.1 beside it, for the loader); `check` never touches the device.
    local cu=target/cuda-toolkit/nvidia/cu13/lib lossc=$rel/lossc
    ln -sfn libcuda.so "$cu/stubs/libcuda.so.1"
    LD_LIBRARY_PATH="$cu:$cu/stubs" "$lossc" check --no-color "$out"/stdlib/*.loss >/dev/null 2>&1 || {
        echo "gpu-check: the CUDA lossc does not load here:" >&2
        LD_LIBRARY_PATH="$cu:$cu/stubs" "$lossc" check "$out/stdlib/focal.loss" >&2
        exit 1
    }
    # The torch module of every stdlib loss (`lossc export`, docs/export.md) goes to the
    # bundle and the device half checks it on the GPU.
    if LD_LIBRARY_PATH="$cu:$cu/stubs" "$lossc" export --help >/dev/null 2>&1; then
        mkdir -p "$out/export"
        local f
        for f in "$out"/stdlib/*.loss; do
            LD_LIBRARY_PATH="$cu:$cu/stubs" "$lossc" export "$f" --target torch \
                -o "$out/export/$(basename "$f" .loss).py" ||
                echo "gpu-check: export of $f failed" >&2
        done
    fi
    du -sh "$out"/bin/* "$out"/lib/* 2>/dev/null || true
    du -sh "$out"
    local kib
    kib=$(du -sk "$out" | cut -f1)
    if [ "$kib" -ge $((64 * 1024)) ]; then
        echo "gpu-check: the bundle is ${kib} KiB, over the 64 MiB that can be carried" >&2
        exit 1
    fi
    echo "gpu-check: bundle ready in $out; on the device: bash $out/gpu-check.sh device"
}

device() {
    local bundle="${GPU_CHECK_BUNDLE:-}"
    if [ -z "$bundle" ]; then
        if [ -f "$here/check.py" ]; then bundle="$here"; else bundle="$here/../target/gpu-check"; fi
    fi
    if [ ! -f "$bundle/check.py" ]; then
        echo "gpu-check: no bundle at $bundle; run scripts/gpu-check.sh build first" >&2
        exit 1
    fi
    local dev="${GPU_CHECK_DEVICE:-cuda}"
    local args=(--device "$dev" --parts "${GPU_CHECK_PARTS:-parity,conformance,train,export,bench}")
    if [ -n "${GPU_CHECK_LOSSC:-}" ]; then args+=(--lossc "$GPU_CHECK_LOSSC"); fi
    if [ "$dev" = cpu ]; then
        args+=(--sizes small)
        # Without a GPU (testing this half where the build ran): the CUDA binaries load
        # against the build's link-time libraries and its driver stub, and never call it.
        local cu="$here/../target/cuda-toolkit/nvidia/cu13/lib"
        if [ -d "$cu/stubs" ]; then
            export LD_LIBRARY_PATH="$cu:$cu/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        fi
    fi
    if [ "$dev" != cpu ] && command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L || true; fi
    # shellcheck disable=SC2206 # GPU_CHECK_ARGS is a list of options, split on purpose
    args+=(${GPU_CHECK_ARGS:-})
    exec "${PYTHON:-python3}" "$bundle/check.py" "$bundle" "${args[@]}"
}

case "${1:-}" in
build) build ;;
device) device ;;
*)
    echo "usage: scripts/gpu-check.sh build|device (see the top of this script)" >&2
    exit 2
    ;;
esac
