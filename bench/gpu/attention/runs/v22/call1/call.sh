set -x
. .gpu-bundle/env.sh
mkdir -p $OUT/r
B=.gpu-bundle
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $OUT/r/smi.txt
timeout 150 $B/attention_cuda_test --gtest_filter='*Decode*:*Merge*' > $OUT/r/attn_test.log 2>&1; echo rc=$? >> $OUT/r/attn_test.log
tail -3 $OUT/r/attn_test.log
timeout 120 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-batch 1 --decode-ctx 32768,131072,524288,1048576 --decode-kernels v7,v6 --decode-merge-ctas 0,4,8,16,32 --read-floor-max-gb 0 --json $OUT/r/sweep.json > $OUT/r/sweep.log 2>&1
timeout 60 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-batch 1 --decode-ctx 32768 --decode-kernels v7,v6 --decode-splits 96,128 --decode-fuse-min-keys 128 --decode-merge-ctas 0,8,16 --read-floor-max-gb 0 --json $OUT/r/sw32.json > $OUT/r/sw32.log 2>&1
timeout 90 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-batch 1 --decode-ctx 32768,131072 --decode-kernels v7,v6 --decode-merge-ctas 0,16 --decode-timeline --json $OUT/r/tl.json > $OUT/r/tl.log 2>&1
timeout 120 $B/sqa-attn-bench --prefill "" --layouts GQA,SQA,xSQA,MHA,MQA --decode-batch 1,8,32 --decode-ctx 32768,131072 --decode-kernels v7,v6 --read-floor-max-gb 0 --json $OUT/r/oth.json > $OUT/r/oth.log 2>&1
cat $OUT/r/sweep.log $OUT/r/sw32.log
tar -cf $OUT/r.tar -C $OUT r
