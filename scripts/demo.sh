#!/usr/bin/env bash
# `make demo`: makes a small SQA model, starts sqa-local (a router + 2 CPU workers on loopback),
# sends one 16k-token request through the router with sqa-cli (streaming 32 tokens), prints the
# summary and where the metrics are, and stops the cluster.
#
# usage: scripts/demo.sh [BUILD_DIR]     (default: build)
# env:   SQA_DEMO_PRESET (default medium: the 16k prefill took ~19 s on 2 shared CPU cores),
#        SQA_DEMO_LAYOUT (default SQA), SQA_DEMO_PROMPT (default 16384), SQA_DEMO_GENERATE (default 32),
#        SQA_DEMO_WORKERS (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
PRESET=${SQA_DEMO_PRESET:-medium}
LAYOUT=${SQA_DEMO_LAYOUT:-SQA}
PROMPT=${SQA_DEMO_PROMPT:-16384}
GENERATE=${SQA_DEMO_GENERATE:-32}
WORKERS=${SQA_DEMO_WORKERS:-2}
for b in sqa-mkmodel sqa-local sqa-worker sqa-cli; do
  if [ ! -x "$BUILD/bin/$b" ]; then
    echo "demo.sh: $BUILD/bin/$b not found; run 'make demo' (or build the target $b) first" >&2
    exit 1
  fi
done
# Debian 12's OpenBLAS 0.3.21 falls back to generic Prescott kernels on CPUs newer than it knows
# (~30x slower sgemm); pick the AVX-512/AVX2 kernels unless the user chose already. The workers
# inherit this from sqa-local.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512bw /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=Haswell
  fi
fi
MODEL="$BUILD/models/demo-$PRESET-$LAYOUT"
if [ ! -f "$MODEL/config.json" ]; then
  echo "demo.sh: writing a random $PRESET $LAYOUT model to $MODEL"
  # Written aside and renamed, so an interrupted run never leaves a half-written model to reuse.
  rm -rf "$MODEL.partial"
  "$BUILD/bin/sqa-mkmodel" --out "$MODEL.partial" --preset "$PRESET" --layout "$LAYOUT" --dtype bf16
  mv "$MODEL.partial" "$MODEL"
else
  echo "demo.sh: reusing $MODEL"
fi

WORK=$(mktemp -d /tmp/sqa-demo-XXXXXX)
LOCAL_PID=""
cleanup() {
  if [ -n "$LOCAL_PID" ] && kill -0 "$LOCAL_PID" 2>/dev/null; then
    kill -TERM "$LOCAL_PID" 2>/dev/null || true
    wait "$LOCAL_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "demo.sh: starting sqa-local: router + $WORKERS CPU workers on loopback"
"$BUILD/bin/sqa-local" --model "$MODEL" --workers "$WORKERS" --port 0 --port-file "$WORK/router.port" \
  --metrics-port 0 --kv-cache-mb 256 > "$WORK/local.log" 2>&1 &
LOCAL_PID=$!
for _ in $(seq 1 1800); do
  [ -s "$WORK/router.port" ] && break
  if ! kill -0 "$LOCAL_PID" 2>/dev/null; then
    echo "demo.sh: sqa-local exited during start-up:" >&2
    cat "$WORK/local.log" >&2
    exit 1
  fi
  sleep 0.1
done
[ -s "$WORK/router.port" ] || { echo "demo.sh: sqa-local did not become ready" >&2; cat "$WORK/local.log" >&2; exit 1; }
TARGET="127.0.0.1:$(cat "$WORK/router.port")"
grep -v '^[IWE][0-9]' "$WORK/local.log" || true
echo
echo "demo.sh: model served by the router:"
"$BUILD/bin/sqa-cli" info --target "$TARGET" --json
echo
echo "demo.sh: one $PROMPT-token request through the router, streaming $GENERATE greedy tokens"
set -x
"$BUILD/bin/sqa-cli" generate --target "$TARGET" --synthetic "$PROMPT" --max-tokens "$GENERATE"
{ set +x; } 2>/dev/null
echo
ROUTER_METRICS=$(grep -o 'router .*metrics http://[^ ]*' "$WORK/local.log" | grep -o 'http://[^ ]*' | head -1)
echo "demo.sh: metrics (Prometheus text) are at:"
grep -o '^\(router\|worker [0-9]*\) .*metrics http://[^ ]*' "$WORK/local.log" | sed 's/ *grpc [^ ]* */: /; s/metrics //; s/^/  /'
echo "demo.sh: a few router series after the request ($ROUTER_METRICS):"
/usr/bin/python3 - "$ROUTER_METRICS" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
keep = ("sqa_router_requests_total", "sqa_router_time_to_first_token_seconds_sum",
        "sqa_router_time_to_first_token_seconds_count", "sqa_router_request_duration_seconds_sum",
        "sqa_router_generated_tokens_total", "sqa_router_healthy_groups", "sqa_router_inflight_requests")
for line in text.splitlines():
    if line.startswith(keep):
        print("  " + line)
PY
echo
echo "demo.sh: stopping the cluster (SIGTERM to sqa-local)"
kill -TERM "$LOCAL_PID"
wait "$LOCAL_PID"
LOCAL_PID=""
grep -v '^[IWE][0-9]' "$WORK/local.log" | tail -2
echo "demo.sh: done"
