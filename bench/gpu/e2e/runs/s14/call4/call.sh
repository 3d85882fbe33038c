#!/bin/bash
# Session 14 call 4: the GPU tests of the committed binaries (1778ca5); ncu profiles of the wide
# form (one weight: the LM head shape and 2048 x 2048 at 16 rows) beside the narrow form at 8 rows.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
S="--section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats"
for c in "SkinnyWide 16 2048:32000:f32" "SkinnyWide 16 2048:2048" "SkinnyWide 16 5632:2048" "SkinnyGemmKernel 8 2048:32000:f32" "SkinnyGemmKernel 8 2048:2048"; do
  set -- $c
  $ncu $S -k regex:$1 -c 1 --cache-control all --clock-control none $B/sqa-gemm-bench --rows $2 --shapes $3 > $R/ncu_$1_$2_${3//:/x}.txt 2>&1
  echo "ncu $c rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
done
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
