#!/bin/bash
# Session 8, call 4: fused layer ops (q/k/v in one skinny launch, gate/up/SwiGLU in one, residual add + RMSNorm,
# RoPE on q and k in one kernel). GPU tests, e2e MHA decode with the skinny kernel on and off, per-kernel step profile.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $O/r/gpu_tests.log 2>&1
el "run_gpu_tests rc=$?"; grep -E "^== |FAILED|PASSED" $O/r/gpu_tests.log | head -20; grep -B3 -A12 "Failure" $O/r/gpu_tests.log | head -60
m=/tmp/m_MHA
$B/sqa-mkmodel --out $m --preset 1b --layout MHA --dtype bf16 --seed 7 > /dev/null; el "model rc=$?"
for sk in on off; do
$B/sqa-e2e-bench --model $m --device cuda --prefill 8192 --decode-batch 1,8,32 --cuda-graphs both --skinny-gemm $sk --json $O/r/e2e_$sk.json > /dev/null 2> $O/r/e2e_$sk.log
el "e2e skinny $sk rc=$?"; grep -E "decode|prefill" $O/r/e2e_$sk.log
done
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for s in 2 6; do
  timeout 150 $NCU --graph-profiling node --metrics gpu__time_duration.sum --csv --print-units base --cache-control none --clock-control none \
    --log-file $O/r/ncu_node_s$s.csv $B/sqa-e2e-bench --model $m --device cuda --prefill none --decode-batch 1 --cuda-graphs on --decode-steps $s > /dev/null 2> $O/r/ncu_node_s$s.log
  el "ncu node steps $s rc=$?"
done
python3 bench/gpu/e2e/step_kernels_ncu.py $O/r/ncu_node_s2.csv $O/r/ncu_node_s6.csv 4 > $O/r/step_kernels_b1.md; head -20 $O/r/step_kernels_b1.md
rm -f $O/r/ncu_*.csv
rm -rf $m
tar -cf $O/r.tar -C $O r && rm -rf $O/r
