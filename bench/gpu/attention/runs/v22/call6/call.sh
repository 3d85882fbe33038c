set -x
. .gpu-bundle/env.sh
B=.gpu-bundle; R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $R/smi.txt
timeout 150 $B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "== exit $?" >> $R/attn_test.log
grep -E "FAILED|PASSED|exit" $R/attn_test.log | head
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1
grep -E "FAILED|PASSED|exit|PASS" $R/gpu_tests.log | head
timeout 60 $B/sqa-attn-bench-v7 --prefill "" --decode-ctx 1024 --decode-batch 1 --layouts MHA,xSQA --decode-kernels v7,v6 --decode-timeline --json $R/tl_v7.json > $R/tl_v7.log 2>&1
grep -A2 timeline $R/tl_v7.log | sed 's/(us after.*//' | head -30
tar -cf $OUT/r.tar -C $OUT r
