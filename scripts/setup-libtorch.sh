#!/usr/bin/env bash
# Installs a CPU-usable libtorch 2.13.0 (the version tch 0.26 links against) and prints
# the directory to use as LIBTORCH. Idempotent: a finished install is reused.
#
# Order of preference:
#   1. $LIBTORCH, when the user already has a libtorch there;
#   2. the cache directory ($IOT_ANOMALY_CACHE, default ~/.cache/iot-anomaly).
#
# PyPI's torch==2.13.0 wheel for Linux x86_64 is a CUDA build. Its libtorch links and
# runs on a machine without a GPU once the CUDA runtime and CUPTI libraries sit beside
# it, so we install only those three wheels (about 540 MB) instead of the full CUDA set.
set -euo pipefail

TORCH_VERSION=2.13.0
CUDA_RUNTIME_VERSION=13.0.96
CUDA_CUPTI_VERSION=13.0.85

log() { echo "[setup-libtorch] $*" >&2; }

if [[ -n "${LIBTORCH:-}" ]]; then
    if [[ -f "$LIBTORCH/lib/libtorch_cpu.so" ]]; then
        echo "$LIBTORCH"
        exit 0
    fi
    log "LIBTORCH=$LIBTORCH has no lib/libtorch_cpu.so; unset LIBTORCH or point it at a libtorch $TORCH_VERSION install"
    exit 1
fi

cache="${IOT_ANOMALY_CACHE:-$HOME/.cache/iot-anomaly}"
target="$cache/libtorch-$TORCH_VERSION"
marker="$target/.complete"

if [[ -f "$marker" ]]; then
    echo "$target/torch"
    exit 0
fi

log "installing torch==$TORCH_VERSION (CPU use) into $target; this downloads about 540 MB once"
rm -rf "$target.partial"
mkdir -p "$cache"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$target.partial" \
    "torch==$TORCH_VERSION" \
    "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" \
    "nvidia-cuda-cupti==$CUDA_CUPTI_VERSION" >&2

# libtorch_cuda.so looks for the CUDA runtime through its rpath ($ORIGIN/../../nvidia/...),
# which the layout above satisfies; nothing else has to be copied.
rm -rf "$target"
mv "$target.partial" "$target"
touch "$marker"
log "libtorch ready in $target/torch"
echo "$target/torch"
