#!/usr/bin/env bash
# Generates the Python gRPC stubs from proto/ into rbmrec/ (never edit them by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf rbmrec
mkdir -p rbmrec/v1
"$PY" -m grpc_tools.protoc -Iproto \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  proto/rbmrec/v1/recommender.proto
touch rbmrec/__init__.py rbmrec/v1/__init__.py
