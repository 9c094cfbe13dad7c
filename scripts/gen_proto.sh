#!/usr/bin/env bash
# Generates the Python gRPC stubs from proto/ (never edit them by hand): rbmrec/ for the
# server, and the message stubs of the client library into client/rbmrec_client/_proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf rbmrec
mkdir -p rbmrec/v1
"$PY" -m grpc_tools.protoc -Iproto \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  proto/rbmrec/v1/recommender.proto
touch rbmrec/__init__.py rbmrec/v1/__init__.py

# The client builds its calls from the descriptor, so it needs only the messages. They keep
# the proto's file name: both copies can then load in one process (the same descriptor).
# client/setup.py does the same when the client is built straight from a clone; the image
# copies no client/, so there is nothing to do there.
if [ -d client/rbmrec_client/_proto ]; then
  # Beside the stubs, so that each is replaced in one rename (as client/setup.py does).
  tmp=$(mktemp -d client/rbmrec_client/_proto/.gen-XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m grpc_tools.protoc -Iproto --python_out="$tmp" --pyi_out="$tmp" \
    proto/rbmrec/v1/recommender.proto
  mv "$tmp"/rbmrec/v1/recommender_pb2.py "$tmp"/rbmrec/v1/recommender_pb2.pyi \
    client/rbmrec_client/_proto/
fi
