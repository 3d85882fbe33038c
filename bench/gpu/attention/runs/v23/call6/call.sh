set -x
. .gpu-bundle/env.sh
mkdir -p $OUT/r
B=.gpu-bundle
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $OUT/r/smi.txt
timeout 300 $B/attention_cuda_test > $OUT/r/attn_test.log 2>&1; echo rc=$? >> $OUT/r/attn_test.log
tail -3 $OUT/r/attn_test.log
grep -m5 -B3 -A12 "Failure" $OUT/r/attn_test.log | head -60
timeout 200 $B/sqa-attn-bench --prefill "" --decode-kernels v8,v6 --decode-timeline --json $OUT/r/dec.json > $OUT/r/dec.log 2>&1
grep -E "^[A-Za-z]+ +[0-9]+ +[0-9]+ +v[68]" $OUT/r/dec.log | awk '{print $1,$2,$3,$4,$6}' | paste - - 
tar -cf $OUT/r.tar -C $OUT r
rm -rf $OUT/r
