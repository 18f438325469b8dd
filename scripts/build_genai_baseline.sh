#!/bin/sh
# onnxruntime-genai's own CPU model of the embedded SmolLM2 (its model builder's output), the
# baseline `benchmarks/export_vs_torch.py --genai DIR` and `benchmarks/e2e.py` compare against.
#
# The builder needs a newer transformers than semedge pins (4.57 lacks classes it imports), so it
# runs in a scratch venv of its own; the project's .venv only gets the onnxruntime-genai runtime
# (`make genai`). The input is the Hugging Face directory semedge converts the GGUF into
# (~/.cache/semedge/smollm2-135m-instruct-q4_1): the same weights the semedge export holds.
#
# usage: scripts/build_genai_baseline.sh [PRECISION] [OUT] [PROJECT_PYTHON]
#   PRECISION: int4 (default; the builder's CPU default, MatMulNBits), int8 or fp32
#   OUT: defaults to .cache/genai/smollm2-PRECISION in the repository
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREC=${1:-int4}
OUT=${2:-$ROOT/.cache/genai/smollm2-$PREC}
PY=${3:-$ROOT/.venv/bin/python}
VENV=$ROOT/.cache/genai/builder-venv
case "$PREC" in int4|int8|fp32) ;; *) echo "error: precision must be int4, int8 or fp32, got $PREC" >&2; exit 1;; esac
# the converted Hugging Face directory (made on the first load of the model, offline)
HF_DIR=$("$PY" -c "from semedge.models.loader import _smollm2_dir; print(_smollm2_dir())")
if [ ! -f "$VENV/.installed" ]; then  # a venv cannot move once made: built in place, stamped
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.13.0
    "$VENV/bin/pip" install -q "transformers>=5,<6" onnxruntime-genai==0.18.0 onnx onnx-ir
    touch "$VENV/.installed"
fi
TMP="$OUT.tmp-$$"
rm -rf "$TMP"
"$VENV/bin/python" -m onnxruntime_genai.models.builder -i "$HF_DIR" -o "$TMP" -p "$PREC" -e cpu \
    -c "$TMP.cache" > "$TMP.log" 2>&1 || { tail -5 "$TMP.log" >&2; rm -rf "$TMP" "$TMP.cache"; exit 1; }
rm -rf "$TMP.cache" "$TMP.log" "$OUT" && mv "$TMP" "$OUT"
echo "onnxruntime-genai $PREC model of SmolLM2 in $OUT"
