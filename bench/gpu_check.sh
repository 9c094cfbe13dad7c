#!/usr/bin/env bash
# GPU check, for a machine with a CUDA device (under 5 minutes): builds an environment
# over the machine's CUDA build of torch, runs the tests marked gpu, then the serving
# benchmark with the model on CUDA. Results land in bench/results/serve-cuda.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
# Reuse the machine's torch (a CUDA build) instead of the CPU wheel the Makefile pins.
"$PY" -m venv --system-site-packages .venv-gpu
.venv-gpu/bin/python -m pip install -q --no-deps -e . 2>/dev/null || true
.venv-gpu/bin/python -m pip install -q grpcio-tools pytest pytest-timeout redis safetensors \
  grpcio-health-checking grpcio-reflection prometheus-client onnx onnxscript onnxruntime tqdm || true
PYTHON=.venv-gpu/bin/python ./scripts/gen_proto.sh
.venv-gpu/bin/python -m pip install -q --no-deps -e .
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && command -v redis-server >/dev/null; then
  redis-server --daemonize yes --port 6379 --save "" --appendonly no
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
.venv-gpu/bin/python -m pytest -q -m gpu tests
.venv-gpu/bin/python bench/serve.py --device cuda --duration 3 --concurrency 1,64,256 \
  --out bench/results/serve-cuda.json
