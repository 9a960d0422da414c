#!/usr/bin/env bash
# The device check (benchmarks/gpu_check.py): training throughput bf16/fp32 for HECLIP (ResNet-50) and
# ST-Net (DenseNet-121), a 2-GPU data-parallel step, 20k x 100k retrieval, bf16-vs-fp32 agreement.
# One command, under 8 minutes on one GPU; prints one table for benchmarks/RESULTS.md.
#   bash benchmarks/gpu_check.sh            (from the repository root, stbench installed)
#   bash benchmarks/gpu_check.sh --smoke    (tiny sizes on the CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout 480 python benchmarks/gpu_check.py "$@"
