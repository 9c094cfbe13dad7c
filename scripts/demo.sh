#!/usr/bin/env bash
# make demo: train on ml-100k u1, register, promote, serve, ask for two users' top 10, stop.
#
# The demo's registry (.demo/registry) is its own: it is emptied first, so every run makes
# version 1 again instead of piling up identical versions. A registry given in
# $RBMREC_REGISTRY is the caller's: it is used as it is and never emptied.
# Redis: $REDIS_URL when given, else database 1 of the local Redis (db 0 is left alone).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${RBMREC_REGISTRY:-}" ]]; then
  echo "Using the registry in \$RBMREC_REGISTRY: $RBMREC_REGISTRY (a new version is added)."
else
  export RBMREC_REGISTRY=$PWD/.demo/registry
  rm -rf "$RBMREC_REGISTRY"
fi
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/1}
mkdir -p .demo
rm -f .demo/address.json

if python -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_timeout=1).ping()" \
    "$REDIS_URL" 2>/dev/null; then
  CACHE=redis; echo "Redis answers at $REDIS_URL: hidden states are cached in Redis."
else
  CACHE=memory
  echo "No Redis at $REDIS_URL: using the in-process cache (rating updates are off)."
fi

echo "== training an RBM on MovieLens ml-100k (split u1) from $RBMREC_DATA"
rbm-train --dataset ml-100k --data-dir "$RBMREC_DATA" --split u1 --epochs 30 --promote
rbm-registry list rbm

echo "== starting the server"
rbm-serve --port 0 --cache "$CACHE" --redis-url "$REDIS_URL" \
  --address-file .demo/address.json >.demo/serve.out 2>.demo/serve.log &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
# The server writes its address file (atomically) once it serves.
for _ in $(seq 1 120); do
  [[ -f .demo/address.json ]] && break
  kill -0 $SERVER 2>/dev/null || { cat .demo/serve.log; echo "server died" >&2; exit 1; }
  sleep 0.5
done
[[ -f .demo/address.json ]] || { cat .demo/serve.log; echo "server did not start" >&2; exit 1; }
cat .demo/serve.out
TARGET=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['address'])" \
  .demo/address.json)

for user in 1 2; do
  echo "== top 10 for user $user"
  rbm-client --target "$TARGET" recommend --user "$user" -n 10
done
echo "== stopping the server"
