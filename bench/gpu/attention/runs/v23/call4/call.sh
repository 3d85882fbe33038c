set -x
. .gpu-bundle/env.sh
mkdir -p $OUT/r
B=.gpu-bundle
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $OUT/r/smi.txt
A="--prefill '' --layouts MQA --decode-batch 1,8 --decode-ctx 32768,131072,524288"
timeout 60 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-batch 1,8 --decode-ctx 32768,131072,524288 --decode-kernels v6,v8 --read-floor-ctas 8,4,2 --json $OUT/r/h0.json > $OUT/r/h0.log 2>&1
for h in 1 2 3 4; do
SQA_DECODE_LOAD_HINT=$h timeout 60 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-batch 1,8 --decode-ctx 32768,131072,524288 --decode-kernels v8 --read-floor-max-gb 0 --json $OUT/r/h$h.json > $OUT/r/h$h.log 2>&1
done
SQA_READ_FLOOR_PLAIN=1 timeout 60 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-batch 1,8 --decode-ctx 32768,131072,524288 --decode-kernels v8 --read-floor-ctas 8,4,2 --json $OUT/r/plain.json > $OUT/r/plain.log 2>&1
for f in h0 h1 h2 h3 h4 plain; do echo "== $f"; grep -E "^MQA" $OUT/r/$f.log; done
tar -cf $OUT/r.tar -C $OUT r
rm -rf $OUT/r
