#!/usr/bin/env bash
# The separate environment of the PyTriton served test (tests/serving/test_pytriton.py) and bench/serve.py:
# nvidia-pytriton pins numpy<2, which must never reach oodgate's own environment. Creates (or completes) a venv,
# git-ignored, at $OODGATE_PYTRITON_VENV (default bench/.cache/pytriton-venv). oodgate itself is not installed
# there: the served code imports it from the checkout (PYTHONPATH), torch-free.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${OODGATE_PYTRITON_VENV:-bench/.cache/pytriton-venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "nvidia-pytriton==0.7.0" "numpy>=1.24,<2" "onnxruntime>=1.18" "onnx>=1.16" "pillow>=9" "tqdm>=4.60" "typer>=0.12"
"$VENV/bin/python" -c "import pytriton, numpy, onnxruntime, tritonclient.grpc, tritonclient.http; print('pytriton env ready:', numpy.__version__, onnxruntime.__version__)"
