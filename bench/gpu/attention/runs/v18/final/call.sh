#!/bin/bash
# Session 6, call 5 (the GPU tests of these binaries ran in call 4: gpu_tests.log): A/B v17 (A) vs v18 (B) A B A B, the
# full prefill table of B (decode rows: call 3, same decode code), then PyTorch SDPA.
set -o pipefail
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $O/r/gpu.txt 2>&1
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
fin() { tar -cf $O/r.tar -C $O r && rm -rf $O/r; exit 0; }
A="--kernels wgmma --layouts MHA,MQA,xSQA --prefill 8192,32768 --decode-ctx ,"
for r in 1 2; do for x in a b; do b=$B/sqa-attn-bench; [ $x = a ] && b=$B/sqa-attn-bench-a
  timeout 60 $b $A --json $O/r/ab_${x}_$r.json > $O/r/ab_${x}_$r.log 2>&1; el "ab $x $r rc=$?"; done; done
for r in 1 2; do for x in a b; do echo "== $x $r"; grep -E "paged64" $O/r/ab_${x}_$r.log | awk '{printf "%s/%s:%s ", $1,$2,$6}'; echo; done; done
timeout 200 $B/sqa-attn-bench --kernels wgmma --decode-ctx , --json $O/r/attn.json > $O/r/attn.log 2>&1
el "bench rc=$?"
PYTHONUNBUFFERED=1 timeout 190 python3 bench/gpu/attention/sdpa.py --json $O/r/sdpa.json > $O/r/sdpa.log 2>&1
el "sdpa rc=$?"; grep -v '^{' $O/r/sdpa.log | tail -3
grep -E "paged64|contiguous" $O/r/attn.log | awk '{printf "%s/%s/%s:%s ", $1,$2,substr($3,1,1),$6}'; echo
fin
