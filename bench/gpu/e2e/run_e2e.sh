#!/bin/bash
# End-to-end benchmark on a GPU machine: makes the 1b preset (bf16) for each layout, measures the
# engine (sqa-e2e-bench --device cuda) and, for MHA and GQA, Hugging Face transformers on the same
# files (hf_baseline.py), then writes RESULTS/gpu_e2e.md and .json (report.py).
#
# usage: run_e2e.sh BIN_DIR RESULTS_DIR [LAYOUTS...]   (default layouts: MHA GQA SQA sSQA xSQA)
# env: PREFILL (default 8192,32768,131072), DECODE_BATCH (1,32), CHUNK (16384), MODEL_DIR (/tmp),
#      CHUNK_SWEEP (e.g. "8192 32768 131072": MHA prefill at the largest PREFILL length with each
#      chunk size, written to sweep_MHA_chunk<C>.json), HF_FROM (a directory with hf_<LAYOUT>.json
#      of an earlier run on the same kind of machine: reused instead of running transformers again;
#      the report says so), CUDA_GRAPHS (both: decode measured with CUDA graphs on and off; on; off)
set -euo pipefail
bin=$1; res=$2; shift 2
layouts=("$@"); [ ${#layouts[@]} -gt 0 ] || layouts=(MHA GQA SQA sSQA xSQA)
here=$(cd "$(dirname "$0")" && pwd)
prefill=${PREFILL:-8192,32768,131072}
decode=${DECODE_BATCH:-1,32}
chunk=${CHUNK:-16384}
mdir=${MODEL_DIR:-/tmp}
mkdir -p "$res"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$res/gpu.txt" 2>/dev/null || true
export PYTHONUNBUFFERED=1
for l in "${layouts[@]}"; do
  m=$mdir/sqa_e2e_$l
  t0=$SECONDS
  "$bin/sqa-mkmodel" --out "$m" --preset 1b --layout "$l" --dtype bf16 --seed 7 >/dev/null
  echo "== $l: model made in $((SECONDS - t0)) s"
  "$bin/sqa-e2e-bench" --model "$m" --device cuda --prefill "$prefill" --decode-batch "$decode" --chunk "$chunk" \
      --cuda-graphs "${CUDA_GRAPHS:-both}" --json "$res/e2e_$l.json" >/dev/null
  if [ "$l" = MHA ] && [ -n "${CHUNK_SWEEP:-}" ]; then
    for c in $CHUNK_SWEEP; do
      "$bin/sqa-e2e-bench" --model "$m" --device cuda --prefill "${prefill##*,}" --decode-batch none --chunk "$c" \
          --json "$res/sweep_MHA_chunk$c.json" >/dev/null
    done
  fi
  if [ -n "${HF_FROM:-}" ]; then
    [ -f "$HF_FROM/hf_$l.json" ] && cp "$HF_FROM/hf_$l.json" "$res/"
  elif [ "$l" = MHA ] || [ "$l" = GQA ]; then
    python3 "$here/hf_baseline.py" --model "$m" --prefill "$prefill" --decode-batch "$decode" \
        --json "$res/hf_$l.json" >/dev/null || echo "HF baseline failed for $l"
  fi
  rm -rf "$m"
done
note=""
[ -n "${HF_FROM:-}" ] && note="; transformers rows reused from an earlier run (HF_FROM)"
python3 "$here/report.py" "$res" "$res/gpu_e2e" \
  "bench/gpu/e2e/run_e2e.sh BIN RESULTS ${layouts[*]} (PREFILL=$prefill DECODE_BATCH=$decode CHUNK=$chunk CHUNK_SWEEP=${CHUNK_SWEEP:-})$note"
