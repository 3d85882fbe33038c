#!/bin/bash
# Session 8, call 1: the GPU tests of main's binaries (the refactored prefill helper had not run), then
# where a batch-1 decode step's time goes (1b preset, MHA): ncu per kernel inside the step graphs
# (steps 2 and 6: the difference is 4 decode steps), and per graph.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 150 $B/attention_cuda_test --gtest_color=no > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "OK \]|FAILED" $O/r/attn_test.log | head -20
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $O/r/gpu_tests.log 2>&1
el "run_gpu_tests rc=$?"; grep -E "^== |FAILED|PASSED" $O/r/gpu_tests.log | head -20
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
m=/tmp/m_MHA
$B/sqa-mkmodel --out $m --preset 1b --layout MHA --dtype bf16 --seed 7 > /dev/null; el "model rc=$?"
$B/sqa-e2e-bench --model $m --device cuda --prefill none --decode-batch 1,32 --cuda-graphs both --json $O/r/e2e.json > /dev/null 2> $O/r/e2e.log
el "e2e rc=$?"; grep decode $O/r/e2e.log
for s in 2 6; do
  timeout 150 $NCU --graph-profiling node --metrics gpu__time_duration.sum --csv --print-units base --cache-control none --clock-control none \
    --log-file $O/r/ncu_node_s$s.csv $B/sqa-e2e-bench --model $m --device cuda --prefill none --decode-batch 1 --cuda-graphs on --decode-steps $s > /dev/null 2> $O/r/ncu_node_s$s.log
  el "ncu node steps $s rc=$?"; wc -l $O/r/ncu_node_s$s.csv
done
timeout 100 $NCU --graph-profiling graph --metrics gpu__time_duration.sum --csv --print-units base --cache-control none --clock-control none \
  --log-file $O/r/ncu_graph_s6.csv $B/sqa-e2e-bench --model $m --device cuda --prefill none --decode-batch 1,32 --cuda-graphs on --decode-steps 6 > /dev/null 2> $O/r/ncu_graph_s6.log
el "ncu graph rc=$?"; grep -c . $O/r/ncu_graph_s6.csv; tail -5 $O/r/ncu_graph_s6.csv | cut -c1-300
gzip $O/r/ncu_*.csv
rm -rf $m
tar -cf $O/r.tar -C $O r && rm -rf $O/r
