#!/bin/sh
# Unpack the Triton Inference Server bundled in nvidia-pytriton (with --no-deps: none of PyTriton's
# own Python deps) for `semedge serve --triton`, plus NumPy 1.26 for the Python-backend stub (its
# pybind11 predates NumPy 2). Never fails the install: where the wheel does not install
# (not x86-64 Linux with glibc >= 2.35), it says so and the Triton tests skip.
# usage: scripts/install_triton.sh [PYTHON] [DEST]   (defaults: .venv/bin/python .venv/triton)
PY=${1:-.venv/bin/python}
DEST=${2:-.venv/triton}
TMP="$DEST.tmp-$$"
rm -rf "$TMP"
if "$PY" -m pip install -q --no-deps --target "$TMP" nvidia-pytriton==0.7.0 &&
   "$PY" -m pip install -q --no-deps --target "$TMP/numpy1" numpy==1.26.4; then
    rm -rf "$DEST" && mv "$TMP" "$DEST" && echo "tritonserver unpacked in $DEST"
else
    rm -rf "$TMP"
    echo "warning: nvidia-pytriton did not install here; semedge serve --triton is unavailable" >&2
fi
exit 0
