#!/bin/bash
# Where the time of a decode step goes: Nsight Systems traces sqa-e2e-bench's graphed decode steps
# (kernel nodes inside the graphs traced one by one) and decode_kernels.py sums the kernels per
# step, by kind. Runs on a GPU machine with nsys; binaries in BIN_DIR (sqa-mkmodel, sqa-e2e-bench).
#
# usage: profile_decode.sh BIN_DIR OUT_DIR [LAYOUT] [BATCHES]   (defaults: MHA, "1 32")
# env: MODEL_DIR (default /tmp), STEPS (decode steps per batch, default 32), CONTEXT (prompt, 1024)
set -euo pipefail
bin=$1; out=$2; layout=${3:-MHA}; batches=${4:-1 32}
here=$(cd "$(dirname "$0")" && pwd)
steps=${STEPS:-32}; context=${CONTEXT:-1024}
nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1 || true)
if [ -z "$nsys" ]; then echo "profile_decode: no nsys on this machine" >&2; exit 2; fi
mkdir -p "$out"
m=${MODEL_DIR:-/tmp}/sqa_profile_$layout
"$bin/sqa-mkmodel" --out "$m" --preset 1b --layout "$layout" --dtype bf16 --seed 7 > /dev/null
for b in $batches; do
  rep=$out/decode_${layout}_b$b
  "$nsys" profile -t cuda --cuda-graph-trace=node -f true -o "$rep" "$bin/sqa-e2e-bench" --model "$m" --device cuda \
      --prefill none --decode-batch "$b" --decode-context "$context" --decode-steps "$steps" --cuda-graphs on \
      > "$rep.json" 2> "$rep.log"
  "$nsys" stats -r cuda_gpu_trace -f csv -o "$rep" "$rep.nsys-rep" > /dev/null
  # decode_kernels.py cuts the trace at each device-to-host copy (a step's sampled tokens; a step
  # with more than one such copy would show up as a step of too few kernels) and keeps the last $steps.
  python3 "$here/decode_kernels.py" "${rep}_cuda_gpu_trace.csv" --steps "$steps" > "$rep.md"
  cat "$rep.md"
  rm -f "$rep.sqlite"
done
rm -rf "$m"
