#!/bin/bash
# Session 9, call 4: v5 merges in the split kernel only from 512 keys a split. Decode tests; the
# end-to-end decode step (MHA, GQA, batch 1 and 32) with v5 and v4 in one run, twice.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 100 $B/attention_cuda_test --gtest_color=no --gtest_filter='*Decode*:*Merge*' > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "OK \]|FAILED" $O/r/attn_test.log; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -40
for l in MHA GQA; do
  m=/tmp/sqa_e2e_$l
  $B/sqa-mkmodel --out $m --preset 1b --layout $l --dtype bf16 --seed 7 > /dev/null
  for rep in 1 2; do
  for k in v5 v4; do
    timeout 60 $B/sqa-e2e-bench --model $m --device cuda --prefill none --decode-batch 1,32 --cuda-graphs on --decode-kernel $k --json $O/r/e2e_${l}_${k}_$rep.json > /dev/null 2> $O/r/e2e_${l}_${k}_$rep.log
    echo "$l $k rep$rep rc=$? $(python3 -c "import json;d=json.load(open('$O/r/e2e_${l}_${k}_$rep.json'));print(' '.join('b%d %.3f ms'%(r['batch'],r['ms_per_step']) for r in d['decode']))")"
  done; done
done
el "e2e done"
tar -cf $O/r.tar -C $O r && rm -rf $O/r
