#!/usr/bin/env bash
# GPU check for a CUDA machine (issue 6): the gpu/trt tests, then the e2e benchmark on the CUDA
# provider. Budget: under 10 minutes on one modern GPU. Usage: scripts/gpu_check.sh [OUT_DIR]
# Needs: onnxruntime-gpu (CUDA provider) for the gpu tests; tensorrt + cuda-python for trt ones.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu-check}
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

echo "== semedge doctor"
timeout 60 "$PY" -m semedge doctor --json > "$OUT/doctor.json" || true
"$PY" -m semedge doctor | tail -n 8

echo "== pytest -m 'gpu or trt'"
timeout 150 "$PY" -m pytest -q -m "gpu or trt" -p no:cacheprovider --durations=10 \
  2>&1 | tee "$OUT/pytest-gpu.txt" | tail -n 25

echo "== e2e benchmark (cuda provider; SmolLM2 export cached in ~/.cache/semedge/exports)"
timeout 300 "$PY" benchmarks/e2e.py --provider cuda --contexts 2048,4096 --runs 3 \
  --baselines "" --json "$OUT/e2e-cuda.json" 2>&1 | tee "$OUT/e2e-cuda.txt" | tail -n 12

echo "== profile (cuda provider)"
EXPORT=$("$PY" -c "from semedge import __version__; from semedge.config import cache_dir; print(cache_dir() / 'exports' / f'smollm2-{__version__}')")
timeout 120 "$PY" -m semedge -q profile "$EXPORT" --provider cuda --lengths 1024,4096 \
  --ratios 1,2.4 --runs 3 --json "$OUT/profile-cuda.json" --trace "$OUT/trace-cuda.json" \
  | tee "$OUT/profile-cuda.txt"
echo "results in $OUT/"
