#!/usr/bin/env bash
# make demo: train on ml-100k u1, register, promote, serve, ask for two users' top 10, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
export RBMREC_REGISTRY=${RBMREC_REGISTRY:-$PWD/.demo/registry}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
mkdir -p .demo

if python -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_timeout=1).ping()" \
    "$REDIS_URL" 2>/dev/null; then
  CACHE=redis; echo "Redis answers at $REDIS_URL: hidden states are cached in Redis."
else
  CACHE=memory; echo "No Redis at $REDIS_URL: using the in-process cache."
fi

echo "== training an RBM on MovieLens ml-100k (split u1) from $RBMREC_DATA"
rbm-train --dataset ml-100k --data-dir "$RBMREC_DATA" --split u1 --epochs 30 --promote
rbm-registry list rbm

echo "== starting the server"
rbm-serve --port 0 --cache "$CACHE" --redis-url "$REDIS_URL" >.demo/serve.out 2>.demo/serve.log &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  grep -q '^serving' .demo/serve.out 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat .demo/serve.log; echo "server died" >&2; exit 1; }
  sleep 0.5
done
cat .demo/serve.out
TARGET=$(grep -o '127\.0\.0\.1:[0-9]*' .demo/serve.out | tail -1)

for user in 1 2; do
  echo "== top 10 for user $user"
  rbm-client --target "$TARGET" recommend --user "$user" -n 10
done
echo "== stopping the server"
