set -x
. .gpu-bundle/env.sh
mkdir -p $OUT/r
B=.gpu-bundle
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $OUT/r/smi.txt
timeout 200 $B/attention_cuda_test --gtest_filter='*Decode*:*Merge*' > $OUT/r/attn_test.log 2>&1; echo rc=$? >> $OUT/r/attn_test.log
tail -5 $OUT/r/attn_test.log
grep -m5 -B3 -A12 "Failure" $OUT/r/attn_test.log | head -60
timeout 150 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-kernels v6,v8 --decode-timeline --json $OUT/r/dec.json > $OUT/r/dec.log 2>&1
cat $OUT/r/dec.log | grep -v "^ *$" | head -120
tar -cf $OUT/r.tar -C $OUT r
rm -rf $OUT/r
