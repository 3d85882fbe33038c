#!/bin/bash
# Where the time of a decode step goes: ncu times every kernel inside sqa-e2e-bench's step graphs
# (--graph-profiling node), in two runs that differ only in the number of decode steps;
# step_kernels_ncu.py subtracts them, which leaves what one step launches and what each kernel
# costs on its own (ncu serializes kernels: overlap between them, as in a real replay, is not seen).
# (Nsight Systems would show the overlap, but the GPU machines here have no working nsys.)
#
# usage: profile_decode.sh BIN_DIR OUT_DIR [LAYOUT] [BATCH]   (defaults: MHA, 1)
# env: MODEL_DIR (default /tmp), CONTEXT (prompt tokens, 1024), DECODE_KERNEL (sqa-e2e-bench
#      --decode-kernel; the output names then end in _<kernel>)
set -euo pipefail
bin=$1; out=$2; layout=${3:-MHA}; b=${4:-1}
here=$(cd "$(dirname "$0")" && pwd)
context=${CONTEXT:-1024}
dk=${DECODE_KERNEL:-}
sfx=${dk:+_$dk}
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
if [ -z "$ncu" ]; then echo "profile_decode: no ncu on this machine" >&2; exit 2; fi
mkdir -p "$out"
m=${MODEL_DIR:-/tmp}/sqa_profile_$layout
"$bin/sqa-mkmodel" --out "$m" --preset 1b --layout "$layout" --dtype bf16 --seed 7 > /dev/null
for s in 2 6; do
  "$ncu" --graph-profiling node --metrics gpu__time_duration.sum --csv --print-units base --cache-control none \
      --clock-control none --log-file "$out/ncu_${layout}_b${b}${sfx}_s$s.csv" "$bin/sqa-e2e-bench" --model "$m" --device cuda \
      --prefill none --decode-batch "$b" --decode-context "$context" --decode-steps "$s" --cuda-graphs on \
      ${dk:+--decode-kernel "$dk"} > /dev/null
done
python3 "$here/step_kernels_ncu.py" "$out/ncu_${layout}_b${b}${sfx}_s2.csv" "$out/ncu_${layout}_b${b}${sfx}_s6.csv" 4 \
    | tee "$out/step_kernels_${layout}_b$b$sfx.md"
rm -rf "$m"
