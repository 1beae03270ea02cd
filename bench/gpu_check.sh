#!/usr/bin/env bash
# The CUDA paths on one GPU in under 8 minutes (issue 30): ViT-B/32 embedding fp32/bf16/fp16 beside open_clip in
# the same run (parity <= 1e-3 cosine, images/s ratio), autocast train steps (bf16; fp16 with GradScaler), DDP over
# NCCL under torchrun (1 GPU), pinned-memory loading, CPU<->GPU parity of a loss and an embedding.
#
#   bash bench/gpu_check.sh [OUT_DIR]        # default: $OUT when set (the device tool's folder), else gpu-check/
#
# Exits 0 only when every check passed; 2 when there is no usable GPU (said in one line); 1 on any failed check.
# open_clip is not in the GPU machine's image: carry its wheels in .whl/ (ignored by git), e.g. here
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl open_clip_torch ftfy wcwidth
# and this script installs them into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
py="${PYTHON:-python3}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or sees no device); run it on a machine with one" >&2
    exit 2
fi
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: $py's torch cannot use the GPU (torch.cuda.is_available() is False, or torch is missing)" >&2
    exit 2
fi
if ls .whl/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/device.txt"

status=0
timeout 360 "$py" bench/gpu_check.py all --out "$out/gpu_check.md" 2>&1 | tee "$out/gpu_check.log" || status=1
timeout 120 "$py" -m torch.distributed.run --standalone --nproc_per_node=1 bench/gpu_check.py ddp \
    --json "$out/gpu_check_ddp.json" 2>&1 | tee "$out/gpu_check_ddp.log" || status=1
if [ "$status" -ne 0 ]; then
    echo "gpu_check: FAILED (see the FAIL lines above; logs in $out)" >&2
    exit 1
fi
echo "gpu_check: all checks passed (figures in $out/gpu_check.md)"
