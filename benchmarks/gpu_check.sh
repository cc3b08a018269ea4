#!/usr/bin/env bash
# Issue 29's GPU check, as the device machine runs it: `python -m benchmarks.gpu` (see its
# docstring for the steps and the JSON files) with that machine's setup done first.
#
# That machine starts bare and offline. Its python3 already holds a CUDA build of torch and
# everything neuroplast and its tests import (numpy, safetensors, tqdm, Pillow, scikit-learn,
# pytest, hypothesis); neuroplast itself is not installed there but runs from this working tree
# through PYTHONPATH (no pip, no network). The data travels as the ignored folder gpu-data/:
#
#   here, once:      python -m benchmarks.gpu --prepare-data   # MNIST IDX + CIFAR-10 tarball, 31 MB
#   device tool:     run(command="bash benchmarks/gpu_check.sh", carry=["gpu-data"], timeout_s=560)
#   results:         $OUT/{env,tests,lenet5,bf16,resnet56}.json and $OUT/log.txt
#
# Options are passed on to python -m benchmarks.gpu (e.g. --resnet-seconds 120, --steps tests).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu-check}"
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Decoded CIFAR-10 images are cached here (outside the working tree and $OUT).
export NEUROPLAST_CACHE="${NEUROPLAST_CACHE:-/tmp/neuroplast-cache}"
{
    command -v nvidia-smi >/dev/null &&
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$python" -c "import torch, numpy, safetensors, tqdm, PIL, neuroplast; print('torch', \
torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    "$python" -m benchmarks.gpu --out "$out" "$@"
} 2>&1 | tee "$out/log.txt"
