#!/usr/bin/env bash
# The main job until the services exist (engine only): makes a small SQA model and runs a
# 16k-token prefill plus a 32-token greedy continuation through the CPU engine, printing time to
# first token and tokens/s.
#
# usage: scripts/demo.sh [BUILD_DIR]     (default: build)
# env:   SQA_DEMO_PRESET (default medium), SQA_DEMO_LAYOUT (default SQA),
#        SQA_DEMO_PROMPT (default 16384), SQA_DEMO_GENERATE (default 32)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
PRESET=${SQA_DEMO_PRESET:-medium}
LAYOUT=${SQA_DEMO_LAYOUT:-SQA}
PROMPT=${SQA_DEMO_PROMPT:-16384}
GENERATE=${SQA_DEMO_GENERATE:-32}
for b in sqa-mkmodel sqa-run; do
  if [ ! -x "$BUILD/bin/$b" ]; then
    echo "demo.sh: $BUILD/bin/$b not found; run 'make demo' (or build the target $b) first" >&2
    exit 1
  fi
done
# Debian 12's OpenBLAS 0.3.21 falls back to generic Prescott kernels on CPUs newer than it knows
# (~30x slower sgemm); pick the AVX-512/AVX2 kernels unless the user chose already.
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
echo "demo.sh: $PROMPT-token prompt, $GENERATE greedy tokens on the CPU engine"
set -x
"$BUILD/bin/sqa-run" --model "$MODEL" --synthetic-prompt "$PROMPT" --generate "$GENERATE"
