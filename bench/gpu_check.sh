#!/usr/bin/env bash
# GPU check from a fresh clone: install, make sure a Redis answers, then bench/gpu_check.py
# (the gpu tests, the real server under load, one training epoch of each RBM). About
# 5-8 minutes on one GPU; `--device cpu --quick` checks the script itself on a CPU.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/gpu_check.sh [--device cuda|cpu] [--quick] [--out DIR]

  --device cuda|cpu  where the models run (default: cuda)
  --quick            every step small, a few minutes on a CPU: checks the script itself
  --out DIR          folder for gpu_check.json (default: bench/results)

Installs what it needs (cuda: .venv-gpu over the machine's CUDA build of torch; cpu:
.venv, by `make install` if it is missing), uses the Redis at $REDIS_URL (default
redis://127.0.0.1:6379/0) or starts a private redis-server if none answers, then runs
bench/gpu_check.py, which prints one table and writes DIR/gpu_check.json.
EOF
}

DEVICE=cuda QUICK=() OUT=bench/results
while [ $# -gt 0 ]; do
  case $1 in
    --device) [ $# -ge 2 ] || { usage >&2; exit 2; }; DEVICE=$2; shift 2 ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --quick) QUICK=(--quick); shift ;;
    --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case $DEVICE in
  cuda | cpu) ;;
  *) echo "gpu_check.sh: --device must be cuda or cpu, not $DEVICE" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # before the cd below: DIR is relative to where we were called
cd "$(dirname "$0")/.."

if [ "$DEVICE" = cuda ]; then
  # Reuse the machine's torch (a CUDA build) instead of the CPU wheel the Makefile pins:
  # the venv sees the system's packages, and a constraint keeps pip off torch.
  PY=${PYTHON:-python3}
  if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "gpu_check.sh: $PY has no torch that sees a CUDA device (set PYTHON to the" \
      "interpreter with the machine's CUDA build of torch, or use --device cpu --quick)" >&2
    exit 1
  fi
  VENV=.venv-gpu
  if [ ! -f $VENV/.installed ]; then
    "$PY" -m venv --system-site-packages $VENV
    $VENV/bin/python -c 'import torch; print("torch==" + torch.__version__)' >$VENV/torch.txt
    # The project's dependencies but torch, and the dev tools the gpu tests need.
    $VENV/bin/python - >$VENV/requirements.txt <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
name = lambda spec: re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0]
wanted = {"grpcio-tools", "pytest", "pytest-timeout"}
specs = [d for d in project["dependencies"] if name(d) != "torch"]
specs += [d for d in project["optional-dependencies"]["dev"] if name(d) in wanted]
print("\n".join(specs))
EOF
    $VENV/bin/python -m pip install -q -c $VENV/torch.txt -r $VENV/requirements.txt
    PYTHON=$VENV/bin/python ./scripts/gen_proto.sh
    $VENV/bin/python -m pip install -q --no-deps -e .
    touch $VENV/.installed
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  VENV=.venv
  [ -f $VENV/.installed ] || make install
fi
VPY=$VENV/bin/python

export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
redis_answers() {
  "$VPY" -c 'import os, redis; redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2).ping()' \
    2>/dev/null
}
REDIS_PID= REDIS_DIR=
stop_redis() {
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" || true; fi
  if [ -n "$REDIS_DIR" ]; then rm -rf "$REDIS_DIR"; fi
}
if ! redis_answers; then
  command -v redis-server >/dev/null || { echo "gpu_check.sh: no Redis at $REDIS_URL and no redis-server" >&2; exit 1; }
  REDIS_DIR=$(mktemp -d)
  PORT=$("$VPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" \
    >"$REDIS_DIR/redis.log" 2>&1 &
  REDIS_PID=$!
  trap stop_redis EXIT
  export REDIS_URL=redis://127.0.0.1:$PORT/0
  for _ in $(seq 100); do redis_answers && break; sleep 0.1; done
  redis_answers || { echo "gpu_check.sh: the private redis-server did not answer" >&2; exit 1; }
  echo "gpu_check.sh: started a private redis-server at $REDIS_URL" >&2
fi

"$VPY" bench/gpu_check.py --device "$DEVICE" ${QUICK[@]+"${QUICK[@]}"} --out "$OUT"
