#!/bin/bash
# Full end-to-end run (engine and transformers side by side) with main's binaries.
set -uo pipefail
. .gpu-bundle/env.sh
R=$OUT/r; mkdir -p $R
s=$(date +%s)
CUDA_GRAPHS=both bash bench/gpu/e2e/run_e2e.sh $PWD/.gpu-bundle $R/e2e MHA GQA SQA sSQA xSQA > $R/e2e.log 2>&1
echo "e2e rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r
rm -rf $R
