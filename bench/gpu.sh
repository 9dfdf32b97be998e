#!/usr/bin/env bash
# GPU trial throughput (bench/gpu.py): ResNet-18 head fine-tune at 224x224 on one GPU,
# with and without mixed precision and the feature cache; within five minutes.
#   bench/gpu.sh            on a machine with one GPU
#   bench/gpu.sh --tiny     on the CPU, 32x32 images, a few batches (CI)
# Results: bench/results/gpu.json and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m bench.gpu "$@"
