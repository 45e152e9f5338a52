#!/usr/bin/env bash
# Engine-side GPU check (see benchmarks/gpu_check.py): needs only python with torch and transformers, and this
# repo's copd/ and benchmarks/gpu_check.* files. Under 8 minutes on one GPU.
#   bash benchmarks/gpu_check.sh            # Qwen3-4B shape, bf16, on the GPU (~16 GB of checkpoints on disk)
#   bash benchmarks/gpu_check.sh --tiny     # CPU smoke run at a tiny size (seconds)
# Extra arguments go to gpu_check.py (e.g. --workdir /scratch --json-out gpu_check.json).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
if [[ "${1:-}" == "--tiny" ]]; then
  shift
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # a shared 2-core box: one thread is faster
  sizes=(--shape tiny --device cpu --dtype fp32 --lengths 32,128 --tokens 256 --chunk 128 --repeats 7)
else
  sizes=(--shape qwen3-4b --dtype bf16 --lengths 1024,8192 --tokens 8192 --chunk 2048 --repeats 5)
fi
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py "${sizes[@]}" "$@"
