#!/bin/bash
# Session 8, call 6: the skinny GEMM up to 32 rows (one, two or four 8-row tiles of x). GPU tests, the GEMM and
# fused-op side-by-side, e2e MHA decode at batch 1-32 with the skinny kernel on and off.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $O/r/gpu_tests.log 2>&1
el "run_gpu_tests rc=$?"; grep -E "^== |FAILED|PASSED" $O/r/gpu_tests.log | head -20; grep -B3 -A12 "Failure" $O/r/gpu_tests.log | head -60
timeout 150 $B/sqa-gemm-bench --json $O/r/gemm.json > $O/r/gemm.log 2>&1
el "gemm bench rc=$?"; cat $O/r/gemm.log
m=/tmp/m_MHA
$B/sqa-mkmodel --out $m --preset 1b --layout MHA --dtype bf16 --seed 7 > /dev/null; el "model rc=$?"
for sk in on off; do
$B/sqa-e2e-bench --model $m --device cuda --prefill none --decode-batch 1,8,16,32 --cuda-graphs on --skinny-gemm $sk --json $O/r/e2e_$sk.json > /dev/null 2> $O/r/e2e_$sk.log
el "e2e skinny $sk rc=$?"; grep -E "decode|prefill" $O/r/e2e_$sk.log
done
rm -rf $m
tar -cf $O/r.tar -C $O r && rm -rf $O/r
