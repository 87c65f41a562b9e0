#!/usr/bin/env bash
# Set up the project's virtual environment (.venv) with onnx_dc installed in editable mode.
#   --test   also the test tools, every package at the version of scripts/constraints-test.txt, and a
#            second environment (.venv-ort-latest) holding the newest onnxruntime from PyPI, in which
#            the tests run compressed models too.
# Safe to run again: existing environments are reused and brought up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
PIP_FLAGS=(-q --disable-pip-version-check)

[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ "${1:-}" = "--test" ]; then
  .venv/bin/pip install "${PIP_FLAGS[@]}" -c scripts/constraints-test.txt -e ".[dev]"
  [ -x .venv-ort-latest/bin/python ] || "$PY" -m venv .venv-ort-latest
  # onnx, tqdm and constriction let the tests open models through onnx_dc (on PYTHONPATH) with this onnxruntime too
  .venv-ort-latest/bin/pip install "${PIP_FLAGS[@]}" --upgrade onnxruntime numpy onnx tqdm constriction
else
  .venv/bin/pip install "${PIP_FLAGS[@]}" -e .
fi
