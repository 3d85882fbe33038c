#!/bin/bash
# Session 7, call 1: decode rows with the read-only floor (MQA, xSMQA, GQA, MHA), then ncu of MQA b1 at 128k/32k (v4) and the floor kernel.
set -o pipefail
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $O/r/gpu.txt 2>&1
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 150 $B/sqa-attn-bench --prefill "" --layouts MQA,xSMQA,GQA --decode-kernels v4 --json $O/r/dec.json > $O/r/dec.log 2>&1
el "dec rc=$?"; grep -iE "MQA|floor|read" $O/r/dec.log | head -40
NCU=/usr/local/cuda/bin/ncu; command -v ncu >/dev/null && NCU=$(command -v ncu)
for ctx in 131072 32768; do for k in Decode ReadFloor; do n=2; [ $k = ReadFloor ] && n=1
timeout 120 $NCU --clock-control none -k regex:$k --launch-count $n --set full -o $O/r/ncu_${k}_$ctx \
  $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx $ctx --decode-batch 1 --decode-kernels v4 --sustain-ms 0 > $O/r/ncu_${k}_$ctx.log 2>&1
el "ncu $k $ctx rc=$?"
timeout 60 $NCU --import $O/r/ncu_${k}_$ctx.ncu-rep --page details > $O/r/ncu_${k}_${ctx}_details.txt 2>&1
done; done
grep -E "Duration|DRAM Throughput|Memory Throughput|Issue Slots|Stall|Achieved Occupancy|Registers|    [A-Z][a-zA-Z]+Kernel" $O/r/ncu_Decode_131072_details.txt $O/r/ncu_ReadFloor_131072_details.txt | head -60
tar -cf $O/r.tar -C $O r && rm -rf $O/r
