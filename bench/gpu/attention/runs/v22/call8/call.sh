. .gpu-bundle/env.sh
B=.gpu-bundle; R=$OUT/r; mkdir -p $R
timeout 150 $B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "== exit $?" >> $R/attn_test.log
timeout 90 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1
grep -hE "FAILED|PASSED|exit|PASS" $R/attn_test.log $R/gpu_tests.log
tar -cf $OUT/r.tar -C $OUT r
