#!/bin/bash
# Session 8, call 3: skinny GEMM on mma.sync with W loaded before PdlWait; PDL for the step kernels. GPU tests, the GEMM
# side-by-side, e2e MHA decode with the skinny kernel on and off, and the per-kernel step profile.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $O/r/gpu_tests.log 2>&1
el "run_gpu_tests rc=$?"; grep -E "^== |FAILED|PASSED" $O/r/gpu_tests.log | head -20; grep -B3 -A12 "Failure" $O/r/gpu_tests.log | head -60
timeout 100 $B/attention_cuda_test --gtest_filter='*Decode*:*Merge*' > $O/r/attn_test.log 2>&1
el "attention decode tests rc=$?"; grep -E "OK \]|FAILED" $O/r/attn_test.log
timeout 120 $B/sqa-gemm-bench --json $O/r/gemm.json > $O/r/gemm.log 2>&1
el "gemm bench rc=$?"; cat $O/r/gemm.log
m=/tmp/m_MHA
$B/sqa-mkmodel --out $m --preset 1b --layout MHA --dtype bf16 --seed 7 > /dev/null; el "model rc=$?"
for sk in on off; do
$B/sqa-e2e-bench --model $m --device cuda --prefill 8192,32768 --decode-batch 1,8,32 --cuda-graphs on --skinny-gemm $sk --json $O/r/e2e_$sk.json > /dev/null 2> $O/r/e2e_$sk.log
el "e2e skinny $sk rc=$?"; grep -E "decode|prefill" $O/r/e2e_$sk.log
done
timeout 120 $B/sqa-attn-bench --prefill "" --layouts MQA,GQA --decode-kernels v4 --read-floor-max-gb 0 --json $O/r/dec.json > $O/r/dec.log 2>&1
el "decode bench rc=$?"; grep -E " v4 " $O/r/dec.log | awk '{print $1,$2,$3,$4,$5,$6,$7,$8}' | head -20
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for s in 2 6; do
  timeout 150 $NCU --graph-profiling node --metrics gpu__time_duration.sum --csv --print-units base --cache-control none --clock-control none \
    --log-file $O/r/ncu_node_s$s.csv $B/sqa-e2e-bench --model $m --device cuda --prefill none --decode-batch 1 --cuda-graphs on --decode-steps $s > /dev/null 2> $O/r/ncu_node_s$s.log
  el "ncu node steps $s rc=$?"
done
gzip $O/r/ncu_*.csv
rm -rf $m
tar -cf $O/r.tar -C $O r && rm -rf $O/r
